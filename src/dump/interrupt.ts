/**
 * SIGINT, SIGTERM and SIGHUP during a dump must not leave the tree stopped.
 * While a guard is installed those signals only set a flag; the dump checks it
 * at safe points (between tasks and phases, never inside a syscall injection)
 * and unwinds through its normal error path, which lets every task go.
 * The dump yields to the event loop at those points so the handlers can run.
 * (SIGKILL needs no guard: the kernel detaches tracees of a dead tracer.)
 */
const GUARDED = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
type GuardedSignal = (typeof GUARDED)[number];

export class InterruptedError extends Error {
  constructor(readonly signal: string) {
    super(`interrupted by ${signal}; every task was let go`);
    this.name = "InterruptedError";
  }
}

export class InterruptGuard {
  private received: GuardedSignal | undefined;
  private readonly handlers = new Map<GuardedSignal, () => void>();

  constructor() {
    for (const sig of GUARDED) {
      const h = (): void => {
        this.received ??= sig;
      };
      this.handlers.set(sig, h);
      process.on(sig, h);
    }
  }

  /** Let pending signal handlers run, then throw if one of the signals came. */
  async checkpoint(): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (this.received) throw new InterruptedError(this.received);
  }

  dispose(): void {
    for (const [sig, h] of this.handlers) process.off(sig, h);
    this.handlers.clear();
  }
}
