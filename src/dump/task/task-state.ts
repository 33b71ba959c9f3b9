/**
 * Task state that only the task itself can report: its signal handlers, its
 * interval timers, each thread's alternate signal stack and clear_child_tid
 * address. Each reader makes the calls inside the task through RemoteSyscalls
 * (no code is injected) and returns the CRIU image messages.
 *
 * The rseq registration is the exception: PTRACE_GET_RSEQ_CONFIGURATION reads it
 * from outside.
 */
import { create } from "@bufbuild/protobuf";
import { ThreadSasEntrySchema, type ThreadSasEntry } from "../../image/gen/core_pb";
import { RseqEntrySchema, type RseqEntry } from "../../image/gen/rseq_pb";
import { SaEntrySchema, type SaEntry } from "../../image/gen/sa_pb";
import { ItimerEntrySchema, type ItimerEntry } from "../../image/gen/timer_pb";
import { addressOf, syscall as rawSyscall } from "../../sys/libc";
import { SIG, SYS } from "../../sys/nr";
import { InjectionError, type RemoteSyscalls } from "./inject";
import {
  ITIMER, ITIMERVAL_SIZE, KSIGACTION_SIZE, KSIGSET_SIZE, PR_GET_TID_ADDRESS, PTRACE_GET_RSEQ_CONFIGURATION,
  RSEQ_CONFIGURATION_SIZE, SIGMAX, STACK_T_OFF, STACK_T_SIZE, signalName,
} from "../../sys/inject-consts";

const hex = (v: bigint): string => `0x${v.toString(16)}`;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The signals whose actions a dump records, in CRIU's order: 1..64 without SIGKILL and SIGSTOP. */
export function dumpedSignals(): number[] {
  const out: number[] = [];
  for (let sig = 1; sig <= SIGMAX; sig++) if (sig !== SIG.KILL && sig !== SIG.STOP) out.push(sig);
  return out;
}

/**
 * Every signal action of the task (shared by its threads): one SaEntry per
 * signal 1..64 except SIGKILL and SIGSTOP, in that order, as CRIU's sigacts
 * image holds them.
 *
 * Each injected call costs two ptrace stops (~0.25 ms here, while the tree
 * is frozen), so only the signals in `asked` (bit sig-1) are read from the
 * task: /proc/PID/status names the caught (SigCgt) and ignored (SigIgn) ones,
 * and SIGCHLD's flags matter even at SIG_DFL (SA_NOCLDWAIT). Every other
 * signal is at SIG_DFL, whose flags, mask and restorer the kernel never
 * uses: it is recorded as the zero entry a fresh process has.
 */
export function readSigactions(remote: RemoteSyscalls, asked: bigint = ~0n): SaEntry[] {
  const all = dumpedSignals();
  const signals = all.filter((sig) => ((asked >> BigInt(sig - 1)) & 1n) !== 0n);
  const perBatch = Math.floor(remote.scratch.size / KSIGACTION_SIZE);
  if (perBatch === 0) throw new InjectionError(`thread ${remote.tid}: ${remote.scratch.size} scratch bytes cannot hold one struct sigaction`, remote.tid);
  const read = new Map<number, SaEntry>();
  for (let first = 0; first < signals.length; first += perBatch) {
    const batch = signals.slice(first, first + perBatch);
    // One slot per signal, read back with a single process_vm_readv.
    batch.forEach((sig, slot) => {
      const old = remote.scratchAt(slot * KSIGACTION_SIZE, KSIGACTION_SIZE);
      remote.check("rt_sigaction", SYS.rt_sigaction, [sig, 0, old, KSIGSET_SIZE], [signalName(sig), "NULL", hex(old), String(KSIGSET_SIZE)]);
    });
    const bytes = remote.readScratch(0, batch.length * KSIGACTION_SIZE);
    const v = view(bytes);
    batch.forEach((sig, slot) => {
      const o = slot * KSIGACTION_SIZE;
      read.set(
        sig,
        create(SaEntrySchema, {
          sigaction: v.getBigUint64(o, true),
          flags: v.getBigUint64(o + 8, true),
          restorer: v.getBigUint64(o + 16, true),
          mask: v.getBigUint64(o + 24, true),
          // CRIU marks every entry of a native 64-bit task this way.
          compatSigaction: false,
        }),
      );
    });
  }
  return all.map((sig) => read.get(sig) ?? create(SaEntrySchema, { sigaction: 0n, flags: 0n, restorer: 0n, mask: 0n, compatSigaction: false }));
}

