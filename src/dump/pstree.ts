/**
 * The process tree under a root pid, read from /proc: every process with its
 * parent, process group, session and threads. Children come from
 * task/TID/children of every thread, so children forked by any thread count.
 */
import { create } from "@bufbuild/protobuf";
import { PstreeEntrySchema, type PstreeEntry } from "../image/gen/pstree_pb";
import type { ProcFs } from "../proc/procfs";
import { readStat } from "../proc/stat";
import { readAllChildren, readThreads } from "../proc/task";

export interface TreeTask {
  pid: number;
  /** 0 for the root of the tree. */
  ppid: number;
  pgid: number;
  sid: number;
  /** Thread ids, the leader first. */
  threads: number[];
}

/** Walk the tree under `root`, parents before children. */
export function collectTree(proc: ProcFs, root: number): TreeTask[] {
  const out: TreeTask[] = [];
  const queue: { pid: number; ppid: number }[] = [{ pid: root, ppid: 0 }];
  for (let item = queue.shift(); item; item = queue.shift()) {
    const st = readStat(proc, item.pid);
    const threads = readThreads(proc, item.pid);
    out.push({ pid: item.pid, ppid: item.ppid, pgid: st.pgrp, sid: st.session, threads });
    for (const child of readAllChildren(proc, item.pid, threads)) queue.push({ pid: child, ppid: item.pid });
  }
  return out;
}

/** pstree.img entries for a collected tree. */
export function pstreeEntries(tree: readonly TreeTask[]): PstreeEntry[] {
  return tree.map((t) => create(PstreeEntrySchema, { pid: t.pid, ppid: t.ppid, pgid: t.pgid, sid: t.sid, threads: t.threads }));
}
