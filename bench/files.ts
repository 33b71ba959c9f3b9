/**
 * Shared-file identification benchmark (seed 004: genid + kcmp): `ckpt dump -R
 * --json` of a 4-process tree holding N fds in all (default 2,500, 5,000 and
 * 10,000), all on a few regular files at offset 0:
 *   - the root opens each file many times separately (distinct open files
 *     with the same dev:ino:pos, so the same genid: only kcmp tells them apart),
 *     dups some fds many times and others once or twice, then forks 3 children,
 *   - every process (root included) then adds as many fds of its own the same
 *     way, some of them dups of inherited fds.
 * Per dump: fds, open files, genid collisions, kcmp calls (per collision, and
 * against the binary-search bound collisions * ceil(log2(kmax+1)), kmax being
 * the most distinct open files that share one genid), frozen and total time,
 * and the statx/openat/pidfd_getfd/fcntl/readlinkat calls. The expected fds,
 * collisions and open files are measured apart from ckpt: fds and genids from
 * /proc (stat and fdinfo of every fd), open files from the workload's own count
 * of the open() calls it made. Every figure printed is measured here.
 * Run: bun bench/files.ts    (SIZES=2500,5000,10000 REPS=2 FILES=16 to adjust)
 */
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { allBlocked } from "../test/helpers/images";
import { buildC, killablePid, startDetached, tempDir, waitFor, type Target } from "../test/helpers/target";
import { BenchCleanup } from "./cleanup";

const SIZES = (process.env.SIZES ?? "2500,5000,10000").split(",").map(Number);
const REPS = Number(process.env.REPS ?? 2);
const FILES = Number(process.env.FILES ?? 16);
const NPROC = 4;
const MAIN = join(import.meta.dir, "..", "src", "cli", "main.ts");

if (SIZES.some((n) => !Number.isInteger(n) || n < 64 * NPROC) || !(FILES >= 1 && FILES <= 256) || !(REPS >= 1)) {
  console.error("bench/files: SIZES must be integers >= 256, FILES 1..256, REPS >= 1");
  process.exit(2);
}

/**
 * fdtree DIR NFDS NFILES: creates DIR/f0 .. DIR/f{NFILES-1}, raises
 * RLIMIT_NOFILE, fills its table, forks NPROC-1 children that inherit it and
 * add their own fds, so that the tree holds about NFDS fds. Each process
 * prints "opens PID C0 C1 ..." (how many times it open()ed each file itself:
 * every open is a distinct open file), then the root prints "ready PID..."
 * and everyone pause()s. Children die with the root (PR_SET_PDEATHSIG).
 */
