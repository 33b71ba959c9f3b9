/**
 * Object ids of ids-PID.img: which processes share an address space, an fd
 * table, fs info or signal handlers (kcmp), and which namespaces they are in.
 * Processes of one tree are few, so each new process is compared with one
 * representative of every id seen so far.
 */
import { create } from "@bufbuild/protobuf";
import { TaskKobjIdsEntrySchema, type TaskKobjIdsEntry } from "../image/gen/core_pb";
import type { ProcFs, ProcTarget } from "../proc/procfs";
import { kcmp } from "../sys/calls";
import { KCMP } from "../sys/nr";

/** Namespace kinds in the order CRIU numbers them. */
const NAMESPACES = [
  ["pid", "pidNsId"], ["net", "netNsId"], ["ipc", "ipcNsId"], ["uts", "utsNsId"],
  ["time", "timeNsId"], ["mnt", "mntNsId"], ["user", "userNsId"], ["cgroup", "cgroupNsId"],
] as const;

type KobjKind = "vmId" | "filesId" | "fsId" | "sighandId";
const KOBJ: readonly [KobjKind, number][] = [["vmId", KCMP.VM], ["filesId", KCMP.FILES], ["fsId", KCMP.FS], ["sighandId", KCMP.SIGHAND]];

export class KobjIds {
  /** Per kind: [representative pid, id]. */
  private readonly seen = new Map<KobjKind, { pid: number; id: number }[]>();
  private readonly nsIds = new Map<string, number>();
  private nextId = 1;
  private nextNsId = 1;
  kcmpCalls = 0;

  /**
   * inventory.img's root_ids: the ids of the program that dumps, taken
   * before any task's and compared like any task's. CRIU's restore reads them
   * as the root task's parent: a root task with the same files_id would
   * share its fd table with the dumper ("Image corruption on kIDs data").
   */
  readonly dumper: TaskKobjIdsEntry;

  constructor(private readonly proc: ProcFs) {
    this.dumper = this.of("self");
  }

  private kobjId(kind: KobjKind, type: number, target: ProcTarget): number {
    const pid = target === "self" ? process.pid : target;
    const list = this.seen.get(kind) ?? [];
    this.seen.set(kind, list);
    for (const rep of list) {
      this.kcmpCalls++;
      if (kcmp(rep.pid, pid, type) === "equal") return rep.id;
    }
    const id = this.nextId++;
    list.push({ pid, id });
    return id;
  }

  /** The ids of one process. */
  of(target: ProcTarget): TaskKobjIdsEntry {
    const e: Record<string, number> = {};
    for (const [kind, type] of KOBJ) e[kind] = this.kobjId(kind, type, target);
    for (const [ns, field] of NAMESPACES) {
      const link = this.proc.readlink(target, `ns/${ns}`);
      let id = this.nsIds.get(link);
      if (id === undefined) {
        id = this.nextNsId++;
        this.nsIds.set(link, id);
      }
      e[field] = id;
    }
    return create(TaskKobjIdsEntrySchema, e);
  }
}
