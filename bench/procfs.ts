/**
 * Seed 000 benchmark: reading /proc files of many tasks while also consulting
 * /proc/self between them, as a dump does. Compares
 *   - ckpt's ProcFs (cached /proc/PID dirfd plus a separate cached /proc/self),
 *   - a single cached dirfd shared by PID and self (open/close see-saw),
 *   - no cache (openat of the full path every time).
 * Prints directory opens, file opens and wall time for each. Run: bun bench/procfs.ts
 */
import { ProcFs, type ProcTarget } from "../src/proc/procfs";
import { close, openat, readInto } from "../src/sys/libc";
import { AT, O } from "../src/sys/nr";

const TASKS = Number(process.env.TASKS ?? 50);
const ROUNDS = Number(process.env.ROUNDS ?? 20);
const PER_TASK = ["stat", "status", "maps", "auxv", "limits", "cgroup"];

interface Reader {
  readText(target: ProcTarget, name: string): string;
  close(): void;
  dirOpens: number;
  fileOpens: number;
}

const buf = new Uint8Array(64 * 1024);
function drain(fd: number): string {
  let text = "";
  const dec = new TextDecoder();
  for (let n = readInto(fd, buf); n > 0; n = readInto(fd, buf)) text += dec.decode(buf.subarray(0, n));
  close(fd);
  return text;
}

/** The pre-seed behaviour: one cached directory, whichever of PID or self came last. */
class SingleCache implements Reader {
  dirOpens = 0;
  fileOpens = 0;
  private cached: ProcTarget | null = null;
  private fd = -1;
  readText(target: ProcTarget, name: string): string {
    if (this.cached !== target) {
      if (this.fd >= 0) close(this.fd);
      this.fd = openat(AT.FDCWD, `/proc/${target}`, O.RDONLY | O.DIRECTORY | O.CLOEXEC);
      this.cached = target;
      this.dirOpens++;
    }
    this.fileOpens++;
    return drain(openat(this.fd, name, O.RDONLY | O.CLOEXEC));
  }
  close(): void {
    if (this.fd >= 0) close(this.fd);
  }
}

class NoCache implements Reader {
  dirOpens = 0;
  fileOpens = 0;
  readText(target: ProcTarget, name: string): string {
    this.fileOpens++;
    return drain(openat(AT.FDCWD, `/proc/${target}/${name}`, O.RDONLY | O.CLOEXEC));
  }
  close(): void {}
}

class Cached implements Reader {
  private readonly proc = new ProcFs();
  readText(target: ProcTarget, name: string): string {
    return this.proc.readText(target, name);
  }
  close(): void {
    this.proc.close();
  }
  get dirOpens(): number {
    return this.proc.counters.dirOpens;
  }
  get fileOpens(): number {
    return this.proc.counters.fileOpens;
  }
}

function run(reader: Reader, pids: number[]): { ms: number; bytes: number } {
  const t0 = performance.now();
  let bytes = 0;
  for (let r = 0; r < ROUNDS; r++) {
    for (const pid of pids) {
      for (const name of PER_TASK) {
        bytes += reader.readText(pid, name).length;
        // A dump looks at its own state in between (e.g. its fd table or status).
        bytes += reader.readText("self", "stat").length;
      }
    }
  }
  reader.close();
  return { ms: performance.now() - t0, bytes };
}

const workload = Array.from({ length: TASKS }, () => Bun.spawn(["sleep", "600"], { stdin: "ignore", stdout: "ignore" }));
try {
  const pids = workload.map((p) => p.pid);
  console.log(`${TASKS} tasks x ${PER_TASK.length} files x ${ROUNDS} rounds, /proc/self read between files`);
  const kinds = [
    ["ProcFs (pid + self cached)", () => new Cached()],
    ["single cached dirfd", () => new SingleCache()],
    ["no dirfd cache", () => new NoCache()],
  ] as const;
  // One untimed pass of each first, so JIT warm-up does not count against whichever runs first.
  for (const [, make] of kinds) run(make(), pids);
  for (const [name, make] of kinds) {
    const reader = make();
    const { ms } = run(reader, pids);
    console.log(`${name.padEnd(28)} dir opens ${String(reader.dirOpens).padStart(6)}  file opens ${String(reader.fileOpens).padStart(6)}  ${ms.toFixed(1).padStart(8)} ms`);
  }
} finally {
  for (const p of workload) p.kill("SIGKILL");
}
