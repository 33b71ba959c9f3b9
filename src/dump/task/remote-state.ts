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
import { readItimers, readSigactions, readThreadState } from "./task-state";

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

function threadState(remote: RemoteSyscalls): ThreadRemoteState {
  const t = readThreadState(remote);
  return {
    sigaltstack: t.sas,
    clearTidAddr: t.clearTidAddr,
    pdeathSig: readIntResult(remote, "PR_GET_PDEATHSIG", PR.GET_PDEATHSIG),
    securebits: Number(remote.check("prctl", SYS.prctl, [PR.GET_SECUREBITS], ["PR_GET_SECUREBITS"])),
  };
}

/** Visit every thread of a frozen process (the leader first) and collect what it reports. */
export function readTaskState(proc: ProcFs, threads: readonly number[], signalsWithAction: bigint = ~0n): ProcessTaskState {
  const state: Partial<ProcessTaskState> = { threads: new Map() };
  for (const [i, tid] of threads.entries()) {
    const remote = RemoteSyscalls.open(tid, { proc });
    try {
      state.threads?.set(tid, threadState(remote));
      if (i === 0) {
        state.sigactions = readSigactions(remote, signalsWithAction);
        const it = readItimers(remote);
        state.timers = create(TaskTimersEntrySchema, { real: it.real, virt: it.virt, prof: it.prof });
        state.childSubreaper = readIntResult(remote, "PR_GET_CHILD_SUBREAPER", PR.GET_CHILD_SUBREAPER) !== 0;
        // Registrations belong to the address space; a kernel without the query says EINVAL.
        const registrations = remote.syscall(SYS.membarrier, [MEMBARRIER_CMD_GET_REGISTRATIONS, 0]);
        state.membarrierRegistrations = registrations > 0n ? Number(registrations) : 0;
        state.mm = {
          brk: remote.check("brk", SYS.brk, [0], ["0"]),
          dumpable: Number(remote.check("prctl", SYS.prctl, [PR.GET_DUMPABLE], ["PR_GET_DUMPABLE"])),
          thpDisabled: remote.check("prctl", SYS.prctl, [PR.GET_THP_DISABLE], ["PR_GET_THP_DISABLE"]) !== 0n,
        };
      }
    } finally {
      remote.close();
    }
  }
  const { sigactions, timers, childSubreaper, membarrierRegistrations, mm } = state;
  if (!sigactions || !timers || childSubreaper === undefined || membarrierRegistrations === undefined || !mm || !state.threads) throw new Error("readTaskState: no threads to visit");
  return { threads: state.threads, sigactions, timers, childSubreaper, membarrierRegistrations, mm };
}
