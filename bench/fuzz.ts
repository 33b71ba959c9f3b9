/**
 * Fuzzing image sets: mutate real ones (a dump of a test workload by ckpt,
 * and CRIU 4.2's fixture set in ../shared/fixtures) and feed each mutant to
 * `ckpt show` and `ckpt restore`. Every outcome must be exit 0, or exit 1
 * with one line on stderr; never a crash, a stack trace, a hang (10 s), or a
 * restore that leaves a task of the tree behind when it fails.
 *
 * Half the restore cases keep the digests ckpt records in the inventory (a
 * corrupt file is then refused by name), half drop them first, as a set
 * CRIU wrote has none, to reach the checks behind.
 *
 * Mutations: flip bytes, cut a file short, append garbage, blow up a length
 * or count word, put an absurd value into a u32/u64 at a random offset, swap
 * two images of the same kind, delete an image; and, on images that still
 * decode (so that the checks behind the decoder are reached): set one number
 * of one entry to an absurd or nearby value (pids, addresses, sizes, ids,
 * counts), swap two elements of a repeated field (areas out of order).
 *
 * Run: bun bench/fuzz.ts   (SHOW=5000 cases for show, RESTORE=300 for
 *      restore, SEED=n; CKPT=path of a ckpt executable, default dist/ckpt if
 *      built, else the source). Bad cases are copied to /tmp/ckpt-fuzz-cases.
 */
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { memTarget, selfCheck } from "../test/helpers/workloads";
import { startReady, tempDir } from "../test/helpers/target";
import { BenchCleanup } from "./cleanup";
import type { DecodedImage } from "../src/image/decode";
import { ImageEncoder } from "../src/image/encode";
import { readImageFile, writeEncodedImage } from "../src/image/image-file";
import { entrySchema } from "../src/image/magic";
import { dropDigests } from "../test/helpers/images";

const ROOT = join(import.meta.dir, "..");
const CKPT = process.env.CKPT ? [process.env.CKPT] : existsSync(join(ROOT, "dist/ckpt")) ? [join(ROOT, "dist/ckpt")] : [process.execPath, join(ROOT, "src/cli/main.ts")];
const SHOW = Number(process.env.SHOW ?? 5000);
const RESTORE = Number(process.env.RESTORE ?? 300);
const CASES_DIR = "/tmp/ckpt-fuzz-cases";
const cleanup = new BenchCleanup("fuzz");

