/**
 * CRIU's on-disk format, tested by CRIU itself: upstream CRIU 4.2 restores
 * what ckpt dumps, and ckpt restores what CRIU 4.2 dumps, for the workloads
 * the restore tests use, each verifying itself afterwards.
 *
 * Runs when CRIU_BIN names a CRIU 4.2 binary (../shared/tools/build-criu42.sh
 * builds one); skipped with a warning otherwise. CRIU's logs stay in the
 * image directory (dump.log, restore.log) and are quoted on failure.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { kcmp } from "../src/sys/calls";
import { KCMP } from "../src/sys/nr";
import { runCkpt } from "./helpers/cli";
import { runsFree } from "./helpers/images";
import { readImageFile } from "../src/image/image-file";
import type { PagemapEntry } from "../src/image/gen/pagemap_pb";
import { FD, fdTarget } from "./helpers/fd-workloads";
import { dirtyTarget } from "./helpers/iterative-workloads";
import { credTarget, lockTarget, restoreTarget, sharedTreeTarget } from "./helpers/restore-workloads";
import { multiprocessingScript, netlinkTarget, preforkTarget, sparseGhostTarget, udpTarget, zombieTreeTarget } from "./helpers/shape-workloads";
import { alive, killablePid, startDetached, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { memTarget, selfCheck } from "./helpers/workloads";

const CRIU = process.env.CRIU_BIN ?? "";
const haveCriu = CRIU !== "" && existsSync(CRIU);
if (!haveCriu) console.warn("criu-compat: CRIU_BIN is not set to a CRIU 4.2 binary; the CRIU compatibility tests are skipped");

const cleanup: Target[] = [];
afterEach(() => {
  for (const t of cleanup.splice(0)) t.kill();
});

/** The errors of a CRIU log, for a failure message. */
function criuErrors(log: string): string {
  if (!existsSync(log)) return `(no ${log})`;
  return readFileSync(log, "utf8").split("\n").filter((l) => /Error|BUG/.test(l) && !/RLIMIT_NOFILE/.test(l)).slice(0, 8).join("\n");
}

function criu(verb: "dump" | "restore", dir: string, args: string[]): void {
  const log = `${verb}.log`;
  const r = Bun.spawnSync([CRIU, verb, "-D", dir, "-v4", "-o", log, ...args], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`criu ${verb} exited ${r.exitCode}:\n${criuErrors(join(dir, log))}\n${r.stderr.toString()}`);
}

/** Wait until the dumped tree is gone for good: a zombie still holds its pid, and CRIU and ckpt both restore with the same pids. */
async function gone(pids: readonly number[]): Promise<void> {
  await waitFor("the dumped tree to be gone", () => pids.every((p) => !existsSync(`/proc/${p}`)), 10000);
}

