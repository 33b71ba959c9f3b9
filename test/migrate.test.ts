/**
 * Migration between two hosts (two network namespaces joined by a veth pair,
 * test/helpers/hosts.ts): the source tree runs on one, the page server and
 * the restore on the other. The dump's pages cross the network in CRIU's
 * page-server protocol; the rest of its images are copied over by hand, as a
 * migration script does.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { CoreEntrySchema } from "../src/image/gen/core_pb";
import { MmEntrySchema } from "../src/image/gen/mm_pb";
import type { PagemapEntry } from "../src/image/gen/pagemap_pb";
import { decodeIov, decodeTarget, encodeIov, encodeTarget, PS, PSI_SIZE } from "../src/transfer/protocol";
import { entries, entryPages, pagemapOf, runsFree } from "./helpers/images";
import { dirtyTarget } from "./helpers/iterative-workloads";
import { kernelStateTarget, restoreTarget } from "./helpers/restore-workloads";
import { tcpClient, tcpServer } from "./helpers/tcp-workloads";
import { ckptOn, freshPort, spawnOn, startPageServer, twoHosts, type Running, type TwoHosts } from "./helpers/hosts";
import { alive, killablePid, processesWhere, restoreSeeds, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { memTarget, selfCheck } from "./helpers/workloads";

const CRIU = process.env.CRIU_BIN ?? "";
const haveCriu = CRIU !== "" && existsSync(CRIU);
if (!haveCriu) console.warn("migrate: CRIU_BIN is not set to a CRIU 4.2 binary; the page-server interop tests are skipped");

const PE_PARENT = 1;
const PE_LAZY = 2;
const PE_PRESENT = 4;
let hosts: TwoHosts;
beforeAll(() => {
  hosts = twoHosts();
});
afterAll(() => hosts.remove());
const cleanup: Target[] = [];
afterEach(() => {
  for (const t of cleanup.splice(0)) t.kill();
});

/** Copy the source's local images (everything but the pages, which went over the network) into the destination directory. */
function copyImages(from: string, to: string): void {
  for (const name of readdirSync(from)) {
    if (name === "parent") continue;
    copyFileSync(join(from, name), join(to, name));
  }
}

const count = entryPages;
const pagesFlagged = (entries: readonly PagemapEntry[], flag: number): number => entries.filter((e) => (e.flags & flag) !== 0).reduce((s, e) => s + count(e), 0);

