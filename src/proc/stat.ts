/** /proc/PID/stat: the one-line task summary. */
import { Errno, SysError } from "../sys/errno";
import type { ProcFs, ProcTarget } from "./procfs";

export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  /** Controlling terminal (new_encode_dev form; 0 when none). */
  ttyNr: number;
  /** Foreground process group of the controlling terminal (-1 when none). */
  tpgid: number;
  flags: number;
  nice: number;
  numThreads: number;
  /** Start time after boot, in clock ticks. */
  startTime: bigint;
  /** Resident pages (proc(5) field 24). */
  rssPages: number;
  rtPriority: number;
  policy: number;
  startCode: bigint;
  endCode: bigint;
  startStack: bigint;
  startData: bigint;
  endData: bigint;
  startBrk: bigint;
  argStart: bigint;
  argEnd: bigint;
  envStart: bigint;
  envEnd: bigint;
  exitCode: number;
}

/**
 * Parse the text of /proc/PID/stat. comm may hold spaces and parentheses, so
 * it runs from the first "(" to the last ")".
 */
export function parseStat(text: string): ProcStat {
  const open = text.indexOf("(");
  const closeAt = text.lastIndexOf(")");
  if (open < 0 || closeAt < open) throw new Error(`malformed /proc stat line: ${JSON.stringify(text.slice(0, 80))}`);
  // f[0] is field 3 (state) of proc(5).
  const f = text.slice(closeAt + 2).trim().split(" ");
  const at = (field: number): string => {
    const v = f[field - 3];
    if (v === undefined) throw new Error(`/proc stat line has no field ${field}`);
    return v;
  };
  const num = (field: number): number => Number(at(field));
  const big = (field: number): bigint => BigInt(at(field));
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, closeAt),
    state: at(3),
    ppid: num(4),
    pgrp: num(5),
    session: num(6),
    ttyNr: num(7),
    tpgid: num(8),
    flags: num(9),
    nice: num(19),
    numThreads: num(20),
    startTime: big(22),
    rssPages: num(24),
    rtPriority: num(40),
    policy: num(41),
    startCode: big(26),
    endCode: big(27),
    startStack: big(28),
    startData: big(45),
    endData: big(46),
    startBrk: big(47),
    argStart: big(48),
    argEnd: big(49),
    envStart: big(50),
    envEnd: big(51),
    exitCode: num(52),
  };
}

export function readStat(proc: ProcFs, target: ProcTarget, tid?: number): ProcStat {
  return parseStat(proc.readText(target, tid === undefined ? "stat" : `task/${tid}/stat`));
}

/** PF_EXITING in stat's flags: the task is on its way out (killed, freeing its memory). */
const PF_EXITING = 0x4;

/** The task's stat, or null when it is gone from /proc. Other errors are thrown. */
function statUnlessGone(proc: ProcFs, pid: number, tid?: number): ProcStat | null {
  try {
    return readStat(proc, pid, tid);
  } catch (e) {
    if (e instanceof SysError && (e.errno === Errno.ENOENT || e.errno === Errno.ESRCH)) return null;
    throw e;
  }
}

function exited(stat: ProcStat | null): boolean {
  return stat === null || stat.state === "Z" || stat.state === "X";
}

/**
 * Whether a task is exiting or has exited (PF_EXITING, a zombie, dead, or
 * gone from /proc): its pid frees itself without anyone's help but its
 * parent's wait. Other errors are thrown.
 */
export function isExiting(proc: ProcFs, pid: number, tid?: number): boolean {
  const stat = statUnlessGone(proc, pid, tid);
  return exited(stat) || (stat!.flags & PF_EXITING) !== 0;
}

/** Whether a task has exited: a zombie, dead, or gone from /proc. Other errors are thrown. */
export function hasExited(proc: ProcFs, pid: number, tid?: number): boolean {
  return exited(statUnlessGone(proc, pid, tid));
}
