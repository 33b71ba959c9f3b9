/**
 * Iterative dumps: pre-dump → pre-dump → dump → restore on a workload that
 * rewrites a known set of pages between rounds and checks all of its memory
 * afterwards. The images are checked against that set: the pages left in the
 * parent are absent from the child's pages file; the tracking leaves nothing
 * in the target once the last round is done or abandoned.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { PagemapEntry } from "../src/image/gen/pagemap_pb";
import { StatsEntrySchema } from "../src/image/gen/stats_pb";
import { readImageFile } from "../src/image/image-file";
import { ImageDirWriter } from "../src/image/image-dir";
import { ParentImages } from "../src/dump/memory/parent";
import { ProcFs } from "../src/proc/procfs";
import { readStat } from "../src/proc/stat";
import { runCkpt } from "./helpers/cli";
import { critFailures, entries, entryPages, pagemapOf } from "./helpers/images";
import { dirtyTarget, respawnTarget, watchTarget } from "./helpers/iterative-workloads";
import { FdTypes, FileEntrySchema } from "../src/image/gen/fdinfo_pb";
import { alive, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { selfCheck } from "./helpers/workloads";

const PAGE = 4096n;
const proc = new ProcFs();
const cleanup: Target[] = [];
afterEach(() => {
  for (const t of cleanup.splice(0)) t.kill();
});

interface Summary {
  figures: { pagesWritten: number; pagesInParent: number; frozenMs: number };
  tracking: { method: string; inherited: boolean; note: string | null; wholeProcesses: { pid: number; reason: string }[]; trackerStarted: { pid: number } | null; trackerEnded: { pid: number } | null };
}

function ckptJson(args: string[]): Summary {
  const r = runCkpt([...args, "--json"]);
  if (r.code !== 0) throw new Error(`ckpt ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Summary;
}

/** Send SIGUSR2 and wait for the workload to report round `round`. */
async function dirtyRound(pid: number, out: string, round: number): Promise<void> {
  process.kill(pid, "SIGUSR2");
  await waitFor(`dirty round ${round}`, () => readFileSync(out, "utf8").includes(`round ${round}\n`), 10000);
}

const count = entryPages;

/** Page numbers of `region` (from `addr`, `pages` long) that entries with `flag` cover. */
function pagesWith(entries: readonly PagemapEntry[], flag: number, addr: bigint, pages: number): Set<number> {
  const out = new Set<number>();
  for (const e of entries) {
    if (((e.flags ?? 0) & flag) === 0) continue;
    for (let i = 0; i < count(e); i++) {
      const p = Number((e.vaddr - addr) / PAGE) + i;
      if (p >= 0 && p < pages) out.add(p);
    }
  }
  return out;
}

function vmFlagsWithUw(pid: number): number {
  return readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n").filter((l) => l.startsWith("VmFlags:") && / uw( |$)/.test(l)).length;
}