const fdTree = (): string =>
  buildC("bench-fdtree", `
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#define NPROC ${NPROC}
#define MAXFILES 256
static const char *dir;
static int nfiles;
static int counts[MAXFILES];

static void die(const char *what) {
  dprintf(2, "fdtree %d: %s: %s\\n", (int)getpid(), what, strerror(errno));
  exit(1);
}

static int open_file(int j) {
  char p[4096];
  snprintf(p, sizeof p, "%s/f%d", dir, j);
  int fd = open(p, (j & 1) ? O_RDWR : O_RDONLY);
  if (fd < 0) die(p);
  counts[j]++;
  return fd;
}

static int dup_of(int fd) {
  int d = dup(fd);
  if (d < 0) die("dup");
  return d;
}

/*
 * Add n fds to this process's table and to list[]: half of them separate
 * opens of the files, round robin; of the dups, a quarter are of the first
 * (up to) four fds opened here (fds dup'ed hundreds of times), a quarter of
 * inherited fds (when there are any), the rest spread over this call's opens.
 */
static int add_fds(int n, int *list, int have, const int *inh, int ninh) {
  int opens = n / 2 > 0 ? n / 2 : 1;
  int *mine = list + have;
  for (int i = 0; i < opens; i++) list[have++] = open_file(i % nfiles);
  int hot = opens < 4 ? opens : 4;
  for (int i = 0; i < n - opens; i++) {
    int src;
    if (i % 4 == 0) src = mine[(i / 4) % hot];
    else if (i % 4 == 1 && ninh > 0) src = inh[(i * 13) % ninh];
    else src = mine[(i * 7) % opens];
    list[have++] = dup_of(src);
  }
  return have;
}

static void report(void) {
  char line[8192];
  int len = snprintf(line, sizeof line, "opens %d", (int)getpid());
  for (int j = 0; j < nfiles; j++) len += snprintf(line + len, sizeof line - len, " %d", counts[j]);
  len += snprintf(line + len, sizeof line - len, "\\n");
  if (write(1, line, len) != len) die("write");
}

int main(int argc, char **argv) {
  if (argc != 4) { dprintf(2, "usage: fdtree DIR NFDS NFILES\\n"); return 2; }
  dir = argv[1];
  int total = atoi(argv[2]);
  nfiles = atoi(argv[3]);
  if (nfiles < 1 || nfiles > MAXFILES || total < 64 * NPROC) { dprintf(2, "fdtree: bad arguments\\n"); return 2; }

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl)) die("getrlimit");
  rlim_t want = (rlim_t)total + 64;
  if (rl.rlim_max < want) rl.rlim_max = want;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl)) die("setrlimit");

  char block[4096];
  memset(block, 'x', sizeof block);
  for (int j = 0; j < nfiles; j++) {
    char p[4096];
    snprintf(p, sizeof p, "%s/f%d", dir, j);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die(p);
    if (write(fd, block, sizeof block) != (ssize_t)sizeof block) die("write");
    close(fd);
  }

  /* Each process ends with about total/NPROC fds: 3 stdio, the inherited part, its own part. */
  int per = total / NPROC;
  int inherited = per / 2 - 3;
  int own = per - 3 - inherited;
  int *list = calloc(per + 16, sizeof(int));
  if (!list) die("calloc");
  int ninh = add_fds(inherited, list, 0, NULL, 0);
  int *inh = malloc(ninh * sizeof(int));
  memcpy(inh, list, ninh * sizeof(int));

  pid_t root = getpid();
  int syncp[2];
  if (pipe(syncp)) die("pipe");
  for (int c = 1; c < NPROC; c++) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      if (prctl(PR_SET_PDEATHSIG, SIGKILL)) die("prctl");
      if (getppid() != root) _exit(1);
      close(syncp[0]);
      memset(counts, 0, sizeof counts); /* inherited opens are the root's open files */
      add_fds(own, list, ninh, inh, ninh);
      report();
      close(syncp[1]);
      for (;;) pause();
    }
  }
  close(syncp[1]);
  add_fds(own, list, ninh, inh, ninh);
  char b;
  while (read(syncp[0], &b, 1) > 0) {}
  close(syncp[0]);
  report();
  dprintf(1, "ready %d\\n", (int)root);
  for (;;) pause();
}
`);

// ---- cleanup: every target process, the running ckpt, every temp directory

let ckptChild: ReturnType<typeof Bun.spawn> | undefined;
// SIGINT lets a running dump resume the tree it froze; the tree is killed anyway.
const left = new BenchCleanup("bench/files", () => ckptChild?.kill("SIGINT"));

// ---- the workload and what /proc says about it

interface Tree {
  n: number;
  pids: number[];
  /** Open files per data file: the open() calls the workload counted, summed over the tree. */
  opensPerFile: number[];
  /** Measured from /proc before the first dump. */
  procFds: number;
  genids: number;
  /** fds of a kind other than regular files (stdin's /dev/null). */
  otherFds: number;
}

function childrenOf(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
  return text === "" ? [] : text.split(/\s+/).map(Number);
}

