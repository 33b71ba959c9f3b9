/**
 * The process tree of pstree.img, recreated with its original pids: each
 * process is cloned (clone3 with set_tid) by an injected call in its parent,
 * the root by the seed with CLONE_PARENT so that it becomes a child of the
 * seed's parent (ckpt, as subreaper, or init) and not of the seed. Threads
 * are cloned the same way inside their process.
 *
 * Sessions and groups: a process whose sid is its own pid calls setsid()
 * before it clones its children, so they inherit the session; a process
 * group leader calls setpgid(0, 0) likewise; the others join their group
 * afterwards. A session or group the tree cannot make (led by a process
 * outside it) is allowed only when it is the root's, which the root then
 * takes from the seed (a new session, or ckpt's own with --shell-job).
 *
 * With a new pid namespace (--restore-in-new-pidns) the seed first clones
 * the namespace's init (CLONE_NEWPID|CLONE_PARENT, so ckpt's child), and
 * the root is cloned from it: every pid of the image is then free whatever
 * runs on the host, and ckpt knows each task by its host pid too.
 *
 * Zombies are created like any process (their pid, group and session must
 * exist) and then die with their recorded wait status, so that their parent
 * reaps them after the restore as it would have before the dump.
 */
import type { PstreeEntry } from "../image/gen/pstree_pb";
import { SIG, SYS } from "../sys/nr";
import { Puppet, PuppetCallError, waitStop } from "./puppet";
import { Errno } from "../sys/errno";

const CLONE_ARGS_SIZE = 88;
const CLONE = {
  VM: 0x100, FS: 0x200, FILES: 0x400, SIGHAND: 0x800, PARENT: 0x8000, THREAD: 0x10000, SYSVSEM: 0x40000, NEWPID: 0x20000000,
} as const;
const THREAD_FLAGS = CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD | CLONE.SYSVSEM;

/** A pid or tid of the image is in use on this host. */
export class PidTakenError extends Error {
  override readonly name = "PidTakenError";
  /** `holder`: who has the pid now (describeTask), when known. */
  constructor(readonly pid: number, what: string, holder?: string) {
    super(`pid ${pid} (${what}) is taken on this host${holder ? ` by ${holder}` : ": a task with that pid is running"}`);
  }
}

/**
 * clone3 from `parent` with set_tid = [tid] (the pid in the parent's own
 * namespace, the innermost level) or, with tid 0, any pid; returns the new
 * task, stopped and traced, known by its pid in ckpt's namespace (from the
 * clone event) and by `tid` in its own.
 */
function cloneWithTid(parent: Puppet, scratch: bigint, tid: number, flags: number, what: string): Puppet {
  const buf = new Uint8Array(CLONE_ARGS_SIZE + 8);
  const v = new DataView(buf.buffer);
  v.setBigUint64(0, BigInt(flags), true);
  // CLONE_PARENT and CLONE_THREAD want exit_signal 0 (it comes from the parent, or there is none).
  v.setBigUint64(32, flags & (CLONE.PARENT | CLONE.THREAD) ? 0n : BigInt(SIG.CHLD), true);
  if (tid !== 0) {
    v.setBigUint64(64, scratch + BigInt(CLONE_ARGS_SIZE), true);
    v.setBigUint64(72, 1n, true);
    v.setInt32(CLONE_ARGS_SIZE, tid, true);
  }
  parent.write(scratch, buf);
  parent.lastCloned = 0;
  let got: number;
  try {
    got = Number(parent.call(SYS.clone3, [scratch, CLONE_ARGS_SIZE], [`{flags 0x${flags.toString(16)}, set_tid [${tid || ""}]}`, String(CLONE_ARGS_SIZE)]));
  } catch (e) {
    if (e instanceof PuppetCallError && e.errno === Errno.EEXIST) throw new PidTakenError(tid, what);
    throw e;
  }
  if (tid !== 0 && got !== tid) throw new Error(`clone3 for ${what} gave pid ${got}, not ${tid}`);
  const host = parent.lastCloned;
  if (host <= 0) throw new Error(`clone3 for ${what} gave pid ${got}, but no clone event named it`);
  // Its first stop: the auto-attach stop of a clone event.
  waitStop(host, "before its first stop");
  const child = new Puppet(host, parent.syscallAt, tid || (flags & CLONE.NEWPID ? 1 : host));
  // The syscall page, runner and all, came along with the rest of the memory (or is shared, for a thread).
  child.batchAt = parent.batchAt;
  return child;
}

export interface RestoredTree {
  /** Thread-group leaders by the image's pid, in pstree order (parents first). */
  processes: Map<number, Puppet>;
  /** Every task by the image's tid, leaders included. */
  threads: Map<number, Puppet>;
  /** With a new pid namespace: its init (pid 1 there), the root's parent. */
  init?: Puppet;
}

/**
 * Clone every process and thread of the tree from `seed` (whose syscall page
 * is at `seed.syscallAt`, with scratch at `scratch`), so that every pid and
 * tid of the image is held from the start. `created` gets each one as soon as
 * it exists, so a failure can kill exactly what was made.
 */