function fdList(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`).map((fd) => `${fd} ${readlinkSync(`/proc/${pid}/fd/${fd}`)}`).sort();
}

function mapsLines(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, "utf8").split("\n");
}

function procStatus(pid: number, key: string): string {
  return readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith(`${key}:`))?.split(/\s+/)[1] ?? "";
}

/** A tracker that runs (a zombie has closed its fds already). */
function trackerAlive(pid: number): boolean {
  try {
    return alive(pid) && readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "ckpt-tracker";
  } catch {
    return false; // exited meanwhile
  }
}

const PE_PARENT = 1;
const PE_PRESENT = 4;
const MIB = 32;
const STRIDE = 16;

describe("iterative dumps", () => {
  test("pre-dump → pre-dump → dump → restore: only changed pages are written again, and the memory comes back right", async () => {
    const base = tempDir("iter");
    const { target, words, out } = await startReady([dirtyTarget(), String(MIB), String(STRIDE)]);
    cleanup.push(target);
    const pid = target.pid;
    const addr = BigInt(`0x${words[0]}`);
    const pages = Number(words[1]) / 4096;
    const fdsBefore = fdList(pid);

    const one = ckptJson(["pre-dump", "-t", String(pid), "-D", join(base, "1")]);
    expect(one.tracking.method).toBe("uffd-wp");
    expect(one.figures.pagesInParent).toBe(0);
    expect(one.figures.pagesWritten).toBeGreaterThanOrEqual(pages);
    // The tracking lives in the tracker, not in the target.
    expect(fdList(pid)).toEqual(fdsBefore);
    expect(procStatus(pid, "TracerPid")).toBe("0");
    expect(vmFlagsWithUw(pid)).toBeGreaterThan(0);
    const tracker1 = one.tracking.trackerStarted?.pid ?? 0;
    expect(trackerAlive(tracker1)).toBe(true);

    await dirtyRound(pid, out, 1);
    const two = ckptJson(["pre-dump", "-t", String(pid), "-D", join(base, "2"), "--prev-images-dir", "../1"]);
    expect(two.tracking.inherited).toBe(true);
    expect(two.tracking.trackerEnded?.pid).toBe(tracker1);
    expect(trackerAlive(tracker1)).toBe(false);
    expect(readlinkSync(join(base, "2", "parent"))).toBe("../1");

    await dirtyRound(pid, out, 2);
    const three = ckptJson(["dump", "-t", String(pid), "-D", join(base, "3"), "--prev-images-dir", join(base, "2"), "-R"]);
    expect(three.tracking.inherited).toBe(true);

    // Round 2 rewrote the pages p with p % STRIDE == 1, round 3 (the dump) those with p % STRIDE == 2 (round 1 wrote p % STRIDE == 0).
    for (const [dir, written] of [["2", 0], ["3", 1]] as const) {
      const pm = pagemapOf(join(base, dir), pid);
      const present = pagesWith(pm.entries, PE_PRESENT, addr, pages);
      const inParent = pagesWith(pm.entries, PE_PARENT, addr, pages);
      const expected = new Set(Array.from({ length: pages / STRIDE }, (_, i) => i * STRIDE + written));
      expect([...present].sort((a, b) => a - b)).toEqual([...expected].sort((a, b) => a - b));
      expect(inParent.size).toBe(pages - expected.size);
      for (const p of present) expect(inParent.has(p)).toBe(false);
      // The pages file holds exactly the present entries: in-parent pages are absent from it.
      const presentPages = pm.entries.filter((e) => ((e.flags ?? 0) & PE_PRESENT) !== 0).reduce((s, e) => s + count(e), 0);
      expect(statSync(join(base, dir, `pages-${pm.pagesId}.img`)).size).toBe(presentPages * 4096);
      const stats = entries(join(base, dir), "stats-dump", StatsEntrySchema)[0]?.dump;
      expect(Number(stats?.pagesSkippedParent)).toBe(pm.entries.filter((e) => ((e.flags ?? 0) & PE_PARENT) !== 0).reduce((s, e) => s + count(e), 0));
      // Written ≈ dirtied: the region's changed pages plus a handful of stack and libc pages.
      const summary = dir === "2" ? two : three;
      expect(summary.figures.pagesWritten).toBeLessThanOrEqual(Math.ceil(expected.size * 1.1) + 16);
      expect(critFailures(join(base, dir))).toEqual([]);
    }

    // The final dump ended the tracking: no tracker, nothing registered, the target as it was.
    expect(trackerAlive(two.tracking.trackerStarted?.pid ?? 0)).toBe(false);
    expect(vmFlagsWithUw(pid)).toBe(0);
    expect(fdList(pid)).toEqual(fdsBefore);
    expect(procStatus(pid, "TracerPid")).toBe("0");

    target.kill();
    await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    const r = runCkpt(["restore", "-D", join(base, "3"), "-d"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await selfCheck(pid, out)).toBe("ok round 2");
  });

  test("an abandoned pre-dump leaves the target with no extra fd, mapping or tracer, and its tracking ends with the timeout", async () => {
    const base = tempDir("iter-abandon");
    const { target, out } = await startReady([dirtyTarget(), "8", String(STRIDE)]);
    cleanup.push(target);
    const pid = target.pid;
    const fdsBefore = fdList(pid);
    const mapsBefore = mapsLines(pid);
    const pre = ckptJson(["pre-dump", "-t", String(pid), "-D", join(base, "1"), "--track-timeout", "2"]);
    const tracker = pre.tracking.trackerStarted?.pid ?? 0;
    expect(fdList(pid)).toEqual(fdsBefore);
    expect(mapsLines(pid)).toEqual(mapsBefore);
    expect(procStatus(pid, "TracerPid")).toBe("0");
    expect(procStatus(pid, "State")).toBe("S");
    expect(trackerAlive(tracker)).toBe(true);
    await waitFor("the tracker to time out", () => !trackerAlive(tracker), 10000);
    expect(vmFlagsWithUw(pid)).toBe(0);
    expect(fdList(pid)).toEqual(fdsBefore);
    expect(mapsLines(pid)).toEqual(mapsBefore);

    // A later dump finds no tracker: it says so and saves everything again — and the result is right.
    await dirtyRound(pid, out, 1);
    const d = ckptJson(["dump", "-t", String(pid), "-D", join(base, "2"), "--prev-images-dir", "../1"]);
    expect(d.tracking.inherited).toBe(false);
    expect(d.tracking.note).toContain("is gone");
    expect(d.figures.pagesInParent).toBe(0);
    await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    const r = runCkpt(["restore", "-D", join(base, "2"), "-d"]);
    expect(r.stderr).toBe("");
    expect(await selfCheck(pid, out)).toBe("ok round 1");
  });

  test("a pre-dump whose tree's root exits takes its tracker with it", async () => {
    const base = tempDir("iter-exit");
    const { target } = await startReady([dirtyTarget(), "4", String(STRIDE)]);
    cleanup.push(target);
    const pre = ckptJson(["pre-dump", "-t", String(target.pid), "-D", join(base, "1")]);
    const tracker = pre.tracking.trackerStarted?.pid ?? 0;
    expect(trackerAlive(tracker)).toBe(true);
    target.kill();
    await waitFor("the tracker to notice the root's exit", () => !trackerAlive(tracker), 10000);
  });

  test("restore refuses a pre-dump set and a broken parent chain; a bad --prev-images-dir leaves nothing", async () => {
    const base = tempDir("iter-bad");
    const { target, words, out } = await startReady([dirtyTarget(), "4", String(STRIDE)]);
    cleanup.push(target);
    const pid = target.pid;
    ckptJson(["pre-dump", "-t", String(pid), "-D", join(base, "1")]);
    let r = runCkpt(["restore", "-D", join(base, "1")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("is a pre-dump");

    r = runCkpt(["dump", "-t", String(pid), "-D", join(base, "x"), "--prev-images-dir", "../nothing-here", "-R"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--prev-images-dir ../nothing-here");
    expect(existsSync(join(base, "x"))).toBe(false);
    expect(procStatus(pid, "TracerPid")).toBe("0");

    await dirtyRound(pid, out, 1);
    // Reading /proc/PID/pagemap instead of PAGEMAP_SCAN: the write-protect bit (57) tells the same story.
    const d = ckptJson(["dump", "-t", String(pid), "-D", join(base, "2"), "--prev-images-dir", "../1", "--page-scan", "pagemap"]);
    expect(d.tracking.inherited).toBe(true);
    const addr = BigInt(`0x${words[0]}`);
    const pages = Number(words[1]) / 4096;
    const present = pagesWith(pagemapOf(join(base, "2"), pid).entries, PE_PRESENT, addr, pages);
    expect([...present].sort((a, b) => a - b)).toEqual(Array.from({ length: pages / STRIDE }, (_, i) => i * STRIDE));
    await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    rmSync(join(base, "1"), { recursive: true });
    r = runCkpt(["restore", "-D", join(base, "2"), "-d"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("parent");
    expect(existsSync(`/proc/${pid}`)).toBe(false);
  });
});

describe("iterative dumps across a reused pid", () => {
  test("a process that is not the one the parent round saw (same pid, later start) is saved whole", async () => {
    const base = tempDir("iter-reuse");
    const { target, words, out } = await startReady([respawnTarget()]);
    cleanup.push(target);
    const [root, child] = words.map(Number) as [number, number];
    cleanup.push({ pid: child, kill: () => { try { process.kill(child, "SIGKILL"); } catch { /* gone */ } } });
    ckptJson(["pre-dump", "-t", String(root), "-D", join(base, "1")]);
    process.kill(root, "SIGUSR2");
    await waitFor("the child to be respawned", () => readFileSync(out, "utf8").includes(`respawned ${child} 1\n`), 10000);

    // The parent round's uptime against start times, on its own: the root predates it, the new child does not.
    const probe = ImageDirWriter.open(join(base, "probe"));
    try {
      const parent = ParentImages.open(probe, "../1");
      expect(parent.pidReused(readStat(proc, root).startTime)).toBe(false);
      expect(parent.pidReused(readStat(proc, child).startTime)).toBe(true);
    } finally {
      probe.discard();
      probe.close();
    }

    const d = ckptJson(["dump", "-t", String(root), "-D", join(base, "2"), "--prev-images-dir", "../1"]);
    expect(d.tracking.inherited).toBe(true);
    expect(d.tracking.wholeProcesses).toEqual([{ pid: child, reason: "it started after the parent round: the pid was reused" }]);
    // The root's pages are mostly in the parent; none of the new child's are.
    expect(pagemapOf(join(base, "2"), root).entries.some((e) => ((e.flags ?? 0) & PE_PARENT) !== 0)).toBe(true);
    expect(pagemapOf(join(base, "2"), child).entries.every((e) => ((e.flags ?? 0) & PE_PARENT) === 0)).toBe(true);

    await waitFor("the dumped tree to be gone", () => !existsSync(`/proc/${root}`) && !existsSync(`/proc/${child}`), 10000);
    const r = runCkpt(["restore", "-D", join(base, "2"), "-d"]);
    expect(r.stderr).toBe("");
    process.kill(root, "SIGUSR1");
    await waitFor("the child's self-check", () => /^(ok|bad) 1$/m.test(readFileSync(out, "utf8")), 10000);
    expect(readFileSync(out, "utf8")).toContain("ok 1\n");
  });
});

describe("irmap cache across rounds (seed 002)", () => {
  test("pre-dump resolves watches while the tree runs; the dump revalidates them and resolves a renamed file again", async () => {
    const base = tempDir("iter-irmap");
    const watched = tempDir("iter-watched");
    const N = 20;
    const { target, out } = await startReady([watchTarget(), watched, String(N)]);
    cleanup.push(target);
    const pid = target.pid;

    const pre = runCkpt(["pre-dump", "-t", String(pid), "-D", join(base, "1"), "--json"]);
    expect(pre.stderr).toBe("");
    const preJson = JSON.parse(pre.stdout) as { irmap: { inodes: number; byHandle: number } };
    expect(preJson.irmap.inodes).toBe(N);
    const cached = readImageFile(join(base, "1", "irmap-cache")).entries.map((e) => (e.message as unknown as { path: string }).path).sort();
    expect(cached).toEqual(Array.from({ length: N }, (_, i) => join(watched, `f${i}`)).sort());

    // Between the rounds a watched file moves: its cache entry goes stale.
    renameSync(join(watched, "f5"), join(watched, "g5"));
    const d = runCkpt(["dump", "-t", String(pid), "-D", join(base, "2"), "--prev-images-dir", "../1", "--json"]);
    expect(d.stderr).toBe("");
    const dump = JSON.parse(d.stdout) as { irmap: { cacheHits: number; stale: number; byHandle: number; byScan: number } };
    expect(dump.irmap).toMatchObject({ cacheHits: N - 1, stale: 1, byHandle: 1, byScan: 0 });
    const ify = entries(join(base, "2"), "files.img", FileEntrySchema).find((f) => f.type === FdTypes.INOTIFY)?.ify;
    const paths = new Map((ify?.wd ?? []).map((w) => [w.wd, w.fHandle?.path]));
    expect(paths.get(6)).toBe(join(watched, "g5"));
    expect(paths.get(1)).toBe(join(watched, "f0"));
    const stats = entries(join(base, "2"), "stats-dump", StatsEntrySchema)[0]?.dump;
    expect(stats?.irmapResolve).toBeGreaterThan(0);

    await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    const r = runCkpt(["restore", "-D", join(base, "2"), "-d"]);
    expect(r.stderr).toBe("");
    // Every watch, the moved file's too, delivers its event on its own wd.
    expect(await selfCheck(pid, out)).toBe(`ok ${N}`);
  });
});

describe("a new chain of pre-dumps", () => {
  test("ends the tracker an older, unfinished chain of the same tree left, and tracks on its own", async () => {
    const base = tempDir("iter-chains");
    const { target, words, out } = await startReady([dirtyTarget(), "8", String(STRIDE)]);
    cleanup.push(target);
    const pid = target.pid;
    const old = ckptJson(["pre-dump", "-t", String(pid), "-D", join(base, "old")]);
    const oldTracker = old.tracking.trackerStarted?.pid ?? 0;
    const fresh = ckptJson(["pre-dump", "-t", String(pid), "-D", join(base, "1")]) as Summary & { tracking: { olderTrackersEnded: number[] } };
    expect(fresh.tracking.olderTrackersEnded).toEqual([oldTracker]);
    expect(trackerAlive(oldTracker)).toBe(false);
    // Its areas were the old chain's; now they are the new chain's, and the next round leaves them in the parent.
    await dirtyRound(pid, out, 1);
    const d = ckptJson(["dump", "-t", String(pid), "-D", join(base, "2"), "--prev-images-dir", "../1"]);
    expect(d.tracking.inherited).toBe(true);
    const addr = BigInt(`0x${words[0]}`);
    const pages = Number(words[1]) / 4096;
    expect(pagesWith(pagemapOf(join(base, "2"), pid).entries, PE_PARENT, addr, pages).size).toBe(pages - pages / STRIDE);
    await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    expect(runCkpt(["restore", "-D", join(base, "2"), "-d"]).stderr).toBe("");
    expect(await selfCheck(pid, out)).toBe("ok round 1");
  });
});