async function ckptDump(pids: readonly number[], dir: string, extra: string[] = []): Promise<void> {
  const r = runCkpt(["dump", "-t", String(pids[0]), "-D", dir, ...extra]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  await gone(pids);
}

async function criuDump(pids: readonly number[], dir: string, extra: string[] = []): Promise<void> {
  mkdirSync(dir, { mode: 0o700 });
  criu("dump", dir, ["-t", String(pids[0]), ...extra]);
  await gone(pids);
}

function ckptRestore(dir: string, extra: string[] = []): void {
  const r = runCkpt(["restore", "-D", dir, "-d", ...extra]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
}

function criuRestore(dir: string, extra: string[] = []): void {
  criu("restore", dir, ["-d", ...extra]);
}

/** A workload started, with the pids of its processes (root first) and its output file. */
interface Started {
  pids: number[];
  out: string;
  words: string[];
  /** Zombies of the tree: not running, but their pids must be free before a restore too. */
  zombies?: number[];
}

interface Workload {
  name: string;
  start(): Promise<Started>;
  /** What must hold after a restore, beyond the workload's own self-check. */
  after?(s: Started): Promise<void> | void;
  /** Why CRIU cannot dump it on this machine, or null. */
  criuCannotDump?: () => string | null;
  /** Options both tools take for its dump and restore. */
  opts?: string[];
}

/** Whether this process has capability `bit` in its effective set. */
function haveCapability(bit: number): boolean {
  const hex = /^CapEff:\s*([0-9a-f]+)/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? "0";
  return ((BigInt(`0x${hex}`) >> BigInt(bit)) & 1n) === 1n;
}
const CAP_SYS_RESOURCE = 24;

/**
 * Start a workload in a session of its own (CRIU dumps only session leaders
 * without --shell-job). `pidsOf`: its processes from its "ready" words; its
 * root by default.
 */
async function started(argv: string[], pidsOf?: (words: string[]) => number[]): Promise<Started> {
  const { target, words, out } = await startReady(["setsid", ...argv]);
  const pids = pidsOf ? pidsOf(words) : [target.pid];
  cleanup.push(target, ...pids.map(killablePid));
  return { pids, out, words };
}

function stateOf(pid: number): string {
  return (readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "")[0] ?? "";
}

const WORKLOADS: Workload[] = [
  {
    name: "64 MiB and two threads (memtarget)",
    start: () => started([memTarget(), "64", "2"]),
  },
  {
    name: "threads in read() and nanosleep, fds, a pipe with data, signals, sigaltstack, itimer (restoretarget)",
    start: () => started([restoreTarget(), tempDir("compat-work")], (w) => [Number(w[0])]),
  },
  {
    name: "a 3-process session with a shared file (sharedtreetarget)",
    start: () => started([sharedTreeTarget(), tempDir("compat-tree")], (w) => w.map(Number)),
  },
  {
    name: "every fd kind ckpt saves, across a fork (fdtarget)",
    start: () => started([fdTarget(), tempDir("compat-fds")], (w) => w.slice(0, 2).map(Number)),
    after: (s) => {
      for (const fd of [FD.FILE_A, FD.PIPE_R, FD.STREAM_A, FD.MEMFD, FD.EPOLL]) expect(kcmp(s.pids[0]!, s.pids[1]!, KCMP.FILE, fd, fd)).toBe("equal");
    },
  },
  {
    name: "a pre-forking server: 2 workers sharing split, /dev/zero, memfd and mremap'd memory (preforktarget)",
    start: () => started([preforkTarget()], (w) => w.slice(1).map(Number)),
  },
  {
    name: "a Python multiprocessing pool: Value, Array, mmap(-1), Lock in unlinked /dev/shm files",
    start: () => started(["python3", multiprocessingScript()], (w) => w.map(Number)),
  },
  {
    name: "zombies (exit 7, SIGUSR2), a setsid daemon and a job group (zombietreetarget)",
    start: async () => {
      const s = await started([zombieTreeTarget()], (w) => [w[0], w[3], w[4]].map(Number));
      const zombies = [s.words[1], s.words[2]].map(Number);
      await waitFor("the zombies", () => zombies.every((z) => stateOf(z) === "Z"));
      return { ...s, zombies };
    },
    after: (s) => {
      for (const z of s.zombies ?? []) expect(stateOf(z)).toBe("Z");
    },
  },
  {
    name: "an unlinked sparse file, open and mapped (sparseghosttarget)",
    start: () => started([sparseGhostTarget(), tempDir("compat-ghost")]),
  },
  {
    name: "UDP sockets: bound, connected, free-bound IPv6, unbound; an unbound TCP socket (udptarget)",
    start: () => started([udpTarget()], (w) => [Number(w[0])]),
  },
  {
    // Without a group past 32: CRIU 4.2 refuses those both ways ("Groups above 32 are not supported yet").
    name: "netlink sockets: route, uevent, unbound (netlinktarget low)",
    start: () => started([netlinkTarget(), "low"], (w) => [Number(w[0])]),
  },
  {
    name: "POSIX, flock and OFD file locks, with --file-locks (locktarget)",
    start: () => started([lockTarget(), tempDir("compat-locks")]),
    opts: ["--file-locks"],
  },
  {
    name: "a process that dropped root (credtarget)",
    start: () => started([credTarget()], (w) => [Number(w[0])]),
    // CRIU reads rlimits with prlimit(), which needs CAP_SYS_RESOURCE for a
    // process of another uid; ckpt reads /proc/PID/limits.
    criuCannotDump: () => (haveCapability(CAP_SYS_RESOURCE) ? null : "prlimit() of a process of another uid needs CAP_SYS_RESOURCE, which this machine withholds"),
  },
];

/** The two directions: who dumps, who restores, and which workloads the dumper cannot take here. */
const DIRECTIONS = [
  { name: "ckpt dump, CRIU 4.2 restore", dump: ckptDump, restore: criuRestore, cannot: (_: Workload): string | null => null },
  { name: "CRIU 4.2 dump, ckpt restore", dump: criuDump, restore: ckptRestore, cannot: (w: Workload): string | null => w.criuCannotDump?.() ?? null },
];

for (const d of DIRECTIONS) {
  describe.skipIf(!haveCriu)(d.name, () => {
    for (const w of WORKLOADS) {
      const cannot = haveCriu ? d.cannot(w) : null;
      if (cannot) console.warn(`criu-compat: ${d.name}: ${w.name} skipped: ${cannot}`);
      test.skipIf(cannot !== null)(w.name, async () => {
        const s = await w.start();
        const dir = join(tempDir("compat"), "img");
        await d.dump(s.pids, dir, w.opts);
        await gone(s.zombies ?? []);
        d.restore(dir, w.opts);
        await w.after?.(s);
        for (const p of s.pids) expect(alive(p)).toBe(true);
        expect(await selfCheck(s.pids[0]!, s.out)).toBe("ok");
      });
    }
  });
}

// CRIU 4.2 cannot pre-dump here (it needs soft-dirty, which this kernel
// lacks), so chains go one way: ckpt's rounds, restored by CRIU through the
// parent links.
describe.skipIf(!haveCriu)("a ckpt pre-dump chain, CRIU 4.2 restore", () => {
  test("two pre-dumps and a dump with --prev-images-dir: CRIU follows the chain and the memory of every round is right", async () => {
    const s = await started([dirtyTarget(), "16", "3"]);
    const pid = s.pids[0]!;
    const base = tempDir("compat-chain");
    const round = async (n: number): Promise<void> => {
      process.kill(pid, "SIGUSR2");
      await waitFor(`dirty round ${n}`, () => readFileSync(s.out, "utf8").includes(`round ${n}\n`), 10000);
    };
    for (const [i, args] of [["pre-dump"], ["pre-dump", "--prev-images-dir", "../1"]].entries()) {
      const r = runCkpt([args[0]!, "-t", String(pid), "-D", join(base, String(i + 1)), ...args.slice(1)]);
      expect(r.stderr).toBe("");
      await round(i + 1);
    }
    await ckptDump([pid], join(base, "3"), ["--prev-images-dir", "../2"]);
    criuRestore(join(base, "3"));
    expect(await selfCheck(pid, s.out)).toBe("ok round 2");
  });
});

// CRIU flags the anonymous memory it saves PE_LAZY as well as PE_PRESENT:
// ckpt's lazy restore takes its dumps as they are.
describe.skipIf(!haveCriu)("a CRIU 4.2 dump, restored lazily by ckpt", () => {
  test("ckpt lazy-pages reads CRIU's lazy pages from the images while the tree runs, and it verifies itself", async () => {
    const s = await started([memTarget(), "64", "2"]);
    const dir = join(tempDir("compat-lazy"), "img");
    await criuDump(s.pids, dir);
    const pm = readImageFile(join(dir, `pagemap-${s.pids[0]}.img`)).entries.slice(1).map((e) => e.message as PagemapEntry);
    const PE_LAZY = 2;
    const lazyPages = pm.filter((e) => (e.flags & PE_LAZY) !== 0).reduce((n, e) => n + Number(e.nrPages), 0);
    expect(lazyPages).toBeGreaterThanOrEqual(64 * 256);
    const daemon = Bun.spawn([process.execPath, join(import.meta.dir, "../src/cli/main.ts"), "lazy-pages", "-D", dir, "--json"], { stdout: "pipe", stderr: "pipe" });
    await waitFor("the lazy-pages socket", () => existsSync(join(dir, "lazy-pages.socket")), 20000);
    ckptRestore(dir, ["--lazy-pages"]);
    const [out, code] = [await new Response(daemon.stdout).text(), await daemon.exited];
    expect(code).toBe(0);
    const f = JSON.parse(out) as { pagesLazy: number; pagesFromImages: number; pagesOnFault: number; pagesInBackground: number };
    expect(f.pagesLazy).toBe(lazyPages);
    expect(f.pagesFromImages).toBe(lazyPages);
    expect(f.pagesOnFault + f.pagesInBackground).toBe(lazyPages);
    expect(await selfCheck(s.pids[0]!, s.out)).toBe("ok");
  });
});

/** The pid of `parent`'s only child, once it has one. */
async function childOf(parent: number): Promise<number> {
  const kids = (): number[] => readFileSync(`/proc/${parent}/task/${parent}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  await waitFor(`process ${parent} to start its child`, () => kids().length === 1);
  return kids()[0]!;
}

/** Every descendant of `pid` now (children of every thread, recursively). */
function descendantsOf(pid: number): number[] {
  const out: number[] = [];
  for (const task of (() => { try { return readdirSync(`/proc/${pid}/task`); } catch { return []; } })()) {
    let kids: number[] = [];
    try {
      kids = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      // gone
    }
    for (const k of kids) out.push(k, ...descendantsOf(k));
  }
  return out;
}

/** Run `command` on a new pseudo-terminal (util-linux script), detached; returns script's pid. */
async function onTerminal(command: string): Promise<number> {
  const t = await startDetached(["script", "-qfc", command, "/dev/null"]);
  cleanup.push(t);
  return t.pid;
}

// A shell job: the process's stdio is a terminal that neither tool owns.
// Each restore runs on a new terminal of its own (script), with --shell-job.
describe.skipIf(!haveCriu || !Bun.which("script"))("a process on a terminal (--shell-job)", () => {
  const onPts = (pid: number): boolean => [0, 1, 2].every((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith("/dev/pts/"));
  const cases = [
    { name: "ckpt dump, CRIU 4.2 restore", dump: (pid: number, dir: string) => ckptDump([pid], dir, ["--shell-job"]), restore: (dir: string) => `${CRIU} restore -D ${dir} --shell-job -v4 -o restore.log` },
    {
      name: "CRIU 4.2 dump, ckpt restore",
      dump: (pid: number, dir: string) => criuDump([pid], dir, ["--shell-job"]),
      restore: (dir: string) => `${process.execPath} ${join(import.meta.dir, "../src/cli/main.ts")} restore -D ${dir} --shell-job`,
    },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const pid = await childOf(await onTerminal("sleep 1000"));
      cleanup.push(killablePid(pid));
      await waitFor("sleep to run on its terminal", () => alive(pid) && onPts(pid));
      const dir = join(tempDir("compat-tty"), "img");
      await c.dump(pid, dir);
      const terminal = await onTerminal(c.restore(dir));
      // Done once the task is itself again (the restorer's own name gone) and let go.
      const restored = (): boolean => alive(pid) && readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "sleep" && runsFree(pid);
      await waitFor("the restored sleep", () => { try { return restored(); } catch { return false; } }, 20000);
      // The restorer waits for the restored task (no -d): it goes too, or it outlives the test (CRIU's, reparented to init, hung on).
      cleanup.unshift(...descendantsOf(terminal).filter((p) => p !== pid).map(killablePid));
      expect(onPts(pid)).toBe(true);
    });
  }
});
