/**
 * CRIU's own acceptance tests through ckpt: the static zdtm tests of a CRIU
 * build tree, run the way CRIU's test/zdtm.py runs them in its host flavor
 * ('h', the only one ckpt supports): start the test with its Makefile's
 * arguments and zdtm.py's environment, `ckpt dump`, wait for the tree to be
 * gone, `ckpt restore -d`, SIGTERM, and the test's .out must end in PASS.
 *
 * A control run first does the same without dump and restore: a test that
 * fails on this machine anyway is reported as broken, not against ckpt.
 * Skipped, with the reason: tests whose .desc rules out the host flavor, asks
 * for another arch, is noauto (unless named) or crfail (the dump is meant to
 * fail), and tests whose .checkskip says no. Features (.desc 'feature') are
 * not checked: the control run tells whether the kernel has them.
 *
 * Each run gets a scratch directory holding a copy of the test's binary, its
 * cwd, where it writes its files; afterwards everything it started is
 * SIGKILLed (its session, and whatever runs that binary or has its cwd
 * there) and the directory is removed.
 *
 * Report on stdout: counts, one line per failure, failures grouped by reason
 * (pids, addresses and long numbers stripped). Progress goes to stderr.
 *
 * With `--dumper criu`, CRIU_BIN (an upstream CRIU 4.2) dumps and ckpt
 * restores: this asks whether ckpt restores CRIU's images of every test, or
 * refuses them in one line. A test CRIU itself cannot dump here is "nodump";
 * a restore ckpt refuses (exit 1, one `ckpt:` line) is "refused"; "fail" is
 * then what matters: a restore that went through and the test failed.
 *
 * Run: bun bench/zdtm.ts [TEST...] [--list] [--json FILE] [--timeout S]
 *      [--no-control] [--keep] [--dumper ckpt|criu]
 *      ZDTM_STATIC=the built tests (default /work/criu42/test/zdtm/static),
 *      CKPT=path of a ckpt executable (default: this tree's source, run by this bun)
 */
