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

/**
 * Who holds `tid` on this host, for an error: "process 4242 (nginx: worker
 * process)", or "thread 4243 of process 4242 (...)"; undefined once gone.
 */
export function describeTask(proc: ProcFs, tid: number): string | undefined {
  try {
    const status = proc.readText(tid, "status");
    const tgid = Number(/^Tgid:\s*(\d+)/m.exec(status)?.[1] ?? tid);
    const name = /^Name:\s*(.*)$/m.exec(status)?.[1] ?? "?";
    const cmdline = proc.readText(tgid, "cmdline").split("\0").filter(Boolean).join(" ");
    const command = cmdline === "" ? `[${name}]` : cmdline.length > 80 ? `${cmdline.slice(0, 77)}...` : cmdline;
    if (/^State:\s*Z/m.test(status)) {
      // Dumped and killed, but not yet reaped: the pid frees itself once its parent waits for it.
      const ppid = /^PPid:\s*(\d+)/m.exec(status)?.[1] ?? "?";
      return `process ${tid} (${command}), which has exited and waits for its parent (pid ${ppid}) to reap it (a zombie: the pid is free once it does)`;
    }
    return tgid === tid ? `process ${tid} (${command})` : `thread ${tid} of process ${tgid} (${command})`;
  } catch {
    return undefined;
  }
}