async function startTree(n: number): Promise<Tree> {
  const data = tempDir("bench-files-data");
  left.dirs.push(data);
  const outDir = tempDir("bench-files-out");
  left.dirs.push(outDir);
  const out = join(outDir, "out");
  writeFileSync(out, "");
  const argv = [fdTree(), data, String(n), String(FILES)];
  const root = await startDetached(argv, out);
  left.targets.push(root);
  const lines = (): string[] => readFileSync(out, "utf8").split("\n");
  try {
    await waitFor(`fdtree ${n} to print "ready"`, () => lines().some((l) => l.startsWith("ready")) || !alive(root.pid), 60_000);
  } catch (e) {
    throw new Error(`${(e as Error).message}; it printed: ${readFileSync(out, "utf8")}`);
  }
  if (!alive(root.pid)) throw new Error(`fdtree ${n} exited: ${readFileSync(out, "utf8")}`);
  const pids = [root.pid, ...childrenOf(root.pid)];
  for (const p of pids.slice(1)) left.targets.push(killablePid(p));
  if (pids.length !== NPROC) throw new Error(`fdtree ${n}: ${pids.length} processes, expected ${NPROC}`);
  for (const p of pids) await waitFor(`fdtree pid ${p} to block`, () => allBlocked(p), 10_000);

  const opensPerFile = new Array<number>(FILES).fill(0);
  const reported = lines().filter((l) => l.startsWith("opens "));
  if (reported.length !== NPROC) throw new Error(`fdtree ${n}: ${reported.length} "opens" lines, expected ${NPROC}`);
  for (const l of reported) l.split(" ").slice(2).forEach((c, j) => (opensPerFile[j]! += Number(c)));

  // fds and genids (dev:ino:pos, as ckpt keys them) from /proc, apart from ckpt.
  const genids = new Set<string>();
  let procFds = 0;
  let otherFds = 0;
  for (const p of pids) {
    for (const fd of readdirSync(`/proc/${p}/fd`)) {
      const st = statSync(`/proc/${p}/fd/${fd}`);
      const pos = /^pos:\s*(\d+)/m.exec(readFileSync(`/proc/${p}/fdinfo/${fd}`, "utf8"))?.[1];
      if (pos === undefined) throw new Error(`no pos in /proc/${p}/fdinfo/${fd}`);
      genids.add(`${st.dev}:${st.ino}:${pos}`);
      if (!st.isFile()) otherFds++;
      procFds++;
    }
  }
  return { n, pids, opensPerFile, procFds, genids: genids.size, otherFds };
}

/** The process exists and is not a zombie (orphans are reaped by init, here sometimes seconds later). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

// ---- one dump through the CLI

interface Summary {
  processes: number;
  figures: { frozenMs: number; totalMs: number; freezingMs: number };
  syscalls: Record<string, number>;
  files: { genidCollisions: number; kcmpCalls: number; sharedFds: number; fds: number; openFiles: number };
}

/** `gone`: processes of the tree not alive right after the dump (-R should leave all running). */
type Run = { ok: true; wallMs: number; s: Summary; gone: number[] } | { ok: false; wallMs: number; error: string; gone: number[] };

async function oneDump(tree: Tree): Promise<Run> {
  for (const p of tree.pids) await waitFor(`${p} to block again`, () => allBlocked(p), 10_000);
  const parent = tempDir("bench-files-img");
  left.dirs.push(parent);
  try {
    const t0 = performance.now();
    const child = Bun.spawn([process.execPath, MAIN, "dump", "-t", String(tree.pids[0]), "-D", join(parent, "img"), "-R", "--json"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    ckptChild = child;
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    ckptChild = undefined;
    const wallMs = performance.now() - t0;
    const gone = tree.pids.filter((p) => !alive(p));
    if (code !== 0) return { ok: false, wallMs, gone, error: `exit ${code}: ${stderr.trim()}${stdout.trim() ? `\nstdout: ${stdout.trim()}` : ""}` };
    try {
      return { ok: true, wallMs, gone, s: JSON.parse(stdout) as Summary };
    } catch (e) {
      return { ok: false, wallMs, gone, error: `unparsable --json output (${(e as Error).message}): ${stdout.slice(0, 500)}` };
    }
  } finally {
    left.remove(parent);
  }
}

// ---- the table

const COLUMNS: [string, number][] = [
  ["fds", 6], ["rep", 4], ["fds", 6], ["open", 6], ["coll", 6], ["kcmp", 7], ["kcmp/coll", 10], ["kmax", 5], ["log2 kmax", 10],
  ["bound", 7], ["frozen ms", 10], ["total ms", 9], ["wall ms", 8], ["statx", 6], ["openat", 7], ["getfd", 6], ["fcntl", 6], ["rdlink", 7], ["kcmp all", 9],
];
const row = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(COLUMNS[i]![1]) : c.padStart(COLUMNS[i]![1]))).join(" ");
const f1 = (x: number): string => x.toFixed(1);
const sc = (s: Summary, name: string): string => String(s.syscalls[name] ?? 0);