/** Once the source's tree is gone: its images copied over, restored by ckpt at the destination, verified by itself. */
async function restoreAtDestination(src: string, dst: string, pid: number, out: string): Promise<void> {
  await gone([pid]);
  copyImages(src, dst);
  const r = ckptOn(hosts.dest, ["restore", "-D", dst, "-d"]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  cleanup.push(killablePid(pid));
  expect(await selfCheck(pid, out)).toBe("ok");
}

async function gone(pids: readonly number[]): Promise<void> {
  await waitFor("the migrated tree to be gone from the source", () => pids.every((p) => !existsSync(`/proc/${p}`)), 10000);
}

/** Start a workload on the source host. */
async function onSource(argv: string[]): Promise<{ target: Target; words: string[]; out: string }> {
  const r = await startReady(hosts.source.argv(["setsid", ...argv]));
  cleanup.push(r.target);
  return r;
}

describe("the page-server protocol", () => {
  test("a command is CRIU's 32-byte page_server_iov: cmd with the flags in its high half, padding, nr_pages, vaddr, dst_id", () => {
    const bytes = encodeIov({ cmd: PS.ADD_F, flags: PE_PRESENT, nrPages: 3n, vaddr: 0x7f0000001000n, dstId: encodeTarget({ kind: "task", id: 4242 }) });
    expect(bytes.length).toBe(PSI_SIZE);
    const v = new DataView(bytes.buffer);
    expect(v.getUint32(0, true)).toBe((PE_PRESENT << 16) | 6);
    expect(v.getUint32(4, true)).toBe(0);
    expect(v.getBigUint64(8, true)).toBe(3n);
    expect(v.getBigUint64(16, true)).toBe(0x7f0000001000n);
    expect(v.getBigUint64(24, true)).toBe((4242n << 8n) | 1n);
    expect(decodeIov(bytes)).toEqual({ cmd: PS.ADD_F, flags: PE_PRESENT, nrPages: 3n, vaddr: 0x7f0000001000n, dstId: (4242n << 8n) | 1n });
    expect(decodeTarget(encodeTarget({ kind: "shmem", id: 77 }))).toEqual({ kind: "shmem", id: 77 });
    // Older CRIUs sent their CR_FD_* numbers as the type; they still name the same images.
    expect(decodeTarget((5n << 8n) | 11n)).toEqual({ kind: "task", id: 5 });
    expect(decodeTarget((5n << 8n) | 34n)).toEqual({ kind: "shmem", id: 5 });
    expect(decodeTarget((5n << 8n) | 3n)).toBeNull();
  });
});

/** A dirtyTarget of `mib` MiB on the source, rewriting every `stride`th page of its region on SIGUSR2. */
async function dirtyOnSource(mib: number, stride: number): Promise<{ pid: number; out: string; addr: bigint; pages: number }> {
  const { target, words, out } = await onSource([dirtyTarget(), String(mib), String(stride)]);
  return { pid: target.pid, out, addr: BigInt(`0x${words[0]}`), pages: Number(words[1]) / 4096 };
}

/**
 * Rounds of a dirtyTarget's iterative migration, each through a page server
 * of its own into `dst`/1..: pre-dumps, and a final dump when `rounds`
 * includes it; the workload rewrites every STRIDEth page after each
 * pre-dump. Returns the pages sent per round.
 */
async function migrateInRounds(pid: number, out: string, src: string, dst: string, preDumps = 2, finalDump = true): Promise<number[]> {
  const sent: number[] = [];
  for (let round = 1; round <= preDumps + (finalDump ? 1 : 0); round++) {
    const prev = round === 1 ? [] : ["--prev-images-dir", `../${round - 1}`];
    const port = freshPort();
    const server = await startPageServer(hosts.dest, ["-D", join(dst, String(round)), "--address", hosts.dest.address, "--port", String(port), ...prev], port);
    const verb = round > preDumps ? "dump" : "pre-dump";
    const r = ckptOn(hosts.source, [verb, "-t", String(pid), "-D", join(src, String(round)), ...prev, "--page-server", "--address", hosts.dest.address, "--port", String(port), "--json"]);
    expect(r.code).toBe(0);
    sent.push((JSON.parse(r.stdout) as { pageServer: { pagesSent: number } }).pageServer.pagesSent);
    expect((await server.done).code).toBe(0);
    if (round <= preDumps) {
      process.kill(pid, "SIGUSR2");
      await waitFor(`dirty round ${round}`, () => readFileSync(out, "utf8").includes(`round ${round}\n`), 10000);
    }
  }
  return sent;
}

describe("migration through ckpt page-server", () => {
  test("a process with threads, fds and memory migrates: pages over the network, the rest copied, and it verifies itself at the destination", async () => {
    const work = tempDir("migrate-work");
    const { words, out } = await onSource([restoreTarget(), work]);
    const pid = Number(words[0]);
    const [src, dst] = [join(tempDir("migrate-src"), "img"), join(tempDir("migrate-dst"), "img")];
    const port = freshPort();
    const server = await startPageServer(hosts.dest, ["-D", dst, "--address", hosts.dest.address, "--port", String(port)], port);
    const d = ckptOn(hosts.source, ["dump", "-t", String(pid), "-D", src, "--page-server", "--address", hosts.dest.address, "--port", String(port), "--json"]);
    expect(d.code).toBe(0);
    const summary = JSON.parse(d.stdout) as { figures: { pagesWritten: number }; pageServer: { pagesSent: number; pagemaps: number; bytesSent: number } };
    const served = await server.done;
    expect(served.code).toBe(0);
    expect(served.stdout).toContain(`received ${summary.pageServer.pagesSent} pages`);
    expect(summary.pageServer.pagesSent).toBe(summary.figures.pagesWritten);
    expect(summary.pageServer.bytesSent).toBeGreaterThan(summary.pageServer.pagesSent * 4096);

    // The pages are at the destination only; the source keeps the rest and its record of what it sent.
    expect(readdirSync(src).filter((n) => /^(pages-|pagemap-)/.test(n))).toEqual([]);
    expect(existsSync(join(src, `sent-pagemap-${pid}.img`))).toBe(true);
    const pm = pagemapOf(dst, pid);
    expect(pm.pagesId).toBe(0x10001);
    expect(readdirSync(dst).sort()).toEqual([`pagemap-${pid}.img`, "pages-65537.img"]);
    expect(statSync(join(dst, "pages-65537.img")).size).toBe(pagesFlagged(pm.entries, PE_PRESENT) * 4096);
    expect(statSync(dst).mode & 0o777).toBe(0o700);

    await restoreAtDestination(src, dst, pid, out);
    if (hosts.separate) expect(readFileSync(`/proc/${pid}/net/dev`, "utf8")).toContain("ckd");
  });

  test("an iterative migration: two pre-dumps and a dump, each to a page server of its own; rounds 2 and 3 send only the pages written since", async () => {
    const STRIDE = 16;
    const { pid, out, addr, pages } = await dirtyOnSource(32, STRIDE);
    const [src, dst] = [tempDir("migrate-chain-src"), tempDir("migrate-chain-dst")];
    const sent = await migrateInRounds(pid, out, src, dst);
    expect(sent[0]).toBeGreaterThanOrEqual(pages);
    // Round r+1 saw the pages with p % STRIDE == r-1 rewritten: those, and a few of the stack and libc, went again.
    for (const round of [2, 3]) {
      const pm = pagemapOf(join(dst, String(round)), pid);
      const dirtied = pages / STRIDE;
      expect(sent[round - 1]).toBeGreaterThanOrEqual(dirtied);
      expect(sent[round - 1]).toBeLessThanOrEqual(Math.ceil(dirtied * 1.1) + 16);
      expect(pagesFlagged(pm.entries, PE_PRESENT)).toBe(sent[round - 1]!);
      // Every page of the region is saved in this round or left in the parent.
      const covered = pm.entries.filter((e) => e.vaddr >= addr && e.vaddr < addr + BigInt(pages * 4096)).reduce((s, e) => s + count(e), 0);
      expect(covered).toBe(pages);
      expect(pagesFlagged(pm.entries, PE_PARENT)).toBeGreaterThanOrEqual(pages - dirtied);
    }

    await gone([pid]);
    copyImages(join(src, "3"), join(dst, "3"));
    const r = ckptOn(hosts.dest, ["restore", "-D", join(dst, "3"), "-d"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    cleanup.push(killablePid(pid));
    expect(await selfCheck(pid, out)).toBe("ok round 2");
  });

  test("an iterative migration restored lazily from the destination's own images: the tree runs before its memory is in, and verifies itself", async () => {
    const { pid, out, addr, pages } = await dirtyOnSource(32, 16);
    const [src, dst] = [tempDir("migrate-lazy-chain-src"), tempDir("migrate-lazy-chain-dst")];
    await migrateInRounds(pid, out, src, dst);
    const top = join(dst, "3");
    await gone([pid]);
    copyImages(join(src, "3"), top);
    // Anonymous memory is flagged lazy as CRIU flags it, its contents here all the same: in this round or in the parents.
    const pm = pagemapOf(top, pid);
    const region = pm.entries.filter((e) => e.vaddr >= addr && e.vaddr < addr + BigInt(pages * 4096));
    expect(region.reduce((s, e) => s + count(e), 0)).toBe(pages);
    for (const e of region) expect({ at: e.vaddr, lazy: e.flags & PE_LAZY, here: (e.flags & (PE_PRESENT | PE_PARENT)) !== 0 }).toEqual({ at: e.vaddr, lazy: PE_LAZY, here: true });
    expect(pagesFlagged(region, PE_PARENT)).toBeGreaterThan(0);
    // The page at each thread's stack pointer is never lazy (as CRIU keeps it).
    const sps = readdirSync(top).filter((n) => /^core-\d+\.img$/.test(n)).map((n) => entries(top, n, CoreEntrySchema)[0]?.threadInfo?.gpregs?.sp ?? 0n);
    expect(sps.length).toBeGreaterThan(0);
    for (const sp of sps) {
      const holding = pm.entries.filter((e) => e.vaddr <= sp && sp < e.vaddr + BigInt(count(e) * 4096));
      expect(holding.map((e) => e.flags & PE_LAZY)).toEqual([0]);
    }

    // No source: every lazy page is read from the images in DIR and its parents.
    const daemon = spawnOn(hosts.dest, ["lazy-pages", "-D", top, "--json"]);
    await waitFor("the lazy-pages socket", () => existsSync(join(top, "lazy-pages.socket")), 20000);
    const restoreStarted = performance.timeOrigin + performance.now();
    const r = ckptOn(hosts.dest, ["restore", "-D", top, "-d", "--lazy-pages", "--json"]);
    const restoreEnded = performance.timeOrigin + performance.now();
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    cleanup.push(killablePid(pid));
    const restored = JSON.parse(r.stdout) as { pagesRestored: number; figures: { runningSinceEpochMs: number } };
    // When the tree was let go, on the clock a dump's frozenSinceEpochMs uses: inside the command's run.
    expect(restored.figures.runningSinceEpochMs).toBeGreaterThan(restoreStarted);
    expect(restored.figures.runningSinceEpochMs).toBeLessThan(restoreEnded);
    const filled = await daemon.done;
    expect(filled.code).toBe(0);
    const f = JSON.parse(filled.stdout) as { pagesLazy: number; pagesOnFault: number; pagesInBackground: number; pagesFromImages: number; bytesReceived: number };
    expect(f.pagesLazy).toBe(pagesFlagged(pm.entries, PE_LAZY));
    expect(f.pagesLazy).toBeGreaterThanOrEqual(pages);
    expect(f.pagesOnFault + f.pagesInBackground).toBe(f.pagesLazy);
    expect(f.pagesFromImages).toBe(f.pagesLazy);
    expect(f.bytesReceived).toBe(0);
    // The restore itself copied only what is not lazy.
    expect(restored.pagesRestored).toBeLessThan(pages / 4);
    expect(await selfCheck(pid, out)).toBe("ok round 2");
  });

  test("ckpt lazy-pages without --page-server refuses a --lazy-pages dump's set, whose pages are at the source; the restore removes what it made", async () => {
    const { target } = await onSource([dirtyTarget(), "8", "16"]);
    const pid = target.pid;
    const [src, dst] = [join(tempDir("lazy-nosource-src"), "img"), join(tempDir("lazy-nosource-dst"), "img")];
    const port = freshPort();
    const dump = spawnOn(hosts.source, ["dump", "-t", String(pid), "-D", src, "--lazy-pages", "--address", hosts.source.address, "--port", String(port)]);
    await waitFor("the lazy dump's images", () => existsSync(join(src, "inventory.img")), 30000);
    mkdirSync(dst);
    copyImages(src, dst);
    const daemon = spawnOn(hosts.dest, ["lazy-pages", "-D", dst]);
    await waitFor("the lazy-pages socket", () => existsSync(join(dst, "lazy-pages.socket")), 20000);
    const r = ckptOn(hosts.dest, ["restore", "-D", dst, "-d", "--lazy-pages", "--restore-in-new-pidns"]);
    expect(r.code).toBe(1);
    const d = await daemon.done;
    expect(d.code).toBe(1);
    expect(d.stderr).toContain("--page-server");
    expect(d.stderr).toContain("at the source");
    // The source still holds the frozen tree; let it go by ending its dump.
    dump.kill();
    await dump.done;
    await waitFor("the source tree to run free or end", () => !alive(pid) || runsFree(pid), 10000);
  });

  test("a page server given a stream cut short exits 1 with one line and leaves nothing behind", async () => {
    const dst = join(tempDir("migrate-cut"), "img");
    const port = freshPort();
    const server = await startPageServer(hosts.dest, ["-D", dst, "--address", hosts.dest.address, "--port", String(port)], port);
    // A sender that opens a pagemap, announces 10 pages and sends 5 of them, then goes away.
    const sender = Bun.spawnSync(hosts.source.argv([process.execPath, "-e", `
      const net = require("node:net");
      const [host, port, open, add] = process.argv.slice(1);
      const s = net.connect(Number(port), host, () => {
        s.write(Buffer.from(open, "hex"));
        s.once("data", () => { s.write(Buffer.from(add, "hex")); s.end(Buffer.alloc(5 * 4096, 7)); });
      });`, hosts.dest.address, String(port),
      Buffer.from(encodeIov({ cmd: PS.OPEN2, nrPages: 0n, vaddr: 0n, dstId: encodeTarget({ kind: "task", id: 99 }) })).toString("hex"),
      Buffer.from(encodeIov({ cmd: PS.ADD_F, flags: PE_PRESENT, nrPages: 10n, vaddr: 0x400000n, dstId: encodeTarget({ kind: "task", id: 99 }) })).toString("hex"),
    ]), { stdout: "pipe", stderr: "pipe" });
    expect(sender.stderr.toString()).toBe("");
    const r = await server.done;
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n").filter((l) => !l.includes("listening on"))).toHaveLength(1);
    expect(r.stderr).toContain("closed the connection");
    expect(existsSync(dst)).toBe(false);
  });

  test("a dump killed while it sends: the page server discards the stream, the tree runs on untraced, no image set anywhere", async () => {
    const { target, out } = await onSource([memTarget(), "256", "2"]);
    const pid = target.pid;
    const [src, dst] = [join(tempDir("migrate-kill-src"), "img"), join(tempDir("migrate-kill-dst"), "img")];
    const port = freshPort();
    const server = await startPageServer(hosts.dest, ["-D", dst, "--address", hosts.dest.address, "--port", String(port)], port);
    const dump = Bun.spawn(hosts.source.argv([process.execPath, join(import.meta.dir, "../src/cli/main.ts"), "dump", "-R", "-t", String(pid), "-D", src, "--page-server", "--address", hosts.dest.address, "--port", String(port)]), { stdout: "pipe", stderr: "pipe" });
    // Kill it once pages have started to arrive.
    const partial = (): number => (existsSync(dst) ? readdirSync(dst).filter((n) => n.endsWith(".partial")).reduce((s, n) => s + statSync(join(dst, n)).size, 0) : 0);
    await waitFor("pages to arrive at the page server", () => partial() > 0 || dump.exitCode !== null, 20000);
    const finishedFirst = dump.exitCode !== null;
    dump.kill("SIGKILL");
    await dump.exited.catch(() => undefined);
    expect(finishedFirst).toBe(false);
    const r = await server.done;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("closed the connection");
    expect(existsSync(dst)).toBe(false);
    expect(existsSync(join(src, "inventory.img"))).toBe(false);
    await waitFor("the tree to run free", () => runsFree(pid), 10000);
    expect(alive(pid)).toBe(true);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a pre-dump round whose page server has no parent round is refused before anything is sent as in-parent", async () => {
    const { target } = await onSource([dirtyTarget(), "8", "16"]);
    const pid = target.pid;
    const [src, dst] = [tempDir("migrate-noparent-src"), tempDir("migrate-noparent-dst")];
    const port1 = freshPort();
    const s1 = await startPageServer(hosts.dest, ["-D", join(dst, "1"), "--address", hosts.dest.address, "--port", String(port1)], port1);
    expect(ckptOn(hosts.source, ["pre-dump", "-t", String(pid), "-D", join(src, "1"), "--page-server", "--address", hosts.dest.address, "--port", String(port1)]).code).toBe(0);
    expect((await s1.done).code).toBe(0);
    // Round 2's server was started without --prev-images-dir.
    const port2 = freshPort();
    const s2 = await startPageServer(hosts.dest, ["-D", join(dst, "2"), "--address", hosts.dest.address, "--port", String(port2)], port2);
    const r = ckptOn(hosts.source, ["pre-dump", "-t", String(pid), "-D", join(src, "2"), "--prev-images-dir", "../1", "--page-server", "--address", hosts.dest.address, "--port", String(port2)]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("has no parent round");
    expect(r.stderr).toContain("--prev-images-dir");
    expect((await s2.done).code).toBe(1);
    expect(existsSync(join(src, "2"))).toBe(false);
    expect(existsSync(join(dst, "2"))).toBe(false);
    expect(runsFree(pid)).toBe(true);
  });

  test("a dump with --page-server and no server listening fails before freezing anything", async () => {
    const { target } = await onSource([dirtyTarget(), "8", "16"]);
    const src = join(tempDir("migrate-noserver"), "img");
    const r = ckptOn(hosts.source, ["dump", "-R", "-t", String(target.pid), "-D", src, "--page-server", "--address", hosts.dest.address, "--port", String(freshPort())]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("cannot reach the page server");
    expect(r.stderr).toContain("ECONNREFUSED");
    expect(existsSync(src)).toBe(false);
    expect(runsFree(target.pid)).toBe(true);
  });
});

/**
 * A lazy migration on one machine: the source tree stays frozen (holding its
 * pids) while the copy runs, so the destination restores it in a new pid
 * namespace, where it has its pids all the same.
 */
describe("lazy migration (post-copy)", () => {

  /** dump --lazy-pages on the source, running until its pages have gone; resolves once the images are complete. */
  async function lazyDump(pid: number, dir: string, port: number): Promise<Running> {
    const dump = spawnOn(hosts.source, ["dump", "-t", String(pid), "-D", dir, "--lazy-pages", "--address", hosts.source.address, "--port", String(port), "--json"]);
    await waitFor("the lazy dump's images", () => existsSync(join(dir, "inventory.img")), 30000);
    return dump;
  }

  /** ckpt lazy-pages for `dir` on the destination, ready for the restore. */
  async function lazyDaemon(dir: string, port: number): Promise<Running> {
    const daemon = spawnOn(hosts.dest, ["lazy-pages", "-D", dir, "--page-server", "--address", hosts.source.address, "--port", String(port), "--json"]);
    await waitFor("the lazy-pages socket", () => existsSync(join(dir, "lazy-pages.socket")), 20000);
    return daemon;
  }

  function lazyRestore(dir: string): number {
    const pidfile = join(tempDir("lazy-pidfile"), "pid");
    const r = ckptOn(hosts.dest, ["restore", "-D", dir, "-d", "--lazy-pages", "--restore-in-new-pidns", "--pidfile", pidfile]);
    return restoredRoot(r, pidfile);
  }

  function restoredRoot(r: { code: number; stderr: string }, pidfile: string): number {
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const root = Number(readFileSync(pidfile, "utf8").trim());
    cleanup.push(killablePid(root));
    return root;
  }

  test("a process with threads and 64 MiB runs at once at the destination, its memory arriving on first touch and in the background; the source ends", async () => {
    const { target, out } = await onSource([memTarget(), "64", "2"]);
    const pid = target.pid;
    const [src, dst] = [join(tempDir("lazy-src"), "img"), join(tempDir("lazy-dst"), "img")];
    const port = freshPort();
    const dump = await lazyDump(pid, src, port);
    // Anonymous memory is left out of the images, flagged lazy.
    const pm = pagemapOf(src, pid);
    expect(pagesFlagged(pm.entries, PE_LAZY)).toBeGreaterThanOrEqual(64 * 256);
    expect(statSync(join(src, `pages-${pm.pagesId}.img`)).size).toBe(pagesFlagged(pm.entries, PE_PRESENT) * 4096);
    expect(pagesFlagged(pm.entries, PE_PRESENT)).toBeLessThan(4096);
    // Each thread's rseq area, which the kernel writes before the restored tree runs, is saved, not lazy.
    const rseqAreas = readdirSync(src).filter((n) => /^core-\d+\.img$/.test(n)).map((n) => entries(src, n, CoreEntrySchema)[0]?.threadCore?.rseqEntry?.rseqAbiPointer ?? 0n).filter((a) => a !== 0n);
    expect(rseqAreas.length).toBe(3);
    for (const at of rseqAreas) {
      const holding = pm.entries.filter((e) => e.vaddr <= at && at < e.vaddr + BigInt(count(e) * 4096));
      expect(holding.map((e) => e.flags & (PE_LAZY | PE_PRESENT))).toEqual([PE_PRESENT]);
    }
    // The source tree is frozen meanwhile.
    expect(readFileSync(`/proc/${pid}/status`, "utf8")).toMatch(/State:\s+t/);

    mkdirSync(dst);
    copyImages(src, dst);
    // Without --lazy-pages the set is refused by name.
    const plain = ckptOn(hosts.dest, ["restore", "-D", dst, "-d"]);
    expect(plain.code).toBe(1);
    expect(plain.stderr).toContain("lazy page(s)");
    expect(plain.stderr).toContain("--lazy-pages");

    const daemon = await lazyDaemon(dst, port);
    // The source stops answering while the restore runs and the tree reads its memory: the
    // tree runs all the same, and its reads fault and wait for the pages. (Should the restore
    // itself wait for a page, the source answers again after a while.)
    process.kill(dump.pid, "SIGSTOP");
    const resume = (): void => void process.kill(dump.pid, "SIGCONT");
    const fallback = setTimeout(resume, 10_000);
    const pidfile = join(tempDir("lazy-pidfile"), "pid");
    const root = restoredRoot(await spawnOn(hosts.dest, ["restore", "-D", dst, "-d", "--lazy-pages", "--restore-in-new-pidns", "--pidfile", pidfile]).done, pidfile);
    const check = selfCheck(root, out);
    await Bun.sleep(300);
    clearTimeout(fallback);
    resume();
    expect(await check).toBe("ok");
    const filled = await daemon.done;
    expect(filled.stderr.split("\n").filter((l) => l && !l.includes("ready for the restore"))).toEqual([]);
    expect(filled.code).toBe(0);
    const f = JSON.parse(filled.stdout) as { pagesLazy: number; pagesOnFault: number; pagesInBackground: number; faults: number };
    expect(f.pagesLazy).toBe(pagesFlagged(pm.entries, PE_LAZY));
    expect(f.pagesOnFault + f.pagesInBackground).toBe(f.pagesLazy);
    expect(f.faults).toBeGreaterThan(0);
    const served = await dump.done;
    expect(served.code).toBe(0);
    const d = JSON.parse(served.stdout) as { lazy: { pagesServed: number; pagesLazy: number } };
    expect(d.lazy.pagesServed).toBe(d.lazy.pagesLazy);
    // The source's tree is gone; the copy runs and its memory is the source's.
    await gone([pid]);
    expect(await selfCheck(root, out)).toBe("ok");
    expect(readFileSync(`/proc/${root}/status`, "utf8")).toContain(`NSpid:\t${root}\t${pid}`);
  });

  test("a locked area is never lazy and a droppable one never saved, though maps cannot tell them apart: the tree verifies itself at the destination", async () => {
    // 96 MiB besides: big enough that its pages are scanned while smaps is read (dump.ts), on the areas maps names.
    const { target, out } = await onSource([kernelStateTarget(), "96"]);
    const pid = target.pid;
    const [src, dst] = [join(tempDir("lazy-flags-src"), "img"), join(tempDir("lazy-flags-dst"), "img")];
    const port = freshPort();
    const dump = await lazyDump(pid, src, port);
    const vmas = entries(src, `mm-${pid}.img`, MmEntrySchema)[0]?.vmas ?? [];
    const MAP_LOCKED = 0x2000;
    const MAP_TYPE = 0x0f;
    const MAP_DROPPABLE = 0x08;
    const locked = vmas.filter((v) => (v.flags & MAP_LOCKED) !== 0);
    const droppable = vmas.filter((v) => (v.flags & MAP_TYPE) === MAP_DROPPABLE);
    expect(locked.length).toBeGreaterThan(0);
    expect(droppable).toHaveLength(1);
    const pm = pagemapOf(src, pid);
    const within = (v: { start: bigint; end: bigint }): PagemapEntry[] => pm.entries.filter((e) => e.vaddr < v.end && e.vaddr + BigInt(count(e) * 4096) > v.start);
    for (const v of locked) {
      const inside = within(v);
      expect(inside.length).toBeGreaterThan(0);
      for (const e of inside) expect(e.flags & (PE_LAZY | PE_PRESENT)).toBe(PE_PRESENT);
    }
    expect(within(droppable[0]!)).toEqual([]);
    // Other anonymous memory is still lazy.
    expect(pagesFlagged(pm.entries, PE_LAZY)).toBeGreaterThan(0);

    mkdirSync(dst);
    copyImages(src, dst);
    const daemon = await lazyDaemon(dst, port);
    const root = lazyRestore(dst);
    expect((await daemon.done).code).toBe(0);
    expect((await dump.done).code).toBe(0);
    await gone([pid]);
    expect(await selfCheck(root, out)).toBe("ok");
  });

  test("two pre-dumps through page servers, then a lazy dump: the restore reads the rounds at the destination and fetches from the source only the pages written since", async () => {
    const { pid, out, addr, pages } = await dirtyOnSource(32, 16);
    const [src, dst] = [tempDir("lazy-chain-src"), tempDir("lazy-chain-dst")];
    await migrateInRounds(pid, out, src, dst, 2, false);
    const port = freshPort();
    const dump = spawnOn(hosts.source, ["dump", "-t", String(pid), "-D", join(src, "3"), "--prev-images-dir", "../2", "--lazy-pages", "--address", hosts.source.address, "--port", String(port), "--json"]);
    await waitFor("the lazy dump's images", () => existsSync(join(src, "3", "inventory.img")), 30000);
    // What round 2 left unchanged is in the parent (at the destination); what was written since, at the source.
    const pm = pagemapOf(join(src, "3"), pid);
    const region = pm.entries.filter((e) => e.vaddr >= addr && e.vaddr < addr + BigInt(pages * 4096));
    const inParent = pagesFlagged(region, PE_PARENT);
    const atSource = region.filter((e) => e.flags === PE_LAZY).reduce((s, e) => s + count(e), 0);
    expect(inParent + atSource).toBe(pages);
    expect(atSource).toBeGreaterThanOrEqual(pages / 16);
    expect(atSource).toBeLessThan(pages / 4);
    for (const e of region) expect(e.flags & PE_LAZY).toBe(PE_LAZY);

    // The set goes over as a script's cp -a would take it: with its parent link, which names round 2 there too.
    const top = join(dst, "3");
    mkdirSync(top);
    copyImages(join(src, "3"), top);
    symlinkSync(readlinkSync(join(src, "3", "parent")), join(top, "parent"));
    const daemon = await lazyDaemon(top, port);
    const root = lazyRestore(top);
    const filled = await daemon.done;
    expect(filled.code).toBe(0);
    const f = JSON.parse(filled.stdout) as { pagesLazy: number; pagesOnFault: number; pagesInBackground: number; pagesFromImages: number; bytesReceived: number };
    expect(f.pagesOnFault + f.pagesInBackground).toBe(f.pagesLazy);
    expect(f.pagesFromImages).toBeGreaterThanOrEqual(inParent);
    // Only the pages kept at the source crossed the network.
    expect(f.pagesLazy - f.pagesFromImages).toBe(pagesFlagged(pm.entries.filter((e) => e.flags === PE_LAZY), PE_LAZY));
    expect(f.bytesReceived).toBeLessThan((f.pagesLazy - f.pagesFromImages) * 4096 + (1 << 20));
    expect((await dump.done).code).toBe(0);
    await gone([pid]);
    expect(await selfCheck(root, out)).toBe("ok round 2");
  });

  test("the destination started ahead of the dump (lazy-pages --wait-source, restore --wait-images): the tree verifies itself there", async () => {
    const { target, out } = await onSource([memTarget(), "64", "2"]);
    const pid = target.pid;
    const [src, dst] = [join(tempDir("ahead-src"), "img"), join(tempDir("ahead-dst"), "img")];
    mkdirSync(dst);
    const port = freshPort();
    // Both wait: the daemon for the source to listen, the restore for a complete set in dst.
    const daemon = spawnOn(hosts.dest, ["lazy-pages", "-D", dst, "--page-server", "--address", hosts.source.address, "--port", String(port), "--wait-source", "30", "--json"]);
    const pidfile = join(tempDir("ahead-pidfile"), "pid");
    const restore = spawnOn(hosts.dest, ["restore", "-D", dst, "-d", "--lazy-pages", "--restore-in-new-pidns", "--pidfile", pidfile, "--wait-images", "30", "--json"]);
    await Bun.sleep(300);
    const dump = await lazyDump(pid, src, port);
    // Copied with inventory.img first: the restore must wait for every file, not for the inventory alone.
    const names = readdirSync(src).sort((a, b) => Number(b === "inventory.img") - Number(a === "inventory.img"));
    for (const name of names) copyFileSync(join(src, name), join(dst, name));
    const restored = await restore.done;
    expect(restored.stderr).toBe("");
    expect(restored.code).toBe(0);
    const figures = (JSON.parse(restored.stdout) as { figures: { waitedMs: number; totalMs: number } }).figures;
    expect(figures.waitedMs).toBeGreaterThan(200);
    const root = Number(readFileSync(pidfile, "utf8").trim());
    cleanup.push(killablePid(root));
    expect((await daemon.done).code).toBe(0);
    expect((await dump.done).code).toBe(0);
    await gone([pid]);
    expect(await selfCheck(root, out)).toBe("ok");
  });

  test("restore --wait-images gives up after its time with one line naming what was missing, and leaves no seed behind", () => {
    // A seed started while the images were awaited must go with the restore.
    const before = restoreSeeds();
    const dir = tempDir("wait-empty");
    const r = ckptOn(hosts.dest, ["restore", "-D", dir, "-d", "--wait-images", "0.3"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`ckpt: no complete image set appeared in ${dir} within 0.3 s (last: ${dir} holds no inventory.img yet)\n`);
    expect(restoreSeeds().filter((p) => !before.includes(p))).toEqual([]);
  });

  /**
   * A 256 MiB tree dumped lazily and restored at the destination, its source
   * stopped at once (most of the memory still there): the lazy copy is
   * mid-way for as long as the test wants.
   */
  async function lazyCopyStalled(name: string): Promise<{ pid: number; out: string; dump: Running; daemon: Running; root: number }> {
    const { target, out } = await onSource([memTarget(), "256", "2"]);
    const [src, dst] = [join(tempDir(`${name}-src`), "img"), join(tempDir(`${name}-dst`), "img")];
    const port = freshPort();
    const dump = await lazyDump(target.pid, src, port);
    mkdirSync(dst);
    copyImages(src, dst);
    const daemon = await lazyDaemon(dst, port);
    const root = lazyRestore(dst);
    process.kill(dump.pid, "SIGSTOP");
    return { pid: target.pid, out, dump, daemon, root };
  }

  test("a lazy restore whose source dies mid-copy: the restored tree is killed, the source's tree runs on", async () => {
    // The source stops answering at once, then dies.
    const { pid, out, dump, daemon, root } = await lazyCopyStalled("lazy-die");
    expect(alive(root)).toBe(true);
    await Bun.sleep(200);
    dump.kill("SIGKILL");
    const r = await daemon.done;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("was killed");
    await waitFor("the restored tree to be gone", () => !alive(root), 10000);
    // ckpt died holding the tree frozen: the kernel let it go, untouched.
    await waitFor("the source tree to run free", () => runsFree(pid), 10000);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("ckpt lazy-pages killed mid-copy: the tree waits on its faults (never reading zeros) until the daemon's guard kills it", async () => {
    // The source stops answering, and the daemon's guard is held still, so
    // that what the tree does once the daemon is gone shows.
    const { pid, out, dump, daemon, root } = await lazyCopyStalled("lazy-dkill");
    // The daemon's guard: a ckpt-guard holding a pidfd of the root (its fdinfo names the pid).
    const guards = processesWhere((n) => alive(n) && readFileSync(`/proc/${n}/comm`, "utf8").trim() === "ckpt-guard" &&
      readdirSync(`/proc/${n}/fdinfo`).some((fd) => readFileSync(`/proc/${n}/fdinfo/${fd}`, "utf8").includes(`Pid:\t${root}\n`)));
    expect(guards).toHaveLength(1);
    cleanup.push(killablePid(guards[0]!));
    process.kill(guards[0]!, "SIGSTOP");
    const lines = (): number => readFileSync(out, "utf8").split("\n").length;
    const before = lines();
    // The tree checks all of its memory: it faults on pages not yet here, and waits.
    process.kill(root, "SIGUSR1");
    await Bun.sleep(200);
    daemon.kill("SIGKILL");
    await Bun.sleep(1000);
    // Its userfaultfds outlived the daemon (the guard holds them): no fault was answered with zeros, the check is still waiting.
    expect(alive(root)).toBe(true);
    expect(lines()).toBe(before);
    process.kill(guards[0]!, "SIGCONT");
    await waitFor("the restored tree to be gone", () => !alive(root), 10000);
    expect(lines()).toBe(before);
    // The source, answering again, finds its destination gone: its tree runs on, whole.
    process.kill(dump.pid, "SIGCONT");
    expect((await dump.done).code).toBe(1);
    await waitFor("the source tree to run free", () => runsFree(pid), 10000);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a tree killed while its lazy pages wait for the destination: the dump ends with one line naming it and removes its images", async () => {
    const { target } = await onSource([memTarget(), "32", "1"]);
    const pid = target.pid;
    const src = join(tempDir("lazy-killed-src"), "img");
    const dump = await lazyDump(pid, src, freshPort());
    process.kill(pid, "SIGKILL");
    const r = await dump.done;
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split("\n").filter((l) => !l.includes("images complete"));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`process ${pid} of the tree died`);
    expect(existsSync(join(src, "inventory.img"))).toBe(false);
    await waitFor("the killed tree to be reaped", () => !existsSync(`/proc/${pid}`), 10000);
  });

  test("a destination that goes away before it has every page: the source lets its tree run on and removes its images", async () => {
    const { target, out } = await onSource([memTarget(), "32", "1"]);
    const pid = target.pid;
    const src = join(tempDir("lazy-gone-src"), "img");
    const port = freshPort();
    const dump = await lazyDump(pid, src, port);
    // A destination that connects and asks for nothing, then vanishes.
    const dst = tempDir("lazy-gone-dst");
    copyImages(src, dst);
    const daemon = await lazyDaemon(dst, port);
    daemon.kill("SIGKILL");
    const r = await dump.done;
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n").filter((l) => !l.includes("images complete"))).toHaveLength(1);
    expect(existsSync(join(src, "inventory.img"))).toBe(false);
    await waitFor("the source tree to run free", () => runsFree(pid), 10000);
    expect(await selfCheck(pid, out)).toBe("ok");
  });
});

/**
 * A server with a connected client on the other host: the server is dumped
 * and restored (on its own host: the connection's address is there) while
 * the client keeps talking.
 */
describe("established TCP connections (--tcp-established)", () => {
  const COUNT = 3000;

  async function conversation(): Promise<{ server: number; serverOut: string; client: Running; port: number }> {
    const port = freshPort();
    const { target, out } = await onSource([tcpServer(), hosts.source.address, String(port)]);
    const clientOut = join(tempDir("tcp-client"), "out");
    const client = spawnRaw(hosts.dest.argv([tcpClient(), hosts.source.address, String(port), String(COUNT)]));
    // A few hundred lines each way before the dump.
    await waitFor("the conversation to start", () => /ok [1-9]/.test(checkServer(target.pid, out)), 10000);
    void clientOut;
    return { server: target.pid, serverOut: out, client, port };
  }

  /** Ask the server how far it got; its last answer. */
  function checkServer(pid: number, out: string): string {
    process.kill(pid, "SIGUSR1");
    Bun.sleepSync(50);
    return readFileSync(out, "utf8").trim().split("\n").filter((l) => /^(ok|bad)/.test(l)).at(-1) ?? "";
  }

  /** The client ended its conversation, and the server saw all of it. */
  async function bothEndsWhole(client: Running, server: number, serverOut: string): Promise<void> {
    const c = await client.done;
    expect(c.stdout.trim().split("\n").at(-1)).toBe(`ok ${COUNT}`);
    expect(c.code).toBe(0);
    expect(checkServer(server, serverOut)).toBe(`ok ${COUNT}`);
  }

  /** A lazy dump of the server with --tcp-established, once its images are complete. */
  async function lazyTcpDump(server: number, tag: string): Promise<{ images: string; port: number; dump: ReturnType<typeof spawnOn> }> {
    const images = join(tempDir(tag), "img");
    const port = freshPort();
    const dump = spawnOn(hosts.source, ["dump", "-t", String(server), "-D", images, "--tcp-established", "--lazy-pages", "--address", hosts.source.address, "--port", String(port)]);
    await waitFor("the lazy dump's images", () => existsSync(join(images, "inventory.img")), 30000);
    return { images, port, dump };
  }

  test("a server's connection comes back with it: no byte lost or repeated either way, and the client never notices", async () => {
    const { server, serverOut, client } = await conversation();
    const images = join(tempDir("tcp-img"), "img");
    const d = ckptOn(hosts.source, ["dump", "-t", String(server), "-D", images, "--tcp-established"]);
    expect(d.stderr).toBe("");
    expect(d.code).toBe(0);
    const streams = readdirSync(images).filter((n) => n.startsWith("tcp-stream-"));
    expect(streams).toHaveLength(1);
    await gone([server]);
    // While the server is away the client keeps sending; nothing may reach a closed port (a reset) meanwhile.
    await Bun.sleep(300);
    const r = ckptOn(hosts.source, ["restore", "-D", images, "-d", "--tcp-established"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    cleanup.push(killablePid(server));
    await bothEndsWhole(client, server, serverOut);
    // The lock is gone with its holder.
    expect(lockHolders()).toEqual([]);
  });

  test("dump --tcp-established of a server with no connection yet: a plain dump, quiet, no lock left", async () => {
    const port = freshPort();
    const { target } = await onSource([tcpServer(), hosts.source.address, String(port)]);
    const images = join(tempDir("tcp-none"), "img");
    const d = ckptOn(hosts.source, ["dump", "-t", String(target.pid), "-D", images, "--tcp-established"]);
    expect(d.stderr).toBe("");
    expect(d.code).toBe(0);
    expect(readdirSync(images).filter((n) => n.startsWith("tcp-stream-") || n === "tcp-lock.json")).toEqual([]);
    await gone([target.pid]);
    expect(lockHolders()).toEqual([]);
  });

  test("without --tcp-established the connection is refused by name, and the tree and its connection carry on", async () => {
    const { server, serverOut, client } = await conversation();
    const images = join(tempDir("tcp-refused"), "img");
    const d = ckptOn(hosts.source, ["dump", "-t", String(server), "-D", images]);
    expect(d.code).toBe(1);
    expect(d.stderr).toContain("an established TCP connection");
    expect(d.stderr).toContain("--tcp-established");
    await bothEndsWhole(client, server, serverOut);
  });

  test("dump -R --tcp-established: the connection is saved and carries on in the running tree; the lock goes", async () => {
    const { server, serverOut, client } = await conversation();
    const images = join(tempDir("tcp-R"), "img");
    const d = ckptOn(hosts.source, ["dump", "-R", "-t", String(server), "-D", images, "--tcp-established"]);
    expect(d.stderr).toBe("");
    expect(d.code).toBe(0);
    expect(readdirSync(images).filter((n) => n.startsWith("tcp-stream-"))).toHaveLength(1);
    expect(existsSync(join(images, "tcp-lock.json"))).toBe(false);
    await bothEndsWhole(client, server, serverOut);
    await waitFor("the lock's holder to end", () => lockHolders().length === 0, 5000);
  });

  // The lock is committed with the images, but the tree is killed only once
  // its lazy pages have gone: a ckpt killed in between leaves the tree running
  // (the kernel lets it go), so its sockets must leave repair mode and the
  // lock must end, as if the dump had failed.
  test("a lazy dump killed after its images are complete: the tree runs on, its connection carries on, the lock goes", async () => {
    const { server, serverOut, client } = await conversation();
    const { images, dump } = await lazyTcpDump(server, "tcp-lazy-killed");
    expect(existsSync(join(images, "tcp-lock.json"))).toBe(true);
    dump.kill("SIGKILL");
    await dump.done;
    await waitFor("the server to run free", () => runsFree(server), 10000);
    await waitFor("the lock's holder to end", () => lockHolders().length === 0, 10000);
    await bothEndsWhole(client, server, serverOut);
  });

  test("a lazy dump whose destination goes away: the tree runs on at once, its connection too, and the lock goes with the dump", async () => {
    const { server, serverOut, client } = await conversation();
    const { images, port, dump } = await lazyTcpDump(server, "tcp-lazy-gone");
    const dst = tempDir("tcp-lazy-gone-dst");
    copyImages(images, dst);
    const daemon = spawnOn(hosts.dest, ["lazy-pages", "-D", dst, "--page-server", "--address", hosts.source.address, "--port", String(port)]);
    await waitFor("the lazy-pages socket", () => existsSync(join(dst, "lazy-pages.socket")), 20000);
    daemon.kill("SIGKILL");
    const r = await dump.done;
    expect(r.code).toBe(1);
    expect(lockHolders()).toEqual([]);
    await waitFor("the server to run free", () => runsFree(server), 10000);
    await bothEndsWhole(client, server, serverOut);
  });
});

/** Network-lock holders still running (a lock lives as long as its holder: its nftables table is an owner table). */
function lockHolders(): string[] {
  const out: string[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/comm`, "utf8").trim() === "ckpt-tcp-lock" && alive(Number(name))) out.push(name);
    } catch {
      // gone
    }
  }
  return out;
}

/** Start argv in the background (not through ckpt), to wait for. */
function spawnRaw(argv: string[]): Running {
  const child = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe" });
  const done = (async () => {
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited.catch(() => -1)]);
    return { code, stdout, stderr };
  })();
  return { pid: child.pid, done, kill: (signal = "SIGKILL") => child.kill(signal) };
}

describe.skipIf(!haveCriu)("page-server interop with CRIU 4.2", () => {
  function criuLogErrors(dir: string, log: string): string {
    const path = join(dir, log);
    return existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((l) => /Error/.test(l) && !/RLIMIT_NOFILE/.test(l)).slice(0, 6).join("\n") : "";
  }

  test("ckpt dump → criu page-server, CRIU 4.2 restores it", async () => {
    const { target, out } = await onSource([memTarget(), "64", "2"]);
    const pid = target.pid;
    const [src, dst] = [join(tempDir("interop-a-src"), "img"), tempDir("interop-a-dst")];
    const port = freshPort();
    const server = await startPageServer(hosts.dest, ["page-server", "-D", dst, "--address", hosts.dest.address, "--port", String(port), "-v4", "-o", "ps.log"], port, [CRIU]);
    const d = ckptOn(hosts.source, ["dump", "-t", String(pid), "-D", src, "--page-server", "--address", hosts.dest.address, "--port", String(port)]);
    expect(d.code).toBe(0);
    const served = await server.done;
    expect(`${served.code} ${criuLogErrors(dst, "ps.log")}`).toBe("0 ");
    expect(existsSync(join(dst, `pagemap-${pid}.img`))).toBe(true);
    await gone([pid]);
    copyImages(src, dst);
    const r = Bun.spawnSync(hosts.dest.argv([CRIU, "restore", "-D", dst, "-d", "-v4", "-o", "restore.log"]), { stdout: "pipe", stderr: "pipe" });
    expect(`${r.exitCode} ${criuLogErrors(dst, "restore.log")}`).toBe("0 ");
    cleanup.push(killablePid(pid));
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("criu dump --page-server → ckpt page-server, ckpt restores it", async () => {
    const { target, out } = await onSource([memTarget(), "64", "2"]);
    const pid = target.pid;
    const [src, dst] = [tempDir("interop-b-src"), join(tempDir("interop-b-dst"), "img")];
    const port = freshPort();
    const server = await startPageServer(hosts.dest, ["-D", dst, "--address", hosts.dest.address, "--port", String(port)], port);
    const d = Bun.spawnSync(hosts.source.argv([CRIU, "dump", "-t", String(pid), "-D", src, "--page-server", "--address", hosts.dest.address, "--port", String(port), "-v4", "-o", "dump.log"]), { stdout: "pipe", stderr: "pipe" });
    expect(`${d.exitCode} ${criuLogErrors(src, "dump.log")}`).toBe("0 ");
    const served = await server.done;
    expect(served.stderr.split("\n").filter((l) => l && !l.includes("listening on"))).toEqual([]);
    expect(served.code).toBe(0);
    await restoreAtDestination(src, dst, pid, out);
  });
});
