/**
 * While a dump has memory write-protected with a userfaultfd of its own
 * (ahead of the freeze, memory/protect-ahead.ts), a write to a protected
 * page waits for an answer that only ckpt can give — and ckpt makes such
 * writes happen itself: the injector writes frames and scratch memory on a
 * stack, the kernel writes the injected calls' results there and the
 * thread's rseq area on every return to user mode, and a thread in such a
 * write does not reach a ptrace stop until it is answered. Every place that
 * waits on a tracee (the freezer, the injector) therefore answers while it
 * waits, through these hooks. One dump at a time sets them.
 */

export interface ProtectedMemoryHooks {
  /** Before the injector writes [low, high) of a stack of process `tgid`: lift the protection there. */
  beforeStackWrite(tgid: number, low: bigint, high: bigint): void;
  /** Again and again while ckpt waits on a tracee: answer the writes that wait. */
  whileWaiting(): void;
}

let hooks: ProtectedMemoryHooks | null = null;

/** Set the hooks; returns what puts the previous ones back. */
export function onProtectedMemory(set: ProtectedMemoryHooks): () => void {
  const previous = hooks;
  hooks = set;
  return () => {
    hooks = previous;
  };
}

/** Whether a wait on a tracee must answer writes as it goes (else it may block in waitpid). */
export function answeringWrites(): boolean {
  return hooks !== null;
}

/** Answer the writes that wait on ckpt, if any memory is protected. */
export function answerWaitingWrites(): void {
  hooks?.whileWaiting();
}

/** Before ckpt writes [low, high) of a stack of process `tgid`. */
export function beforeStackWrite(tgid: number, low: bigint, high: bigint): void {
  hooks?.beforeStackWrite(tgid, low, high);
}