interface Measured {
  tree: Tree;
  runs: Run[];
}

/** Figures of a tree that come from the workload and /proc, not from ckpt. */
function expected(t: Tree): { fds: number; coll: number; open: number; kmax: number; bound: number } {
  const kmax = Math.max(...t.opensPerFile);
  const coll = t.procFds - t.genids;
  // Open files: the workload's opens, plus stdin (/dev/null) and stdout = stderr (the out file),
  // one open file each, set up by startDetached's shell and inherited by the whole tree.
  const open = t.opensPerFile.reduce((a, b) => a + b, 0) + 2;
  // A lookup among k distinct files of one genid costs at most ceil(log2(k+1)) kcmp calls.
  return { fds: t.procFds, coll, open, kmax, bound: coll * Math.ceil(Math.log2(kmax + 1)) };
}

function cells(m: Measured, run: Run, rep: number): string[] {
  const e = expected(m.tree);
  const head = [String(m.tree.n), String(rep)];
  if (!run.ok) return [...head, "FAILED", ...COLUMNS.slice(3).map(([h]) => (h === "wall ms" ? f1(run.wallMs) : ""))];
  const { files: f, figures } = run.s;
  return [
    ...head, String(f.fds), String(f.openFiles), String(f.genidCollisions), String(f.kcmpCalls),
    f.genidCollisions ? (f.kcmpCalls / f.genidCollisions).toFixed(2) : "-", String(e.kmax), Math.log2(e.kmax).toFixed(2),
    String(e.bound), f1(figures.frozenMs), f1(figures.totalMs), f1(run.wallMs),
    sc(run.s, "statx"), sc(run.s, "openat"), sc(run.s, "pidfd_getfd"), sc(run.s, "fcntl"), sc(run.s, "readlinkat"), sc(run.s, "kcmp"),
  ];
}

/** Differences between what ckpt reported and what was measured apart from it. */
function problems(m: Measured): string[] {
  const e = expected(m.tree);
  const out: string[] = [];
  m.runs.forEach((run, i) => {
    const at = `n=${m.tree.n} rep ${i + 1}`;
    if (run.gone.length) out.push(`${at}: processes gone after dump -R: ${run.gone.join(" ")}`);
    if (!run.ok) {
      out.push(`${at}: dump failed: ${run.error}`);
      return;
    }
    const { files: f, syscalls, processes } = run.s;
    if (processes !== NPROC) out.push(`${at}: ckpt dumped ${processes} processes, the tree has ${NPROC}`);
    if (f.fds !== e.fds) out.push(`${at}: ckpt saw ${f.fds} fds, /proc lists ${e.fds}`);
    if (f.genidCollisions !== e.coll) out.push(`${at}: ${f.genidCollisions} genid collisions, /proc gives ${e.fds} fds - ${m.tree.genids} genids = ${e.coll}`);
    if (f.openFiles !== e.open) out.push(`${at}: ${f.openFiles} open files, the workload made ${e.open - 2} opens (+ 2 stdio open files) = ${e.open}`);
    if (f.sharedFds !== f.fds - f.openFiles) out.push(`${at}: sharedFds ${f.sharedFds} != fds ${f.fds} - open files ${f.openFiles}`);
    if (f.kcmpCalls > e.bound) out.push(`${at}: ${f.kcmpCalls} kcmp calls, above the binary-search bound ${e.bound}`);
    if ((syscalls.kcmp ?? 0) < f.kcmpCalls) out.push(`${at}: syscalls.kcmp ${syscalls.kcmp ?? 0} < files.kcmpCalls ${f.kcmpCalls}`);
  });
  return out;
}

