/**
 * Everything a dump asks a frozen process through injected system calls, in
 * one visit per thread: the thread-group leader reports the process-wide
 * values (signal handlers, itimers, brk, dumpable, THP, child-subreaper),
 * every thread its own (alternate stack, clear_child_tid, parent-death
 * signal, securebits). Each visit restores the thread exactly (inject.ts).
 */
import { create } from "@bufbuild/protobuf";
import type { ThreadSasEntry } from "../../image/gen/core_pb";
import type { SaEntry } from "../../image/gen/sa_pb";
import { TaskTimersEntrySchema, type TaskTimersEntry } from "../../image/gen/timer_pb";
import type { ProcFs } from "../../proc/procfs";
import { SYS } from "../../sys/nr";
import { RemoteSyscalls } from "./inject";
import type { MmTaskValues } from "../memory/mm";
import { decodeSigaltstack, readItimers, readSigactions } from "./task-state";
import { PR_GET_TID_ADDRESS, STACK_T_SIZE } from "../../sys/inject-consts";

const PR = { GET_PDEATHSIG: 2, GET_DUMPABLE: 3, GET_SECUREBITS: 27, GET_CHILD_SUBREAPER: 37, GET_THP_DISABLE: 42 } as const;

export interface ThreadRemoteState {
  sigaltstack: ThreadSasEntry;
  clearTidAddr: bigint;
  pdeathSig: number;
  securebits: number;
}

export interface ProcessTaskState {
  threads: Map<number, ThreadRemoteState>;
  sigactions: SaEntry[];
  timers: TaskTimersEntry;
  childSubreaper: boolean;
  /** membarrier registrations, 0 when none or the kernel cannot tell (before 6.3). */
  membarrierRegistrations: number;
  mm: MmTaskValues;
}

const MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9;

/** An int the kernel writes to a pointer argument (prctl GET calls that do so). */
function readIntResult(remote: RemoteSyscalls, name: string, option: number): number {
  const at = remote.scratchAt(0, 4);
  remote.check("prctl", SYS.prctl, [option, at], [name, `0x${at.toString(16)}`]);
  return new DataView(remote.readScratch(0, 4).buffer).getInt32(0, true);
}

/**
 * What every thread reports of itself, asked of all the threads side by side
 * (RemoteSyscalls.syscallEach): one round of stops per question, not one per
 * question and thread. Each answer lands at its own place in the thread's
 * scratch, read once at the end.
 */
function threadStates(remotes: readonly RemoteSyscalls[]): ThreadRemoteState[] {
  const SAS_AT = 0;
  const TID_ADDRESS_AT = STACK_T_SIZE;
  const PDEATHSIG_AT = TID_ADDRESS_AT + 8;
  const SCRATCH_USED = PDEATHSIG_AT + 4;
  const ask = (name: string, nr: number, args: (r: RemoteSyscalls) => bigint[], shown: (r: RemoteSyscalls) => string[]): bigint[] => {
    const calls = remotes.map((remote) => ({ remote, nr, args: args(remote) }));
    return RemoteSyscalls.syscallEach(calls).map((result, i) => calls[i]!.remote.checkResult(name, result, calls[i]!.args, shown(calls[i]!.remote)));
  };
  const at = (r: RemoteSyscalls, offset: number, length: number): bigint => r.scratchAt(offset, length);
  const hexAt = (r: RemoteSyscalls, offset: number): string => `0x${r.scratchAt(offset).toString(16)}`;
  ask("sigaltstack", SYS.sigaltstack, (r) => [0n, at(r, SAS_AT, STACK_T_SIZE)], (r) => ["NULL", hexAt(r, SAS_AT)]);
  ask("prctl", SYS.prctl, (r) => [BigInt(PR_GET_TID_ADDRESS), at(r, TID_ADDRESS_AT, 8)], (r) => ["PR_GET_TID_ADDRESS", hexAt(r, TID_ADDRESS_AT)]);
  ask("prctl", SYS.prctl, (r) => [BigInt(PR.GET_PDEATHSIG), at(r, PDEATHSIG_AT, 4)], (r) => ["PR_GET_PDEATHSIG", hexAt(r, PDEATHSIG_AT)]);
  const securebits = ask("prctl", SYS.prctl, () => [BigInt(PR.GET_SECUREBITS)], () => ["PR_GET_SECUREBITS"]);
  return remotes.map((r, i) => {
    const bytes = r.readScratch(0, SCRATCH_USED);
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return {
      sigaltstack: decodeSigaltstack(bytes.subarray(SAS_AT, SAS_AT + STACK_T_SIZE)),
      clearTidAddr: v.getBigUint64(TID_ADDRESS_AT, true),
      pdeathSig: v.getInt32(PDEATHSIG_AT, true),
      securebits: Number(securebits[i]),
    };
  });
}

/**
 * Visit every thread of a frozen process and collect what it reports: all
 * threads are opened, asked their own values side by side, then the leader
 * the process-wide ones; every thread is put back whatever happens.
 */
export function readTaskState(proc: ProcFs, threads: readonly number[], signalsWithAction: bigint = ~0n): ProcessTaskState {
  if (threads.length === 0) throw new Error("readTaskState: no threads to visit");
  const remotes: RemoteSyscalls[] = [];
  let failure: unknown;
  try {
    for (const tid of threads) remotes.push(RemoteSyscalls.open(tid, { proc }));
    const states = threadStates(remotes);
    const leader = remotes[0]!;
    const sigactions = readSigactions(leader, signalsWithAction);
    const it = readItimers(leader);
    const childSubreaper = readIntResult(leader, "PR_GET_CHILD_SUBREAPER", PR.GET_CHILD_SUBREAPER) !== 0;
    // Registrations belong to the address space; a kernel without the query says EINVAL.
    const registrations = leader.syscall(SYS.membarrier, [MEMBARRIER_CMD_GET_REGISTRATIONS, 0]);
    const mm = {
      brk: leader.check("brk", SYS.brk, [0], ["0"]),
      dumpable: Number(leader.check("prctl", SYS.prctl, [PR.GET_DUMPABLE], ["PR_GET_DUMPABLE"])),
      thpDisabled: leader.check("prctl", SYS.prctl, [PR.GET_THP_DISABLE], ["PR_GET_THP_DISABLE"]) !== 0n,
    };
    return {
      threads: new Map(threads.map((tid, i) => [tid, states[i]!])),
      sigactions,
      timers: create(TaskTimersEntrySchema, { real: it.real, virt: it.virt, prof: it.prof }),
      childSubreaper,
      membarrierRegistrations: registrations > 0n ? Number(registrations) : 0,
      mm,
    };
  } catch (e) {
    failure = e;
    throw e;
  } finally {
    // Every opened thread is put back; a failure to put one back is the error unless an earlier one is.
    let closeFailure: unknown;
    for (const remote of remotes) {
      try {
        remote.close();
      } catch (e) {
        closeFailure ??= e;
      }
    }
    if (closeFailure !== undefined && failure === undefined) throw closeFailure;
  }
}
