/** Threads and children of a task, from /proc/PID/task. */
import type { ProcFs, ProcTarget } from "./procfs";

/** Thread ids of a process, the leader first, then ascending. */
export function readThreads(proc: ProcFs, target: ProcTarget): number[] {
  const tids = proc.list(target, "task").map(Number).sort((a, b) => a - b);
  const leader = target === "self" ? undefined : target;
  if (leader !== undefined && tids.includes(leader)) return [leader, ...tids.filter((t) => t !== leader)];
  return tids;
}

/** Children forked by one thread (task/TID/children lists pids separated by spaces). */
export function readChildren(proc: ProcFs, target: ProcTarget, tid: number): number[] {
  return proc
    .readText(target, `task/${tid}/children`)
    .split(/\s+/)
    .filter(Boolean)
    .map(Number);
}

/** Children of every thread of a process (pass `threads` when they are known already). */
export function readAllChildren(proc: ProcFs, pid: number, threads: readonly number[] = readThreads(proc, pid)): number[] {
  const out: number[] = [];
  for (const tid of threads) out.push(...readChildren(proc, pid, tid));
  return out;
}