try {
  const t0 = performance.now();
  const results: Measured[] = [];
  for (const n of SIZES) {
    const tree = await startTree(n);
    process.stderr.write(`fdtree ${n}: pids ${tree.pids.join(" ")}, ${tree.procFds} fds in /proc, dumping ${REPS}x ...\n`);
    const m: Measured = { tree, runs: [] };
    for (let rep = 0; rep < REPS; rep++) m.runs.push(await oneDump(tree));
    results.push(m);
    // Done with this tree: kill it, and let it go, before the next (bigger) one starts.
    left.killTargets();
    for (const p of tree.pids) await waitFor(`fdtree pid ${p} to exit`, () => !alive(p), 10_000);
  }

  console.log(`ckpt dump -R --json of a ${NPROC}-process tree (root + ${NPROC - 1} children) holding N fds on ${FILES} regular files at offset 0`);
  console.log(`columns: fds = N asked / rep / fds ckpt saw; open = open files; coll = genid collisions; kcmp = files.kcmpCalls;`);
  console.log(`  kmax = most distinct open files sharing one genid (the workload's open() count of its busiest file); log2 kmax = per-lookup bound;`);
  console.log(`  bound = coll * ceil(log2(kmax+1)), the most a binary search may call kcmp; frozen/total ms from the summary, wall ms = CLI run with Bun start;`);
  console.log(`  statx, openat, getfd = pidfd_getfd, fcntl, rdlink = readlinkat, kcmp all = syscalls.kcmp (also KCMP_FILES/other kcmp): per dump`);
  console.log(row(COLUMNS.map(([h]) => h)));
  for (const m of results) m.runs.forEach((run, i) => console.log(row(cells(m, run, i + 1))));

  console.log("\nmeasured apart from ckpt:");
  for (const m of results) {
    const e = expected(m.tree);
    console.log(
      `  N=${m.tree.n}: /proc ${e.fds} fds (${m.tree.otherFds} not regular files), ${m.tree.genids} genids => ${e.coll} collisions; ` +
        `workload opens per file ${Math.min(...m.tree.opensPerFile)}..${e.kmax} (sum ${e.open - 2}) + 2 stdio => ${e.open} open files`,
    );
  }

  // Growth between sizes, from each size's last successful run.
  const last = results.map((m) => ({ m, run: [...m.runs].reverse().find((r) => r.ok) as Extract<Run, { ok: true }> | undefined })).filter((x) => x.run);
  if (last.length > 1) {
    console.log("\ngrowth (last rep of each size):");
    for (let i = 1; i < last.length; i++) {
      const a = last[i - 1]!;
      const b = last[i]!;
      const na = a.run!.s.files.fds;
      const nb = b.run!.s.files.fds;
      const ka = a.run!.s.files.kcmpCalls;
      const kb = b.run!.s.files.kcmpCalls;
      const kma = expected(a.m.tree).kmax;
      const kmb = expected(b.m.tree).kmax;
      console.log(
        `  ${na} -> ${nb} fds (x${(nb / na).toFixed(2)}): kcmp x${(kb / ka).toFixed(2)}, n log2 n x${((nb * Math.log2(nb)) / (na * Math.log2(na))).toFixed(2)}, ` +
          `n log2 kmax x${((nb * Math.log2(kmb)) / (na * Math.log2(kma))).toFixed(2)}, ` +
          `n^2 x${((nb / na) ** 2).toFixed(2)}; kcmp per fd ${(ka / na).toFixed(2)} -> ${(kb / nb).toFixed(2)}; ` +
          `frozen ms per fd ${(a.run!.s.figures.frozenMs / na).toFixed(4)} -> ${(b.run!.s.figures.frozenMs / nb).toFixed(4)}`,
      );
    }
  }

  const found = results.flatMap(problems);
  console.log(found.length ? `\nproblems:\n${found.map((p) => `  ${p}`).join("\n")}` : "\nno problems: every count matches what was measured apart from ckpt");
  console.log(`\ntotal ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (found.length) process.exitCode = 1;
} finally {
  left.killAll();
}
