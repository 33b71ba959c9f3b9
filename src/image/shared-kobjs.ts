/**
 * What ids-PID.img says two processes of a tree share that ckpt cannot
 * rebuild: an fd table (CLONE_FILES), fs info (CLONE_FS), an address space
 * (CLONE_VM without CLONE_THREAD: vfork, or clone by hand) or signal
 * handlers (CLONE_SIGHAND), and namespaces other than the root's. ckpt
 * restores each process with its own table, fs info and memory, all in the
 * namespaces ckpt runs in, so such a tree would come back changed without a
 * word: the dump and the restore both refuse it with this description.
 */
import type { TaskKobjIdsEntry } from "./gen/core_pb";

const SHARED: readonly [keyof TaskKobjIdsEntry & `${string}Id`, string, string][] = [
  ["filesId", "files_id", "an fd table (CLONE_FILES)"],
  ["fsId", "fs_id", "cwd, root and umask (CLONE_FS)"],
  ["vmId", "vm_id", "an address space (CLONE_VM, as vfork does)"],
  ["sighandId", "sighand_id", "signal handlers (CLONE_SIGHAND)"],
];

const NAMESPACES: readonly [keyof TaskKobjIdsEntry & `${string}NsId`, string][] = [
  ["pidNsId", "pid"], ["netNsId", "net"], ["ipcNsId", "ipc"], ["utsNsId", "uts"],
  ["mntNsId", "mnt"], ["userNsId", "user"], ["cgroupNsId", "cgroup"], ["timeNsId", "time"],
];

export interface ProcessIds {
  pid: number;
  ids: TaskKobjIdsEntry;
}

/** What a process shares that ckpt cannot rebuild: `why` names the ids-PID.img field, its value and the other process. */
export interface Sharing {
  pid: number;
  why: string;
}

/** Why the tree cannot be rebuilt as it was; undefined when it can. */
export function unrestorableSharing(processes: readonly ProcessIds[]): Sharing | undefined {
  for (const [field, protoName, what] of SHARED) {
    const owner = new Map<number, number>();
    for (const { pid, ids } of processes) {
      const id = ids[field];
      const other = owner.get(id);
      if (other !== undefined) return { pid, why: `${protoName} ${id} is also process ${other}'s: the two share ${what}, which ckpt cannot restore yet` };
      owner.set(id, pid);
    }
  }
  const root = processes[0];
  if (!root) return undefined;
  for (const { pid, ids } of processes.slice(1)) {
    for (const [field, ns] of NAMESPACES) {
      const a = root.ids[field];
      const b = ids[field];
      // 0: not recorded (an image from before the field).
      if (a !== 0 && b !== 0 && a !== b) {
        return { pid, why: `${ns}_ns_id ${b} differs from the root process ${root.pid}'s (${a}): a tree that spans ${ns} namespaces, which ckpt cannot restore yet` };
      }
    }
  }
  return undefined;
}