/** A zombie of the image: the wait status its parent is due to get, and its name. */
export interface ZombieState {
  status: number;
  comm: string;
}

export function createProcesses(
  seed: Puppet, scratch: bigint, pstree: readonly PstreeEntry[], created: number[], zombies: ReadonlyMap<number, ZombieState> = new Map(), newPidNs = false,
): RestoredTree {
  const root = pstree[0];
  if (!root) throw new Error("pstree.img lists no process");
  const inTree = new Set(pstree.map((e) => e.pid));
  const byPid = new Map(pstree.map((e) => [e.pid, e]));
  const processes = new Map<number, Puppet>();
  const threads = new Map<number, Puppet>();

  const make = (e: PstreeEntry, parent: Puppet, flags: number): void => {
    const p = cloneWithTid(parent, scratch, e.pid, flags, e.pid === root.pid ? "the root process" : `a process, child of ${e.ppid}`);
    created.push(p.tid);
    processes.set(e.pid, p);
    threads.set(e.pid, p);
    if (e.sid === e.pid) p.call(SYS.setsid, []);
    else if (e.pgid === e.pid) p.call(SYS.setpgid, [0, 0]);
    for (const child of pstree) if (child.ppid === e.pid && child.pid !== e.pid) make(child, p, 0);
    // Threads last: a clone of a multi-threaded process would copy only the caller.
    for (const tid of e.threads.slice(1)) {
      const th = cloneWithTid(p, scratch, tid, THREAD_FLAGS, `a thread of ${e.pid}`);
      threads.set(tid, th);
      created.push(th.tid);
    }
  };
  // In a new pid namespace the first task is its init, pid 1 there: the
  // tree's pids are then set at the namespace's own level, under it.
  let init: Puppet | undefined;
  if (newPidNs) {
    init = cloneWithTid(seed, scratch, 0, CLONE.NEWPID | CLONE.PARENT, "the pid namespace's init");
    created.push(init.tid);
    make(root, init, 0);
  } else make(root, seed, CLONE.PARENT);

  // Groups led by another process of the tree: joined once every leader has its group.
  for (const e of pstree) {
    if (e.pgid === e.pid || e.sid === e.pid || !inTree.has(e.pgid)) continue;
    const p = processes.get(e.pid);
    if (p) p.call(SYS.setpgid, [0, e.pgid]);
  }
  // Zombies last, once in their groups: each dies with its status, and the
  // SIGCHLD that leaves pending in its (blocked) parent is taken back — the
  // parent was told of that death before the dump, or has it queued in its
  // core image, which restore queues again later.
  for (const [pid, z] of zombies) {
    const p = processes.get(pid);
    const parent = processes.get(byPid.get(pid)?.ppid ?? 0);
    if (!p || !parent) throw new Error(`zombie ${pid} was not created under its parent`);
    if (z.comm) {
      const name = new Uint8Array(16);
      name.set(new TextEncoder().encode(z.comm).subarray(0, 15));
      p.write(scratch, name);
      p.call(SYS.prctl, [15 /* PR_SET_NAME */, scratch], ["PR_SET_NAME", JSON.stringify(z.comm)]);
    }
    p.dieWith(z.status, scratch);
    processes.delete(pid);
    threads.delete(pid);
    takeBackSigchld(parent, scratch);
  }
  return { processes, threads, ...(init ? { init } : {}) };
}

/** Dequeue a pending SIGCHLD of `p` (all its signals are blocked), if there is one. */
function takeBackSigchld(p: Puppet, scratch: bigint): void {
  const buf = new BigUint64Array([1n << BigInt(SIG.CHLD - 1), 0n, 0n]);
  p.write(scratch, new Uint8Array(buf.buffer));
  const r = p.raw(SYS.rt_sigtimedwait, [scratch, 0, scratch + 8n, 8]);
  if (r !== BigInt(SIG.CHLD) && r !== -BigInt(Errno.EAGAIN)) throw new Error(`rt_sigtimedwait(SIGCHLD) in restored process ${p.tid} returned ${r}`);
}

/** Refuse sessions and groups the clone order cannot give back (before anything is made). */
export function checkSessions(pstree: readonly PstreeEntry[]): void {
  const root = pstree[0];
  if (!root) return;
  const byPid = new Map(pstree.map((e) => [e.pid, e]));
  const inTree = new Set(byPid.keys());
  for (const e of pstree) {
    if (e.pid === root.pid) continue;
    const parent = byPid.get(e.ppid);
    if (e.sid !== e.pid && e.sid !== parent?.sid) {
      throw new Error(`process ${e.pid} is in session ${e.sid}, which is neither its own nor its parent's: restore cannot recreate that`);
    }
    if (!inTree.has(e.pgid) && e.pgid !== root.pgid) {
      throw new Error(`process ${e.pid} is in process group ${e.pgid}, led by a process outside the tree`);
    }
  }
}