/** The process's three interval timers (getitimer ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF). */
export interface Itimers {
  real: ItimerEntry;
  virt: ItimerEntry;
  prof: ItimerEntry;
}

export function readItimers(remote: RemoteSyscalls): Itimers {
  const which = [ITIMER.REAL, ITIMER.VIRTUAL, ITIMER.PROF] as const;
  const names = ["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"] as const;
  which.forEach((w, i) => {
    const at = remote.scratchAt(i * ITIMERVAL_SIZE, ITIMERVAL_SIZE);
    remote.check("getitimer", SYS.getitimer, [w, at], [names[i] ?? String(w), hex(at)]);
  });
  const v = view(remote.readScratch(0, which.length * ITIMERVAL_SIZE));
  const entry = (i: number): ItimerEntry => {
    const o = i * ITIMERVAL_SIZE;
    return create(ItimerEntrySchema, {
      isec: v.getBigUint64(o, true),
      iusec: v.getBigUint64(o + 8, true),
      vsec: v.getBigUint64(o + 16, true),
      vusec: v.getBigUint64(o + 24, true),
    });
  };
  return { real: entry(0), virt: entry(1), prof: entry(2) };
}

/** The thread's alternate signal stack (sigaltstack(NULL, &old)). */
export function readSigaltstack(remote: RemoteSyscalls): ThreadSasEntry {
  const at = remote.scratchAt(0, STACK_T_SIZE);
  remote.check("sigaltstack", SYS.sigaltstack, [0, at], ["NULL", hex(at)]);
  return decodeSigaltstack(remote.readScratch(0, STACK_T_SIZE));
}

/** A stack_t as sigaltstack() writes it. */
export function decodeSigaltstack(bytes: Uint8Array): ThreadSasEntry {
  const v = view(bytes);
  return create(ThreadSasEntrySchema, {
    ssSp: v.getBigUint64(STACK_T_OFF.sp, true),
    ssSize: v.getBigUint64(STACK_T_OFF.size, true),
    // An int in the kernel; SS_AUTODISARM is bit 31, so read it unsigned.
    ssFlags: v.getUint32(STACK_T_OFF.flags, true),
  });
}

/** The thread's clear_child_tid address (prctl(PR_GET_TID_ADDRESS, &addr)); 0 when none is set. */
export function readClearTidAddress(remote: RemoteSyscalls): bigint {
  const at = remote.scratchAt(0, 8);
  remote.check("prctl", SYS.prctl, [PR_GET_TID_ADDRESS, at], ["PR_GET_TID_ADDRESS", hex(at)]);
  return view(remote.readScratch(0, 8)).getBigUint64(0, true);
}

/** A thread's rseq registration, as PTRACE_GET_RSEQ_CONFIGURATION reports it. */
export interface RseqConfig {
  entry: RseqEntry;
  /** The flags the thread registered with (the image has no field for them). */
  flags: number;
}

/**
 * The rseq area a stopped tracee registered (all zero when it registered none).
 * rseq_cs_pointer stays unset: it only matters for a thread stopped inside an
 * rseq critical section, which the caller decides from the thread's ip.
 */
export function readRseq(tid: number): RseqConfig {
  const buf = new Uint8Array(RSEQ_CONFIGURATION_SIZE);
  const n = Number(
    rawSyscall("ptrace", SYS.ptrace, [PTRACE_GET_RSEQ_CONFIGURATION, tid, buf.length, addressOf(buf)], ["PTRACE_GET_RSEQ_CONFIGURATION", String(tid), String(buf.length)]),
  );
  if (n < 16) throw new InjectionError(`ptrace(PTRACE_GET_RSEQ_CONFIGURATION, ${tid}) filled only ${n} bytes`, tid);
  const v = view(buf);
  return {
    entry: create(RseqEntrySchema, {
      rseqAbiPointer: v.getBigUint64(0, true),
      rseqAbiSize: v.getUint32(8, true),
      signature: v.getUint32(12, true),
    }),
    flags: n >= 20 ? v.getUint32(16, true) : 0,
  };
}
