/**
 * What a benchmark leaves behind, removed on exit and on SIGINT/SIGTERM/SIGHUP:
 * the workload processes it started and its temporary directories.
 */
import { rmSync } from "node:fs";
import type { Target } from "../test/helpers/target";

export class BenchCleanup {
  readonly targets: Target[] = [];
  readonly dirs: string[] = [];

  /** `onSignal` runs first on a signal (e.g. to interrupt a running ckpt). */
  constructor(name: string, onSignal: () => void = () => {}) {
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      process.on(sig, () => {
        onSignal();
        this.killAll();
        process.stderr.write(`\n${name}: ${sig}, workloads killed\n`);
        process.exit(130);
      });
    }
  }

  /** Kill every target registered so far. */
  killTargets(): void {
    for (const t of this.targets) t.kill();
    this.targets.length = 0;
  }

  /** Kill every target and remove every directory registered so far. */
  killAll(): void {
    this.killTargets();
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
    this.dirs.length = 0;
  }

  /** Remove one registered directory now. */
  remove(dir: string): void {
    rmSync(dir, { recursive: true, force: true });
    const i = this.dirs.indexOf(dir);
    if (i >= 0) this.dirs.splice(i, 1);
  }
}
