/**
 * `ckpt dump` on real workloads: the images must decode with crit, hold what
 * the process held, and the workload must run on (-R) or be gone (no -R).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CoreEntrySchema, TaskKobjIdsEntrySchema } from "../src/image/gen/core_pb";
import { InventoryEntrySchema } from "../src/image/gen/inventory_pb";
import { imageRegs } from "../src/dump/task/core";
import { FileEntrySchema } from "../src/image/gen/fdinfo_pb";
import { MmEntrySchema } from "../src/image/gen/mm_pb";
import { PstreeEntrySchema } from "../src/image/gen/pstree_pb";
import { StatsEntrySchema } from "../src/image/gen/stats_pb";
import { VMA } from "../src/image/vma-status";
import { NT } from "../src/sys/nr";
import * as ptrace from "../src/sys/ptrace";
import { decodeUserRegs, USER_REGS, USER_REGS_SIZE } from "../src/sys/structs";
import { parseExactJson, runCkpt } from "./helpers/cli";
import { allBlocked, critFailures, entries, isGone, readMemory, runsFree, savedPages } from "./helpers/images";
import { startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { fileTarget, memTarget, patternWord, selfCheck, treeTarget, vmaTarget } from "./helpers/workloads";

const targets: Target[] = [];
afterAll(() => {
  for (const t of targets) t.kill();
});

async function start(argv: string[]): Promise<{ pid: number; words: string[]; out: string }> {
  const r = await startReady(argv);
  targets.push(r.target);
  // "ready" is printed just before the workload blocks: wait until it has, so
  // that its memory and registers hold still from the dump to the checks.
  await waitFor("the workload to block", () => allBlocked(r.target.pid));
  return { pid: r.target.pid, words: r.words, out: r.out };
}

interface DumpSummary {
  processes: number;
  threads: number;
  figures: { pagesWritten: number; pagesScanned: number; frozenMs: number; frozenPhases: Record<string, number> };
  syscalls: Record<string, number>;
  pages: { pagemapScanIoctls: number; pagemapPreads: number };
  mapFiles: { fileAreas: number; distinctFiles: number };
}

function dumpJson(args: string[]): DumpSummary {
  const r = runCkpt(["dump", ...args, "--json"]);
  if (r.code !== 0) throw new Error(`ckpt dump failed (${r.code}): ${r.stderr}`);
  return parseExactJson(r.stdout) as DumpSummary;
}

describe("dump -R of a process with a memory pattern and threads", async () => {
  const { pid, words, out } = await start([memTarget(), "64", "3"]);
  const region = BigInt(`0x${words[0]}`);
  const regionBytes = Number(words[1]);
  const tids = words.slice(2).map(Number);
  const dir = join(tempDir("dump"), "images");
  const summary = dumpJson(["-t", String(pid), "-D", dir, "-R"]);

  test("the summary counts the process and its threads; one PAGEMAP_SCAN", () => {
    expect(summary.processes).toBe(1);
    expect(summary.threads).toBe(4);
    expect(summary.pages.pagemapScanIoctls).toBe(1);
    expect(summary.figures.pagesWritten).toBeGreaterThanOrEqual(regionBytes / 4096);
  });

  test("the frozen time is split by phase, each part of it", () => {
    const phases = summary.figures.frozenPhases;
    expect(Object.keys(phases).sort()).toEqual(["areas", "injected", "pageScan", "pages", "tasks"]);
    // Four threads were visited by injected calls: that takes time.
    expect(phases.injected).toBeGreaterThan(0);
    for (const ms of Object.values(phases)) expect(ms).toBeGreaterThanOrEqual(0);
    expect(Object.values(phases).reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(summary.figures.frozenMs);
  });

  test("crit decodes every image", () => {
    expect(critFailures(dir)).toEqual([]);
  });

  test("the directory is private and complete", () => {
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(dir)) expect(statSync(join(dir, f)).mode & 0o777).toBe(0o600);
    for (const f of ["inventory.img", "pstree.img", `core-${pid}.img`, `mm-${pid}.img`, `pagemap-${pid}.img`, "pages-1.img", `ids-${pid}.img`, `fs-${pid}.img`, "files.img", "stats-dump"]) {
      expect(existsSync(join(dir, f))).toBe(true);
    }
    for (const tid of tids) expect(existsSync(join(dir, `core-${tid}.img`))).toBe(true);
  });

  test("CRIU's reading of the set: root_ids are ckpt's own, the vDSO is saved whole and byte for byte, vvar areas are one", () => {
    const [inv] = entries(dir, "inventory.img", InventoryEntrySchema);
    const [ids] = entries(dir, `ids-${pid}.img`, TaskKobjIdsEntrySchema);
    for (const k of ["vmId", "filesId", "fsId", "sighandId"] as const) {
      expect(inv?.rootIds?.[k]).toBeGreaterThan(0);
      expect(ids?.[k]).not.toBe(inv?.rootIds?.[k]);
    }
    expect(ids?.netNsId).toBe(inv?.rootIds?.netNsId ?? -1);
    const maps = readFileSync(`/proc/${pid}/maps`, "utf8").split("\n");
    const range = (name: string): [bigint, bigint][] => maps.filter((l) => l.endsWith(` ${name}`)).map((l) => l.split(" ")[0]!.split("-").map((x) => BigInt(`0x${x}`)) as [bigint, bigint]);
    const [vdso] = range("[vdso]");
    if (!vdso) throw new Error("no [vdso] in the target's maps");
    const saved = savedPages(dir, pid).find((r) => r.vaddr === vdso[0]);
    expect(saved?.nrPages).toBe(Number((vdso[1] - vdso[0]) / 4096n));
    expect(saved?.bytes).toEqual(readMemory(pid, vdso[0], Number(vdso[1] - vdso[0])));
    const vvars = [...range("[vvar]"), ...range("[vvar_vclock]")].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const [mm] = entries(dir, `mm-${pid}.img`, MmEntrySchema);
    const vvarEntries = mm?.vmas.filter((v) => (v.status & VMA.AREA_VVAR) !== 0) ?? [];
    expect(vvarEntries.map((v) => [v.start, v.end])).toEqual([[vvars[0]![0], vvars[vvars.length - 1]![1]]]);
  });

  test("pstree lists the threads, leader first", () => {
    const [e] = entries(dir, "pstree.img", PstreeEntrySchema);
    expect(e?.pid).toBe(pid);
    expect(e?.threads).toEqual([pid, ...[...tids].sort((a, b) => a - b)]);
  });

  test("the saved pages equal the process's memory, and cover the whole pattern", () => {
    const runs = savedPages(dir, pid);
    // The kernel rewrites each thread's rseq area (cpu and concurrency ids)
    // whenever the thread returns to user space on another CPU, as every
    // thread does once it is let go: leave those bytes out of the comparison.
    const rseqAreas = [pid, ...tids].map((tid) => {
      const [core] = entries(dir, `core-${tid}.img`, CoreEntrySchema);
      const r = core?.threadCore?.rseqEntry;
      return { start: r?.rseqAbiPointer ?? 0n, size: r?.rseqAbiSize ?? 0 };
    });
    expect(rseqAreas.every((a) => a.start !== 0n && a.size >= 32)).toBe(true);
    for (const run of runs) {
      const live = readMemory(pid, run.vaddr, run.bytes.length);
      const saved = Uint8Array.from(run.bytes);
      for (const a of rseqAreas) {
        const lo = Number(a.start - run.vaddr);
        if (lo + a.size <= 0 || lo >= saved.length) continue;
        live.fill(0, Math.max(lo, 0), Math.min(lo + a.size, saved.length));
        saved.fill(0, Math.max(lo, 0), Math.min(lo + a.size, saved.length));
      }
      expect(Buffer.compare(Buffer.from(live), Buffer.from(saved))).toBe(0);
    }
    // Every page of the pattern region is in some run, with the pattern in it.
    let covered = 0;
    for (const run of runs) {
      const lo = run.vaddr > region ? run.vaddr : region;
      const end = run.vaddr + BigInt(run.bytes.length);
      const hi = end < region + BigInt(regionBytes) ? end : region + BigInt(regionBytes);
      if (hi <= lo) continue;
      covered += Number(hi - lo);
      const view = new DataView(run.bytes.buffer, run.bytes.byteOffset, run.bytes.byteLength);
      const k = (lo - region) / 8n;
      expect(view.getBigUint64(Number(lo - run.vaddr), true)).toBe(patternWord(k, 0x5eed1234abcdn));
    }
    expect(covered).toBe(regionBytes);
  });

  test("registers in the images equal a ptrace read of every (still blocked) thread, with the syscall-restart rules applied as CRIU records them", () => {
    const buf = new Uint8Array(USER_REGS_SIZE);
    for (const tid of [pid, ...tids]) {
      const [core] = entries(dir, `core-${tid}.img`, CoreEntrySchema);
      const saved = core?.threadInfo?.gpregs;
      ptrace.seize(tid);
      try {
        ptrace.interrupt(tid);
        ptrace.waitTracee(tid);
        ptrace.getRegset(tid, NT.PRSTATUS, buf);
      } finally {
        ptrace.detach(tid);
      }
      const live = imageRegs(decodeUserRegs(buf));
      // Blocked in a restartable call: the image re-issues it.
      expect(live.ip).toBe(decodeUserRegs(buf).ip - 2n);
      const asImage: Record<string, bigint> = {};
      for (const name of USER_REGS) asImage[name] = (saved as unknown as Record<string, bigint>)[name === "orig_ax" ? "origAx" : name === "fs_base" ? "fsBase" : name === "gs_base" ? "gsBase" : name] ?? -1n;
      expect(asImage).toEqual(live as Record<string, bigint>);
      expect(core?.threadInfo?.fpregs?.xsave?.xstateBv).toBeDefined();
    }
  });

  test("the leader's core holds the SIGUSR1 handler the workload installed", () => {
    const [core] = entries(dir, `core-${pid}.img`, CoreEntrySchema);
    const usr1 = core?.tc?.sigactions[10 - 2]; // signal 10 (SIGUSR1); the entries leave out 9 and 19
    expect(core?.tc?.sigactions.length).toBe(62);
    expect(usr1?.sigaction).not.toBe(0n);
    expect(usr1?.mask).toBe(1n << 11n); // SIGUSR2 in sa_mask
  });

  test("the stats image matches the summary", () => {
    const [stats] = entries(dir, "stats-dump", StatsEntrySchema);
    expect(Number(stats?.dump?.pagesWritten)).toBe(summary.figures.pagesWritten);
    expect(stats?.dump?.frozenTime).toBeGreaterThan(0);
  });

  test("the workload runs on, untraced, and its memory and threads check out", async () => {
    expect(runsFree(pid)).toBe(true);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a SIGUSR1 sent while the leader is stopped by a tracer still reaches the checking thread", async () => {
    // The kernel hands a process-directed signal to another thread when the
    // leader is stopped; the workload's self-check must not depend on which.
    ptrace.seize(pid);
    try {
      ptrace.interrupt(pid);
      ptrace.waitTracee(pid);
      process.kill(pid, "SIGUSR1");
    } finally {
      ptrace.detach(pid);
    }
    expect(await selfCheck(pid, out, { sent: true })).toBe("ok");
  });

  test("the pagemap-reading fallback saves exactly the same pages", () => {
    const dir2 = join(tempDir("dump"), "images");
    const s2 = dumpJson(["-t", String(pid), "-D", dir2, "-R", "--page-scan", "pagemap"]);
    expect(s2.pages.pagemapScanIoctls).toBe(0);
    expect(s2.pages.pagemapPreads).toBeGreaterThan(0);
    const a = savedPages(dir, pid).map((r) => [r.vaddr, r.nrPages]);
    const b = savedPages(dir2, pid).map((r) => [r.vaddr, r.nrPages]);
    // The self-check's signal frame may have touched new stack pages in between.
    const stack = (runs: (bigint | number)[][]): (bigint | number)[][] => runs.filter((r) => (r[0] as bigint) < 0x7ff000000000n);
    expect(stack(b)).toEqual(stack(a));
  });
});

describe("dump of a 3-process tree without -R", async () => {
  const { pid, words } = await start([treeTarget()]);
  const [root, child, grandchild] = words.map(Number) as [number, number, number];
  const dir = join(tempDir("dump"), "images");
  const summary = dumpJson(["-t", String(pid), "-D", dir]);

  test("pstree holds the three processes with their parents", () => {
    expect(summary.processes).toBe(3);
    const tree = entries(dir, "pstree.img", PstreeEntrySchema).map((e) => [e.pid, e.ppid, e.threads]);
    expect(tree).toEqual([[root, 0, [root]], [child, root, [child]], [grandchild, child, [grandchild]]]);
  });

  test("crit decodes every image", () => {
    expect(critFailures(dir)).toEqual([]);
  });

  test("the tree is gone afterwards", async () => {
    await waitFor("the dumped tree to be gone", () => [root, child, grandchild].every(isGone));
  });
});

describe("dump of a process with 4096 small VMAs", async () => {
  const { pid, words, out } = await start([vmaTarget(), "4096"]);
  const base = BigInt(`0x${words[0]}`);
  const n = Number(words[1]);
  const inRange = (a: bigint): boolean => a >= base && a < base + BigInt(2 * 4096 * n);
  const dir = join(tempDir("dump"), "images");
  const summary = dumpJson(["-t", String(pid), "-D", dir, "-R"]);

  test("mm holds every area with its protection, pagemap every page with its value", () => {
    const [mm] = entries(dir, `mm-${pid}.img`, MmEntrySchema);
    const vmas = (mm?.vmas ?? []).filter((v) => inRange(v.start));
    expect(vmas.length).toBe(n);
    vmas.forEach((v, i) => {
      expect(v.prot).toBe(i % 2 ? 1 : 3);
      expect(v.status & VMA.ANON_PRIVATE).toBeTruthy();
    });
    const runs = savedPages(dir, pid).filter((r) => inRange(r.vaddr));
    expect(runs.length).toBe(n);
    runs.forEach((r, i) => {
      expect(r.vaddr).toBe(base + BigInt(2 * 4096 * i));
      expect(new DataView(r.bytes.buffer, r.bytes.byteOffset).getInt32(0, true)).toBe(i);
    });
    expect(summary.pages.pagemapScanIoctls).toBe(1);
  });

  test("the pagemap fallback reads far fewer windows than there are VMAs", () => {
    const dir2 = join(tempDir("dump"), "images");
    const s2 = dumpJson(["-t", String(pid), "-D", dir2, "-R", "--page-scan", "pagemap"]);
    expect(s2.pages.pagemapPreads).toBeLessThan(n / 16);
  });

  test("crit decodes every image; the workload runs on and checks out", async () => {
    expect(critFailures(dir)).toEqual([]);
    expect(runsFree(pid)).toBe(true);
    expect(await selfCheck(pid, out)).toBe("ok");
  });
});

describe("dump of a process mapping one file three times", async () => {
  const file = join(tempDir("file"), "data.bin");
  writeFileSync(file, Buffer.alloc(8 * 4096, 0x41));
  const { pid, words } = await start([fileTarget(), file]);
  const [shared, priv, exec] = words.map((w) => BigInt(`0x${w}`)) as [bigint, bigint, bigint];
  const dir = join(tempDir("dump"), "images");
  const summary = dumpJson(["-t", String(pid), "-D", dir, "-R"]);

  test("one file entry serves every area of that file (seed 001)", () => {
    const files = entries(dir, "files.img", FileEntrySchema).filter((f) => f.reg?.name === file);
    expect(files.length).toBe(1);
    const id = BigInt(files[0]?.id ?? -1);
    const [mm] = entries(dir, `mm-${pid}.img`, MmEntrySchema);
    const areas = (mm?.vmas ?? []).filter((v) => v.shmid === id);
    expect(areas.map((v) => [v.start, v.prot, v.status & (VMA.FILE_SHARED | VMA.FILE_PRIVATE), v.pgoff])).toEqual(
      [[shared, 1, VMA.FILE_SHARED, 0n], [priv, 3, VMA.FILE_PRIVATE, 0n], [exec, 5, VMA.FILE_PRIVATE, 4096n]].sort((a, b) => ((a[0] as bigint) < (b[0] as bigint) ? -1 : 1)),
    );
    expect(summary.mapFiles.distinctFiles).toBeLessThan(summary.mapFiles.fileAreas);
  });

  test("only the written page of the private mapping is saved", () => {
    const runs = savedPages(dir, pid);
    const inArea = (start: bigint, pages: number) => runs.filter((r) => r.vaddr >= start && r.vaddr < start + BigInt(pages * 4096));
    expect(inArea(shared, 8)).toEqual([]);
    expect(inArea(exec, 2)).toEqual([]);
    const written = inArea(priv, 8);
    expect(written.map((r) => [r.vaddr, r.nrPages])).toEqual([[priv + 2n * 4096n, 1]]);
    expect(written[0]?.bytes[10]).toBe("W".charCodeAt(0));
    expect(critFailures(dir)).toEqual([]);
  });
});