// A small seeded PRNG, so that a run can be repeated (SEED=n).
let state = BigInt(process.env.SEED ?? Date.now()) & 0xffffffffn;
const seed0 = state;
function random(): number {
  state = (state * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
  return Number(state >> 33n) / 2 ** 31;
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
const int = (n: number): number => Math.floor(random() * n);

type Mutation = (dir: string) => string;

/** A number inside a decoded message: the object holding it and its key (or index). */
interface Slot {
  holder: Record<string | number, unknown>;
  key: string | number;
  path: string;
}

/** Every number and every repeated field (with 2+ elements) of a message, depth first. */
function walk(m: Record<string, unknown>, path: string, numbers: Slot[], lists: { list: unknown[]; path: string }[]): void {
  for (const [k, v] of Object.entries(m)) {
    if (k.startsWith("$")) continue;
    const at = `${path}.${k}`;
    if (typeof v === "number" || typeof v === "bigint") numbers.push({ holder: m, key: k, path: at });
    else if (Array.isArray(v)) {
      if (v.length >= 2) lists.push({ list: v, path: at });
      v.forEach((x, i) => {
        if (typeof x === "number" || typeof x === "bigint") numbers.push({ holder: v as unknown as Record<number, unknown>, key: i, path: `${at}[${i}]` });
        else if (x && typeof x === "object") walk(x as Record<string, unknown>, `${at}[${i}]`, numbers, lists);
      });
    } else if (v && typeof v === "object" && !(v instanceof Uint8Array)) walk(v as Record<string, unknown>, at, numbers, lists);
  }
}

function absurd(old: number | bigint): number | bigint {
  if (typeof old === "bigint") return pick([0n, 1n, old + 4096n, old - 4096n, old * 2n, 1n << 47n, 0x7ffffffff000n, (1n << 63n) - 1n, 0xffffffffffffffffn, BigInt(int(1 << 30))]);
  return pick([0, 1, -1, old + 1, old - 1, old * 2, 4096, 0x7fffffff, 0xffffffff, 4194304, int(1 << 30)]);
}

/** Decode one image, change it with `change` (which says what it did, or null), encode it again. */
function mutateDecoded(dir: string, change: (e: Record<string, unknown>, name: string) => string | null): string {
  const name = pick(images(dir).filter((f) => f.endsWith(".img") && !f.startsWith("pages-")));
  const path = join(dir, name);
  let img: DecodedImage;
  try {
    img = readImageFile(path);
  } catch {
    return `${name} does not decode`;
  }
  const index = int(img.entries.length);
  const entry = img.entries[index];
  if (!entry) return `${name} has no entries`;
  const what = change(entry.message as unknown as Record<string, unknown>, name);
  if (what === null) return `nothing to change in ${name}`;
  const enc = new ImageEncoder(img.kind);
  try {
    img.entries.forEach((e, i) => enc.add(entrySchema(img.kind, i), e.message as never, e.payload));
  } catch {
    return `${what}: not encodable, left as it was`;
  }
  writeEncodedImage(path, enc);
  return `${what} (entry ${index})`;
}

function images(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith(".img") || f === "stats-dump");
}

function mutateBytes(dir: string, how: (b: Uint8Array) => Uint8Array, what: string): string {
  const name = pick(images(dir));
  const path = join(dir, name);
  const before = new Uint8Array(readFileSync(path));
  writeFileSync(path, how(before));
  return `${what} ${name}`;
}

const MUTATIONS: Mutation[] = [
  (d) => mutateBytes(d, (b) => { const c = b.slice(); for (let i = 0, n = 1 + int(8); i < n && c.length; i++) c[int(c.length)]! ^= 1 << int(8); return c; }, "flip bits in"),
  (d) => mutateBytes(d, (b) => b.slice(0, int(b.length)), "cut"),
  (d) => mutateBytes(d, (b) => { const c = new Uint8Array(b.length + 1 + int(64)); c.set(b); for (let i = b.length; i < c.length; i++) c[i] = int(256); return c; }, "append garbage to"),
  (d) => mutateBytes(d, (b) => { const c = b.slice(); if (c.length >= 12) new DataView(c.buffer).setUint32(8, pick([0xffffffff, 0x7fffffff, 0x10000000, 0]), true); return c; }, "absurd first entry length in"),
  (d) => mutateBytes(d, (b) => { const c = b.slice(); if (c.length >= 8) new DataView(c.buffer).setUint32(int(c.length - 3), pick([0xffffffff, 0x80000000, 0x7fffffff, 1 << 20]), true); return c; }, "absurd u32 in"),
  (d) => mutateBytes(d, (b) => { const c = b.slice(); if (c.length >= 16) new DataView(c.buffer).setBigUint64(int(c.length - 7), pick([0xffffffffffffffffn, 0x7fffffffffffn, 0xffff800000000000n, 1n << 47n]), true); return c; }, "absurd u64 in"),
  (d) => {
    const byKind = new Map<string, string[]>();
    for (const f of images(d)) {
      const k = f.replace(/-\d+\.img$/, "");
      byKind.set(k, [...(byKind.get(k) ?? []), f]);
    }
    const pairs = [...byKind.values()].filter((fs) => fs.length >= 2);
    if (pairs.length === 0) return "nothing to swap";
    const fs = pick(pairs);
    const [a, b] = [fs[0]!, fs[1]!];
    const A = readFileSync(join(d, a));
    writeFileSync(join(d, a), readFileSync(join(d, b)));
    writeFileSync(join(d, b), A);
    return `swap ${a} and ${b}`;
  },
  (d) => {
    const name = pick(images(d));
    unlinkSync(join(d, name));
    return `delete ${name}`;
  },
  ...Array.from({ length: 4 }, (): Mutation => (d) => mutateDecoded(d, (m, name) => {
    const numbers: Slot[] = [];
    walk(m, name, numbers, []);
    if (numbers.length === 0) return null;
    const s = pick(numbers);
    const value = absurd(s.holder[s.key] as number | bigint);
    s.holder[s.key] = value;
    return `set ${s.path} = ${value}`;
  })),
  (d) => mutateDecoded(d, (m, name) => {
    const lists: { list: unknown[]; path: string }[] = [];
    walk(m, name, [], lists);
    if (lists.length === 0) return null;
    const { list, path } = pick(lists);
    const [i, j] = [int(list.length), int(list.length)];
    [list[i], list[j]] = [list[j], list[i]];
    return `swap ${path}[${i}] and [${j}]`;
  }),
];

interface Verdict {
  ok: boolean;
  why: string;
}

/** exit 0, or exit 1 with one `ckpt: ` line naming a file or what is wrong; nothing else. */
function judge(code: number | null, stderr: string, timedOut: boolean): Verdict {
  if (timedOut) return { ok: false, why: "hang" };
  if (code === 0) return { ok: true, why: "exit 0" };
  const lines = stderr.trimEnd().split("\n").filter((l) => !l.startsWith("ckpt: warning:"));
  if (code !== 1) return { ok: false, why: `exit ${code}: ${lines[0] ?? ""}` };
  if (lines.length !== 1 || !lines[0]?.startsWith("ckpt: ")) return { ok: false, why: `not one line: ${lines.slice(0, 3).join(" | ")}` };
  if (/^\s+at /m.test(stderr) || /TypeError|RangeError|ReferenceError|undefined is not|Cannot read/.test(stderr)) return { ok: false, why: `internal error: ${lines[0]}` };
  return { ok: true, why: "exit 1" };
}

function run(argv: string[], timeoutMs = 10_000): { code: number | null; stderr: string; timedOut: boolean } {
  const r = Bun.spawnSync(argv, { stdout: "ignore", stderr: "pipe", timeout: timeoutMs });
  const timedOut = r.exitCode === null && r.signalCode === "SIGTERM";
  return { code: r.exitCode, stderr: r.stderr.toString(), timedOut };
}

function keep(kind: string, i: number, dir: string, what: string, why: string): void {
  const to = join(CASES_DIR, `${kind}-${i}`);
  mkdirSync(CASES_DIR, { recursive: true });
  rmSync(to, { recursive: true, force: true });
  cpSync(dir, to, { recursive: true });
  writeFileSync(join(to, "FUZZ-CASE.txt"), `${what}\n${why}\n`);
}

interface Tally {
  cases: number;
  exit0: number;
  exit1: number;
  bad: Map<string, number>;
}

function tally(): Tally {
  return { cases: 0, exit0: 0, exit1: 0, bad: new Map() };
}

function note(t: Tally, v: Verdict): void {
  t.cases++;
  if (v.ok) {
    if (v.why === "exit 0") t.exit0++;
    else t.exit1++;
    return;
  }
  const key = v.why.replace(/\d+/g, "N").slice(0, 160);
  t.bad.set(key, (t.bad.get(key) ?? 0) + 1);
}

// ------------------------------------------------------------ the sets

async function ckptSet(): Promise<{ dir: string; pid: number; tids: number[]; out: string }> {
  const { target, words, out } = await startReady([memTarget(), "4", "1"]);
  cleanup.targets.push(target);
  const dir = join(tempDir("fuzz"), "img");
  cleanup.dirs.push(dir.slice(0, -"/img".length));
  const r = Bun.spawnSync([...CKPT, "dump", "-t", String(target.pid), "-D", dir], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`dump failed: ${r.stderr.toString()}`);
  return { dir, pid: target.pid, tids: [target.pid, ...words.slice(2).map(Number)], out };
}

const FIXTURE = join(ROOT, "../shared/fixtures/criu-4.2-sleep-tree");

/**
 * A mutated copy of `from`. With `digests` false, ckpt's digests are dropped
 * from the inventory first, as a set CRIU wrote has none: the mutation then
 * meets the checks behind them.
 */
function mutant(from: string, digests = true): { dir: string; what: string } {
  const dir = join(tempDir("fuzz-case"), "img");
  cpSync(from, dir, { recursive: true });
  rmSync(join(dir, "json"), { recursive: true, force: true }); // the fixture's crit output
  if (!digests && existsSync(join(dir, "inventory.img"))) dropDigests(dir);
  const what = `${pick(MUTATIONS)(dir)}${digests ? "" : " (digests dropped)"}`;
  return { dir, what };
}

/** Running, not a zombie waiting for its parent. */
function alive(pid: number): boolean {
  try {
    return !/^[ZX]$/.test(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] ?? "X");
  } catch {
    return false;
  }
}