import { accessSync, chmodSync, closeSync, constants, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { machine, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { BenchCleanup } from "./cleanup";

const ROOT = join(import.meta.dir, "..");
const CKPT = process.env.CKPT ? [process.env.CKPT] : [process.execPath, join(ROOT, "src/cli/main.ts")];
const STATIC = resolve(process.env.ZDTM_STATIC ?? "/work/criu42/test/zdtm/static");
// zdtm.py's cwd: .checkskip and .hook scripts run there (some find CRIU's python lib by a relative path).
const ZDTM_TEST_DIR = resolve(STATIC, "../..");

const { values: opt, positionals } = parseArgs({
  options: {
    list: { type: "boolean", default: false },
    json: { type: "string" },
    timeout: { type: "string", default: "30" },
    "no-control": { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
    dumper: { type: "string", default: "ckpt" },
  },
  allowPositionals: true,
});
const TIMEOUT_MS = Number(opt.timeout) * 1000;
if (opt.dumper !== "ckpt" && opt.dumper !== "criu") {
  process.stderr.write(`bench/zdtm: --dumper is ckpt or criu, not ${opt.dumper}\n`);
  process.exit(2);
}
const CRIU = process.env.CRIU_BIN;
if (opt.dumper === "criu" && !CRIU) {
  process.stderr.write("bench/zdtm: --dumper criu needs CRIU_BIN (an upstream CRIU 4.2 binary)\n");
  process.exit(2);
}

// ---- .desc files: Python dict literals -------------------------------------

type Py = string | number | boolean | null | Py[] | { [key: string]: Py };

/** Parse a Python literal (dicts, lists, tuples, strings, numbers, True/False/None, # comments). */
function parsePy(text: string): Py {
  let i = 0;
  const fail = (): never => {
    throw new Error(`not a Python literal at offset ${i}`);
  };
  const blank = (): void => {
    while (i < text.length) {
      const c = text[i]!;
      if (c === "#") while (i < text.length && text[i] !== "\n") i++;
      else if (/\s/.test(c) || c === "\\") i++;
      else break;
    }
  };
  const str = (): string => {
    const q = text[i++]!;
    let s = "";
    while (i < text.length && text[i] !== q) {
      if (text[i] === "\\") i++;
      s += text[i++];
    }
    if (text[i++] !== q) fail();
    return s;
  };
  const items = (close: string, item: () => void): void => {
    i++;
    for (blank(); text[i] !== close; blank()) {
      item();
      blank();
      if (text[i] === ",") i++;
      else if (text[i] !== close) fail();
    }
    i++;
  };
  const value = (): Py => {
    blank();
    const c = text[i];
    if (c === "{") {
      const d: { [key: string]: Py } = {};
      items("}", () => {
        const k = value();
        blank();
        if (typeof k !== "string" || text[i++] !== ":") fail();
        d[k as string] = value();
      });
      return d;
    }
    if (c === "[" || c === "(") {
      const l: Py[] = [];
      items(c === "[" ? "]" : ")", () => l.push(value()));
      return l;
    }
    if (c === "'" || c === '"') {
      let s = str();
      // Adjacent literals concatenate, as in Python.
      for (blank(); text[i] === "'" || text[i] === '"'; blank()) s += str();
      return s;
    }
    const word = /^(-?\d+|True|False|None)/.exec(text.slice(i))?.[0] ?? fail();
    i += word.length;
    return word === "True" ? true : word === "False" ? false : word === "None" ? null : Number(word);
  };
  const v = value();
  blank();
  if (i !== text.length) fail();
  return v;
}

interface Desc {
  flavors: string[];
  flags: string[];
  feature: string[];
  opts: string[];
  dopts: string[];
  ropts: string[];
  arch?: string;
  timeoutMs?: number;
}

function readDesc(name: string): Desc {
  const path = join(STATIC, `${name}.desc`);
  const d = existsSync(path) && statSync(path).size > 0 ? parsePy(readFileSync(path, "utf8")) : {};
  if (typeof d !== "object" || d === null || Array.isArray(d)) throw new Error("not a dict");
  const words = (key: string, dflt = ""): string[] => String(d[key] ?? dflt).split(/\s+/).filter(Boolean);
  return {
    flavors: words("flavor", "h ns uns"),
    flags: words("flags"),
    feature: words("feature"),
    opts: words("opts"),
    dopts: words("dopts"),
    ropts: words("ropts"),
    ...(typeof d.arch === "string" ? { arch: d.arch } : {}),
    ...(d.timeout !== undefined ? { timeoutMs: Number(d.timeout) * 1000 } : {}),
  };
}

// ---- the tests ----------------------------------------------------------------

interface Test {
  name: string;
  /** Unset when the .desc could not be read (`skip` says why). */
  desc?: Desc;
  /** The start command, as the Makefile's NAME.pid rule gives it. */
  argv?: string[];
  skip?: string;
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** What zdtm.py's all_tests() finds: executable regular files, less helpers and its exclude list. */
function allTests(): string[] {
  return readdirSync(STATIC)
    .filter((f) => !f.endsWith(".checkskip") && !f.endsWith(".hook") && f !== "criu-rtc.so" && f !== "route_rules")
    .filter((f) => lstatSync(join(STATIC, f)).isFile() && executable(join(STATIC, f)))
    .sort();
}

/** Each test's start command from one `make -n` (keep going past tests it has no rule for). */
function startCommands(names: string[]): Map<string, string[]> {
  const r = Bun.spawnSync(["make", "--no-print-directory", "-n", "-k", "-C", STATIC, ...names.flatMap((n) => ["-o", n]), ...names.map((n) => `${n}.pid`)], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const cmds = new Map<string, string[]>();
  for (const line of r.stdout.toString().split("\n")) {
    const argv = line.trim().split(/\s+/);
    const name = argv[0]?.replace(/^\.\//, "") ?? "";
    if (argv[0]?.startsWith("./") && names.includes(name)) cmds.set(name, argv);
  }
  return cmds;
}

/** Why the host flavor cannot run this test (zdtm.py's own reasons), or undefined. */
function skipReason(t: Test, named: boolean): string | undefined {
  const d = t.desc;
  if (!d) return t.skip;
  if (d.arch !== undefined && d.arch !== machine()) return `arch ${d.arch}`;
  if (!d.flavors.includes("h")) return `no host flavor (${d.flavors.join(" ")})`;
  if (d.flags.includes("noauto") && !named) return "noauto (run only when named)";
  if (d.flags.includes("crfail")) return "crfail (the dump is meant to fail)";
  // Such a test needs a CRIU plugin (zdtm.py passes --libdir).
  if (d.flags.includes("crlib")) return "crlib (needs a CRIU plugin)";
  if (!t.argv) return "no NAME.pid rule in the Makefile";
  return undefined;
}

// ---- processes ------------------------------------------------------------------

interface Proc {
  pid: number;
  ppid: number;
  sid: number;
  state: string;
}

function procs(): Proc[] {
  const out: Proc[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      // Fields after "(comm) ": state ppid pgrp session ...
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.push({ pid: Number(e), ppid: Number(f[1]), sid: Number(f[3]), state: f[0] ?? "" });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Runs (a zombie does not: it has exited, it only keeps its pid). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !"ZX".includes(stat.slice(stat.lastIndexOf(")") + 2)[0] ?? "X");
  } catch {
    return false;
  }
}

/** `roots` and all their descendants. */
function withDescendants(all: Proc[], roots: number[]): Set<number> {
  const set = new Set(roots);
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) if (set.has(p.ppid) && !set.has(p.pid)) set.add(p.pid), (grew = true);
  }
  return set;
}

function under(link: string, dir: string): boolean {
  try {
    return readlinkSync(link).startsWith(`${dir}/`);
  } catch {
    return false;
  }
}

/**
 * The live processes of a test run: its sessions (a zdtm test calls setsid(),
 * and a restore brings the session back), whatever runs a binary or has its
 * cwd in the run's directory, and their descendants.
 */
function processesOf(dir: string, sids: number[]): number[] {
  const all = procs().filter((p) => !"ZX".includes(p.state));
  const seeds = all.filter((p) => sids.includes(p.sid) || under(`/proc/${p.pid}/exe`, dir) || under(`/proc/${p.pid}/cwd`, dir)).map((p) => p.pid);
  return [...withDescendants(all, seeds)].filter((pid) => pid !== process.pid && pid > 1 && alive(pid));
}

/** Send `sig` to each of `pids`; false if one was gone already. */
function signal(pids: Iterable<number>, sig: NodeJS.Signals): boolean {
  let all = true;
  for (const pid of pids) {
    try {
      process.kill(pid, sig);
    } catch {
      all = false;
    }
  }
  return all;
}

function sigkill(pids: Iterable<number>): void {
  signal(pids, "SIGKILL");
}

/**
 * Unmount whatever a test mounted in its directory (a cgroup test mounts one
 * there and unmounts it only on SIGTERM), deepest first, lazily.
 */
function unmountUnder(dir: string): void {
  const points = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => (l.split(" ")[4] ?? "").replaceAll(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of points) Bun.spawnSync(["umount", "-l", m], { stdout: "ignore", stderr: "ignore" });
}

/** SIGKILL what a run left, until nothing is left; returns how many there were. */
async function killLeftovers(dir: string, sids: number[]): Promise<number> {
  const seen = new Set<number>();
  for (let round = 0; round < 100; round++) {
    const left = processesOf(dir, sids);
    if (left.length === 0) break;
    for (const pid of left) seen.add(pid);
    sigkill(left);
    await Bun.sleep(50);
  }
  return seen.size;
}

// ---- one run ----------------------------------------------------------------------

/** A step failed; the message is the reason reported. */
class Failed extends Error {}
/** CRIU could not dump the test (--dumper criu): nothing to say of ckpt. */
class NoDump extends Failed {}
/** ckpt's restore refused the images in one line (--dumper criu). */
class Refused extends Failed {}

async function waitUntil(what: string, pred: () => boolean, deadline: number): Promise<void> {
  while (!pred()) {
    if (Date.now() > deadline) throw new Failed(`timeout: ${what}`);
    await Bun.sleep(20);
  }
}

function lines(path: string): string[] {
  try {
    return readFileSync(path, "utf8").split("\n").map((l) => l.trim()).filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * Run argv to its end with stdout and stderr in `log` (files, not pipes: a
 * restored tree or a daemon must not hold our pipe open); at the deadline it
 * is SIGKILLed with its descendants and the exit code is null.
 */
async function run(argv: string[], log: string, deadline: number, cwd: string, env: Record<string, string | undefined>): Promise<number | null> {
  const fd = openSync(log, "a");
  const p = Bun.spawn(argv, { cwd, env, stdin: "ignore", stdout: fd, stderr: fd });
  closeSync(fd);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    sigkill(withDescendants(procs(), [p.pid]));
  }, Math.max(0, deadline - Date.now()));
  const code = await p.exited;
  clearTimeout(timer);
  return timedOut ? null : code;
}

/** zdtm.py's environment for a test (zdtm_test.start in the host flavor). */
function testEnv(d: Desc): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = { ...process.env, TMPDIR: process.env.TMPDIR ?? "/tmp", ZDTM_THREAD_BOMB: "5" };
  if (d.flags.includes("pre-dump-notify")) Object.assign(env, { ZDTM_NOTIFY_FDIN: "100", ZDTM_NOTIFY_FDOUT: "101" });
  // Tests without 'suid' drop to these ids (the numbers CRIU's tests expect).
  // Not when CRIU dumps: its prlimit() of a process of another uid needs
  // CAP_SYS_RESOURCE, which this kind of machine withholds.
  if (!d.flags.includes("suid") && opt.dumper !== "criu") Object.assign(env, { ZDTM_UID: "18943", ZDTM_GID: "58467", ZDTM_GROUPS: "27495 48244" });
  return env;
}

/** The last FAIL (else ERR, else any) line of a test's output, without its time and pid. */
function failLine(ls: string[]): string {
  const pick = ls.findLast((l) => l.includes("FAIL")) ?? ls.findLast((l) => l.includes("ERR:")) ?? ls.at(-1);
  return pick === undefined ? "empty output" : pick.replace(/^\d\d:\d\d:\d\d\.\d+:\s+\d+:\s+/, "");
}

/** ckpt's reason for a refusal: its last "ckpt:" line (a crash has none: then its last line). */
function ckptReason(log: string): string {
  const ls = lines(log);
  return ls.findLast((l) => l.startsWith("ckpt:")) ?? ls.at(-1) ?? "no output";
}

/** The first error of a CRIU log, without its timestamp (CRIU goes on without raising its own RLIMIT_NOFILE). */
function criuReason(log: string): string {
  const ls = lines(log);
  const first = ls.find((l) => /\bError\b/.test(l) && !l.includes("RLIMIT_NOFILE for self")) ?? ls.at(-1) ?? "no output";
  return first.replace(/^\(\s*[\d.]+\)\s*/, "");
}

interface Run {
  dir: string;
  sids: number[];
}
/** The run under way, for the signal handler. */
let current: Run | undefined;

/** One run of a test, with dump and restore or without (the control). */
async function runOnce(t: Test & { desc: Desc; argv: string[] }, scratch: string, withCkpt: boolean): Promise<Verdict> {
  const { name, desc } = t;
  const dir = join(scratch, `${name}${withCkpt ? "" : "-control"}`);
  const images = `${dir}.img`;
  const log = (what: string): string => `${dir}.${what}.log`;
  const pidfile = join(dir, `${name}.pid`);
  const deadline = Date.now() + (desc.timeoutMs ?? TIMEOUT_MS);
  const env = testEnv(desc);
  const r: Run = { dir, sids: [] };
  current = r;

  const hook = async (stage: string): Promise<void> => {
    const h = join(STATIC, `${name}.hook`);
    if (executable(h) && (await run([h, stage], log("hook"), deadline, ZDTM_TEST_DIR, env)) !== 0) throw new Failed(`hook ${stage} failed: ${lines(log("hook")).at(-1) ?? "no output"}`);
  };
  const ckpt = async (step: string, args: string[]): Promise<void> => {
    const code = await run([...CKPT, ...args], log(step), deadline, scratch, env);
    if (code === null) throw new Failed(`timeout: ckpt ${step}`);
    if (code === 0) return;
    const reason = `${step}: ${ckptReason(log(step))}`;
    if (opt.dumper === "criu" && (code === 1 || code === 2) && lines(log(step)).filter((l) => l.trim() !== "").length === 1) throw new Refused(reason);
    throw new Failed(reason);
  };
  const criuDump = async (pid: number): Promise<void> => {
    const code = await run([CRIU!, "dump", "-t", String(pid), "-D", images, "-o", log("criu-dump"), "-v4", ...desc.opts, ...desc.dopts], log("dump"), deadline, scratch, env);
    if (code === null) throw new NoDump("timeout: criu dump");
    if (code !== 0) throw new NoDump(`criu dump: ${criuReason(log("criu-dump"))}`);
  };
  const readPid = (): number => {
    const pid = Number(readFileSync(pidfile, "utf8").trim());
    if (!(pid > 0)) throw new Failed(`bad pid file: ${JSON.stringify(readFileSync(pidfile, "utf8"))}`);
    return pid;
  };

  try {
    mkdirSync(dir);
    // The test may drop to ZDTM_UID and still writes its files here (zdtm.py adds write permission too).
    chmodSync(dir, 0o777);
    copyFileSync(join(STATIC, name), join(dir, name));
    chmodSync(join(dir, name), statSync(join(STATIC, name)).mode & 0o7777);

    // The test forks its daemon, which writes the pid file once ready; then the first process exits.
    const code = await run(t.argv, log("start"), deadline, dir, env);
    if (code === null) throw new Failed("timeout: start");
    if (code !== 0) throw new Failed(`start: exit ${code}: ${failLine(["", ".out", ".out.inprogress"].flatMap((f) => lines(f ? join(dir, name + f) : log("start"))))}`);
    let pid = readPid();
    r.sids.push(pid);
    await hook("--post-start");

    if (withCkpt) {
      env.ZDTM_TEST_PID = String(pid);
      // Restore needs every pid of the tree free again.
      const tree = withDescendants(procs(), [pid]);
      for (const p of procs()) if (p.sid === pid) tree.add(p.pid);
      await hook("--pre-dump");
      if (opt.dumper === "criu") {
        mkdirSync(images, { mode: 0o700 });
        await criuDump(pid);
      } else await ckpt("dump", ["dump", "-t", String(pid), "-D", images, ...desc.opts, ...desc.dopts]);
      await waitUntil("the dumped tree to be gone", () => [...tree].every((p) => !existsSync(`/proc/${p}`)), deadline);
      rmSync(pidfile, { force: true });
      await hook("--pre-restore");
      await ckpt("restore", ["restore", "-D", images, "-d", "--pidfile", pidfile, ...desc.opts, ...desc.ropts]);
      if (!existsSync(pidfile)) throw new Failed("restore: no pid file written");
      pid = readPid();
      r.sids.push(pid);
      Object.assign(env, { ZDTM_TEST_PID: String(pid), ZDTM_IMG_DIR: images });
      await hook("--post-restore");
    }

    if (!signal([pid], "SIGTERM")) throw new Failed(`the test (pid ${pid}) was gone before SIGTERM`);
    await waitUntil("the test to exit after SIGTERM", () => !alive(pid), deadline);
    const out = join(dir, `${name}.out`);
    if (!existsSync(out)) return { status: "fail", reason: `no .out: ${failLine(lines(`${out}.inprogress`))}` };
    const ls = lines(out);
    return ls.at(-1)?.split(/\s+/).includes("PASS") ? { status: "pass" } : { status: "fail", reason: failLine(ls) };
  } catch (e) {
    if (e instanceof NoDump) return { status: "nodump", reason: e.message };
    if (e instanceof Refused) return { status: "refused", reason: e.message };
    if (e instanceof Failed) return { status: "fail", reason: e.message };
    return { status: "fail", reason: `runner: ${e instanceof Error ? e.message : String(e)}` };
  } finally {
    // A test still running after a failure gets SIGTERM first, so that it
    // undoes what it did to the host (zdtm.py SIGKILLs, but in a namespace).
    const running = r.sids.filter(alive);
    signal(running, "SIGTERM");
    await waitUntil("", () => !running.some(alive), Date.now() + 3000).catch(() => {});
    await killLeftovers(dir, r.sids);
    current = undefined;
    // zdtm.py cleans up after every test, pass or fail; a failing clean hook changes nothing.
    const h = join(STATIC, `${name}.hook`);
    if (executable(h)) await run([h, "--clean"], log("hook"), Date.now() + 10_000, ZDTM_TEST_DIR, env);
    unmountUnder(dir);
    if (!opt.keep) {
      for (const p of [dir, images, log("start"), log("dump"), log("criu-dump"), log("restore"), log("hook")]) {
        try {
          rmSync(p, { recursive: true, force: true });
        } catch (e) {
          process.stderr.write(`bench/zdtm: ${name}: cannot remove ${p}: ${e instanceof Error ? e.message : String(e)}\n`);
        }
      }
    }
  }
}

// ---- report -------------------------------------------------------------------------

type Status = "pass" | "fail" | "broken" | "skip" | "nodump" | "refused";
interface Result {
  name: string;
  status: Status;
  reason?: string;
  seconds: number;
}
type Verdict = Omit<Result, "name" | "seconds">;

/** A reason with what differs from test to test stripped, so that equal causes group together. */
function normalise(name: string, reason: string): string {
  return reason
    .replaceAll(/\/\S*\/ckpt-zdtm-[^/\s]+\/[^/\s]+/g, "DIR")
    .replaceAll(name, "TEST")
    .replaceAll(/\b0x[0-9a-f]+\b/gi, "0x…")
    .replaceAll(/\b[0-9a-f]*\d[0-9a-f]*[a-f][0-9a-f]*\b|\b[0-9a-f]*[a-f][0-9a-f]*\d[0-9a-f]*\b/gi, (m) => (m.length >= 8 ? "ADDR" : m))
    // fd numbers, and the fd argument of a syscall, differ with what the test opened before.
    .replaceAll(/\b(fd|file id) \d+/g, "$1 N")
    .replaceAll(/\b([a-z_]+)\(\d+, /g, "$1(N, ")
    .replaceAll(/\.c:\d+/g, ".c:N")
    .replaceAll(/\b\d{3,}\b/g, "N");
}

function grouped(rs: Result[]): [string, Result[]][] {
  const groups = new Map<string, Result[]>();
  for (const r of rs) {
    const key = normalise(r.name, r.reason ?? "");
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  return [...groups].sort((a, b) => b[1].length - a[1].length || a[0].localeCompare(b[0]));
}

function report(results: Result[], seconds: number): string {
  const of = (s: Status): Result[] => results.filter((r) => r.status === s);
  const [pass, fail, broken, skip, nodump, refused] = [of("pass"), of("fail"), of("broken"), of("skip"), of("nodump"), of("refused")];
  const byCriu = opt.dumper === "criu";
  const out: string[] = [
    `zdtm static tests ${byCriu ? "dumped by CRIU, restored by ckpt" : "through ckpt"} (${STATIC}, host flavor): ${results.length} tests in ${(seconds / 60).toFixed(1)} min`,
    `pass ${pass.length}  fail ${fail.length}  skip ${skip.length}  broken ${broken.length} (fail without ckpt too)` +
      (byCriu ? `  nodump ${nodump.length} (CRIU cannot dump them here)  refused ${refused.length} (ckpt's restore refuses in one line)` : ""),
  ];
  const section = (title: string, ls: string[]): void => {
    if (ls.length > 0) out.push("", `${title}:`, ...ls);
  };
  const examples = (rs: Result[]): string => rs.slice(0, 4).map((r) => r.name).join(" ") + (rs.length > 4 ? " …" : "");
  const byReason = (rs: Result[]): string[] => grouped(rs).map(([reason, g]) => `  ${String(g.length).padStart(4)}  ${reason}  (${examples(g)})`);
  section("failures", fail.map((r) => `  ${r.name}: ${r.reason}`));
  section("broken (the control run without ckpt failed)", broken.map((r) => `  ${r.name}: ${r.reason}`));
  section("skipped, by reason", byReason(skip));
  section("failures by reason", byReason(fail));
  section("refused by ckpt's restore, by reason", byReason(refused));
  section("not dumped by CRIU, by reason", byReason(nodump));
  return `${out.join("\n")}\n`;
}

// ---- main ---------------------------------------------------------------------------

const everything = allTests();
const unknown = positionals.filter((n) => !everything.includes(n));
if (unknown.length > 0) {
  process.stderr.write(`bench/zdtm: no such test in ${STATIC}: ${unknown.join(" ")}\n`);
  process.exit(2);
}
const names = positionals.length > 0 ? positionals : everything;
const commands = startCommands(names);
const tests: Test[] = names.map((name) => {
  const argv = commands.get(name);
  try {
    return { name, desc: readDesc(name), ...(argv ? { argv } : {}) };
  } catch (e) {
    return { name, skip: `unreadable .desc (${e instanceof Error ? e.message : String(e)})` };
  }
});
const named = positionals.length > 0;

if (opt.list) {
  for (const t of tests) {
    const why = skipReason(t, named);
    process.stdout.write(`${t.name.padEnd(36)} ${why === undefined ? "run" : `skip: ${why}`}${t.desc?.flags.length ? `  [${t.desc.flags.join(" ")}]` : ""}\n`);
  }
  process.exit(0);
}

const scratch = mkdtempSync(join(tmpdir(), "ckpt-zdtm-"));
// A test that drops to ZDTM_UID must still reach its directory.
chmodSync(scratch, 0o755);
const cleanup = new BenchCleanup("bench/zdtm", () => {
  if (current) sigkill(processesOf(current.dir, current.sids));
});
if (!opt.keep) cleanup.dirs.push(scratch);

const results: Result[] = [];
const started = performance.now();
for (const [i, t] of tests.entries()) {
  const t0 = performance.now();
  const result = async (): Promise<Verdict> => {
    const why = skipReason(t, named);
    if (why !== undefined || !t.desc || !t.argv) return { status: "skip", reason: why ?? "" };
    const checkskip = join(STATIC, `${t.name}.checkskip`);
    if (executable(checkskip) && (await run([checkskip], "/dev/null", Date.now() + 30_000, ZDTM_TEST_DIR, process.env)) !== 0) return { status: "skip", reason: ".checkskip said no" };
    const runnable = { ...t, desc: t.desc, argv: t.argv };
    if (!opt["no-control"]) {
      const control = await runOnce(runnable, scratch, false);
      if (control.status !== "pass") return { status: "broken", reason: control.reason ?? "" };
    }
    return await runOnce(runnable, scratch, true);
  };
  const r: Result = { name: t.name, ...(await result()), seconds: (performance.now() - t0) / 1000 };
  results.push(r);
  process.stderr.write(`[${i + 1}/${tests.length}] ${t.name}: ${r.status.toUpperCase()}${r.reason ? ` ${r.reason}` : ""} (${r.seconds.toFixed(1)} s)\n`);
}
const seconds = (performance.now() - started) / 1000;
cleanup.killAll();

process.stdout.write(report(results, seconds));
if (opt.json !== undefined) writeFileSync(opt.json, `${JSON.stringify({ static: STATIC, ckpt: CKPT, seconds, results }, null, 2)}\n`);