// ------------------------------------------------------------ main

const ours = await ckptSet();
const sources = [ours.dir, ...(existsSync(FIXTURE) ? [FIXTURE] : [])];
const show = tally();
const started = performance.now();
for (let i = 0; i < SHOW; i++) {
  const { dir, what } = mutant(pick(sources));
  const r = run([...CKPT, "show", "--json", dir]);
  const v = judge(r.code, r.stderr, r.timedOut);
  note(show, v);
  if (!v.ok) keep("show", i, dir, what, v.why);
  rmSync(dir.slice(0, -"/img".length), { recursive: true, force: true });
  if ((i + 1) % 1000 === 0) process.stderr.write(`show: ${i + 1} cases, ${[...show.bad.values()].reduce((a, b) => a + b, 0)} bad\n`);
}
const showSeconds = (performance.now() - started) / 1000;

// Restore needs the dumped pids free: the dump above killed the workload.
const outAtDump = readFileSync(ours.out);
const restore = tally();
/** Restores that ran with wrong memory, of sets with ckpt's digests and of sets without (CRIU's format alone). */
const wrongMemory = { digests: 0, none: 0 };
const restoreStarted = performance.now();
for (let i = 0; i < RESTORE; i++) {
  const digests = i % 2 === 0;
  const { dir, what } = mutant(ours.dir, digests);
  // The workload's stdout file is one of its files: give it back its size at the dump.
  writeFileSync(ours.out, outAtDump);
  // A shell in between: the restored root (CLONE_PARENT) becomes its child and is reaped by init, not left a zombie here.
  const r = run(["sh", "-c", '"$@"', "sh", ...CKPT, "restore", "-d", "-D", dir], 20_000);
  let v = judge(r.code, r.stderr, r.timedOut);
  if (r.code === 0) {
    // It ran: it must be the workload, whole, with its memory right.
    if (!alive(ours.pid)) v = { ok: false, why: "restore said 0 but the tree is not there" };
    else {
      const verdict = await selfCheck(ours.pid, ours.out).catch(() => "no answer");
      if (verdict !== "ok") {
        wrongMemory[digests ? "digests" : "none"]++;
        v = { ok: false, why: `restored tree fails its check: ${verdict}` };
      }
    }
  }
  // Whatever happened, nothing of the tree may be left afterwards but a tree that restore reported.
  for (let w = 0; w < 100 && r.code !== 0 && ours.tids.some(alive); w++) await Bun.sleep(10);
  const left = ours.tids.filter(alive);
  if (r.code !== 0 && left.length > 0) v = { ok: false, why: `failed restore left ${left.length} task(s) behind` };
  for (const tid of left) {
    try {
      process.kill(tid, "SIGKILL");
    } catch {
      // gone
    }
  }
  for (let w = 0; w < 200 && ours.tids.some(alive); w++) await Bun.sleep(10);
  note(restore, v);
  if (!v.ok) keep("restore", i, dir, what, v.why);
  rmSync(dir.slice(0, -"/img".length), { recursive: true, force: true });
  if ((i + 1) % 100 === 0) process.stderr.write(`restore: ${i + 1} cases, ${[...restore.bad.values()].reduce((a, b) => a + b, 0)} bad\n`);
}
const restoreSeconds = (performance.now() - restoreStarted) / 1000;
cleanup.killAll();

console.log(`\nimage-set fuzzing (seed ${seed0}, ${CKPT.join(" ")})\n`);
console.log("| command | cases | exit 0 | exit 1, one line | bad | seconds |");
console.log("|---|---:|---:|---:|---:|---:|");
for (const [name, t, s] of [["show", show, showSeconds], ["restore", restore, restoreSeconds]] as const) {
  console.log(`| ${name} | ${t.cases} | ${t.exit0} | ${t.exit1} | ${[...t.bad.values()].reduce((a, b) => a + b, 0)} | ${s.toFixed(0)} |`);
}
console.log(`restores that ran with wrong memory: ${wrongMemory.digests} of ${Math.ceil(RESTORE / 2)} sets with ckpt's digests, ${wrongMemory.none} of ${Math.floor(RESTORE / 2)} without (CRIU's format has no checksum)`);
for (const [name, t] of [["show", show], ["restore", restore]] as const) for (const [why, n] of t.bad) console.log(`${name}: ${n} × ${why}`);
if (show.bad.size + restore.bad.size > 0) console.log(`bad cases kept in ${CASES_DIR}`);
