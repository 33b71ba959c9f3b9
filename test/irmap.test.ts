/**
 * The irmap (inode → path): by file handle, from a cache that is checked
 * again (a stale entry is dropped and resolution goes on), by searching the
 * scan paths (with each directory read once per irmap), and a clear error
 * when no way finds the inode. Also: the cache image it writes is read back
 * by ckpt and by crit, and resolveTreeWatches finds the watches of running
 * processes.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { create } from "@bufbuild/protobuf";
import { mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_SCAN_PATHS, Irmap, IrmapError, IRMAP_CACHE_FILE, readIrmapCache, resolveTreeWatches } from "../src/dump/files/irmap";
import { IrmapCacheEntrySchema } from "../src/image/gen/fh_pb";
import { writeEncodedImage, writeImageFile } from "../src/image/image-file";
import { kind } from "../src/image/magic";
import { ProcFs } from "../src/proc/procfs";
import { fanotifyInit, fanotifyMark, inotifyAddWatch, inotifyInit1, nameToHandleAt } from "../src/sys/calls";
import { callCountsSince, close, openat, snapshotCallCounts, statx } from "../src/sys/libc";
import { AT, FAN, FAN_MARK, IN, O } from "../src/sys/nr";
import { encodeKernelDev, type FileHandle } from "../src/sys/structs";
import { parseExactJson } from "./helpers/cli";
import { tempDir } from "./helpers/target";

const NOWHERE = ["/nonexistent-ckpt-irmap"];
const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

function devIno(path: string): { sdev: number; ino: bigint; name: string } {
  const st = statx(AT.FDCWD, path, AT.SYMLINK_NOFOLLOW);
  return { sdev: encodeKernelDev(st.devMajor, st.devMinor), ino: st.ino, name: `${st.devMajor}:${st.devMinor}` };
}

function handleOf(path: string): FileHandle {
  return nameToHandleAt(AT.FDCWD, path).handle;
}

function writeCache(dir: string, entries: { dev: number; inode: bigint; path: string }[]): void {
  mkdirSync(dir, { recursive: true });
  writeImageFile(join(dir, IRMAP_CACHE_FILE), kind("IRMAP_CACHE"), IrmapCacheEntrySchema, entries.map((e) => create(IrmapCacheEntrySchema, e)));
}

describe("Irmap", () => {
  test("by file handle: a file and a directory, each answer checked and kept", () => {
    const dir = tempDir("irmap-handle");
    const file = join(dir, "f");
    writeFileSync(file, "x");
    const irmap = new Irmap({ scanPaths: NOWHERE });
    try {
      for (const path of [file, dir]) {
        const { sdev, ino } = devIno(path);
        expect(irmap.resolve(sdev, ino, handleOf(path))).toBe(path);
      }
      expect(irmap.counters).toEqual({ cacheHits: 0, stale: 0, byHandle: 2, byScan: 0, failures: 0 });
      // The second time it is an answer of this irmap, checked again.
      const { sdev, ino } = devIno(file);
      expect(irmap.resolve(sdev, ino, null)).toBe(file);
      expect(irmap.counters.cacheHits).toBe(1);
      expect(irmap.ms).toBeGreaterThan(0);
    } finally {
      irmap.close();
    }
  });

  test("a cache entry is used while it holds; a stale one is counted, dropped, and resolution goes on", () => {
    const dir = tempDir("irmap-cache");
    const a = join(dir, "a");
    const b = join(dir, "b");
    writeFileSync(a, "x");
    const { sdev, ino } = devIno(a);
    const handle = handleOf(a);
    const cacheDir = join(dir, "cache");
    writeCache(cacheDir, [{ dev: sdev, inode: ino, path: a }]);

    // A missing directory is passed over; the first one with a cache is used.
    const first = new Irmap({ cacheDirs: [join(dir, "missing"), cacheDir, join(dir, "later")], scanPaths: NOWHERE });
    expect(first.resolve(sdev, ino, null)).toBe(a);
    expect(first.counters).toMatchObject({ cacheHits: 1, stale: 0, byHandle: 0, byScan: 0 });
    expect(first.loadedFrom).toBe(join(cacheDir, IRMAP_CACHE_FILE));
    first.close();

    // Moved away, and another file took its name: the cached path leads elsewhere now.
    renameSync(a, b);
    writeFileSync(a, "another");
    const second = new Irmap({ cacheDirs: [cacheDir], scanPaths: NOWHERE });
    expect(second.resolve(sdev, ino, handle)).toBe(b);
    expect(second.counters).toMatchObject({ cacheHits: 0, stale: 1, byHandle: 1, failures: 0 });
    const out = join(dir, "out");
    mkdirSync(out);
    writeEncodedImage(join(out, IRMAP_CACHE_FILE), second.cacheImage());
    expect(readIrmapCache(join(out, IRMAP_CACHE_FILE)).map((e) => [e.dev, e.inode, e.path])).toEqual([[sdev, ino, b]]);
    expect(devIno(a).ino).not.toBe(ino);
    second.close();

    // Only the first cache found counts, even if a later one would have the answer.
    const other = join(dir, "other");
    writeCache(other, []);
    const third = new Irmap({ cacheDirs: [other, out], scanPaths: NOWHERE });
    expect(() => third.resolve(sdev, ino, null)).toThrow(IrmapError);
    expect(third.loadedFrom).toBe(join(other, IRMAP_CACHE_FILE));
    third.close();
  });

  test("a cached path on another device with the very inode number is not the inode", () => {
    const dir = tempDir("irmap-dev");
    const elsewhere = "/dev/shm";
    const shmFile = join(elsewhere, `ckpt-irmap-${process.pid}`);
    writeFileSync(shmFile, "x");
    cleanups.push(() => rmSync(shmFile, { force: true }));
    const shm = devIno(shmFile);
    const here = devIno(dir);
    expect(shm.sdev).not.toBe(here.sdev);
    writeCache(dir, [{ dev: here.sdev, inode: shm.ino, path: shmFile }]);
    const irmap = new Irmap({ cacheDirs: [dir], scanPaths: NOWHERE });
    expect(() => irmap.resolve(here.sdev, shm.ino, null)).toThrow(IrmapError);
    expect(irmap.counters).toMatchObject({ cacheHits: 0, stale: 1, failures: 1 });
    irmap.close();
  });

  test("without a handle, the scan paths are searched depth-first, each directory read once however many searches", () => {
    const root = tempDir("irmap-scan");
    for (let i = 0; i < 20; i++) mkdirSync(join(root, `d${i}`, "x", "y"), { recursive: true });
    const target = join(root, "d13", "x", "y", "watched");
    writeFileSync(target, "x");
    const { sdev, ino } = devIno(target);
    const irmap = new Irmap({ scanPaths: ["/nonexistent-ckpt-first", root] });
    try {
      expect(irmap.resolve(sdev, ino, null)).toBe(target);
      expect(irmap.counters).toMatchObject({ byScan: 1, byHandle: 0 });

      // Misses read the whole tree the first time, and nothing after that.
      let before = snapshotCallCounts();
      expect(() => irmap.resolve(sdev, 123456789n, null)).toThrow(IrmapError);
      expect(callCountsSince(before).getdents64 ?? 0).toBeGreaterThan(0);
      before = snapshotCallCounts();
      for (let i = 0; i < 1000; i++) expect(() => irmap.resolve(sdev, 200000000n + BigInt(i), null)).toThrow(IrmapError);
      expect(callCountsSince(before).getdents64 ?? 0).toBe(0);
      expect(irmap.counters.failures).toBe(1001);
    } finally {
      irmap.close();
    }
  });

  test("a handle whose path no longer reaches the file (mounted over) gives way to the scan, which finds it through a scan path", () => {
    const root = tempDir("irmap-cover");
    const cover = join(root, "cover");
    mkdirSync(cover);
    const file = join(cover, "f");
    writeFileSync(file, "x");
    const { sdev, ino } = devIno(file);
    const handle = handleOf(file);
    // ckpt's own fd on the directory keeps a way to it once it is hidden.
    const held = openat(AT.FDCWD, cover, O.RDONLY | O.DIRECTORY | O.CLOEXEC);
    cleanups.push(() => close(held));
    const m = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=1m", "ckpt-irmap", cover], { stderr: "pipe" });
    expect(m.exitCode).toBe(0);
    cleanups.push(() => Bun.spawnSync(["umount", "-l", cover]));
    // The old path leads to a file again, but to another one, on the tmpfs.
    writeFileSync(file, "not the watched one");

    const hint = `/proc/${process.pid}/fd/${held}`;
    const irmap = new Irmap({ scanPaths: [hint] });
    try {
      expect(irmap.resolve(sdev, ino, handle)).toBe(`${hint}/f`);
      expect(irmap.counters).toMatchObject({ byHandle: 0, byScan: 1, failures: 0 });
    } finally {
      irmap.close();
    }
  });

  test("an inode nowhere to be found: an IrmapError naming device, inode and where ckpt looked", () => {
    const empty = tempDir("irmap-none");
    const { sdev, name } = devIno(empty);
    const irmap = new Irmap({ scanPaths: [empty] });
    try {
      let e: unknown;
      try {
        irmap.resolve(sdev, 987654321n, { type: 1, bytes: new Uint8Array(8).fill(0xff) });
      } catch (caught) {
        e = caught;
      }
      expect(e).toBeInstanceOf(IrmapError);
      const msg = (e as Error).message;
      expect(msg).toContain(`inode 987654321 on device ${name}`);
      expect(msg).toContain("open_by_handle_at");
      expect(msg).toContain(`not found under ${empty}`);
      expect(() => irmap.resolve(sdev, 987654322n, null)).toThrow(/no file handle/);
      expect(irmap.counters.failures).toBe(2);
    } finally {
      irmap.close();
    }
  });

  test("with no scan paths given, the defaults are used", () => {
    const irmap = new Irmap({ scanPaths: [] });
    expect(irmap.scanPaths).toEqual(DEFAULT_SCAN_PATHS);
    irmap.close();
  });
});

describe("resolveTreeWatches and the irmap-cache image", () => {
  test("every inotify watch and fanotify inode mark of the processes is resolved; the cache image holds them and crit reads it", () => {
    const dir = tempDir("irmap-tree");
    const files = ["w1", "w2", "marked"].map((n) => join(dir, n));
    for (const f of files) writeFileSync(f, "x");
    const proc = new ProcFs();
    // Whatever watches this test process held already are counted before.
    const baseline = resolveTreeWatches(proc, [process.pid], new Irmap({ proc, scanPaths: NOWHERE }));
    const ify = inotifyInit1(IN.CLOEXEC);
    const fan = fanotifyInit(FAN.CLOEXEC, O.RDONLY);
    try {
      inotifyAddWatch(ify, dir, 0x100);
      inotifyAddWatch(ify, files[0]!, 0x2);
      inotifyAddWatch(ify, files[1]!, 0x2);
      fanotifyMark(fan, FAN_MARK.ADD, 0x8n, files[2]!);
      const irmap = new Irmap({ proc, scanPaths: NOWHERE });
      // A pid that does not exist is passed over.
      expect(resolveTreeWatches(proc, [process.pid, 999999999], irmap)).toBe(baseline + 4);
      expect(irmap.counters.byHandle).toBe(baseline + 4);

      const out = tempDir("irmap-image");
      writeEncodedImage(join(out, IRMAP_CACHE_FILE), irmap.cacheImage());
      const ours = readIrmapCache(join(out, IRMAP_CACHE_FILE));
      const paths = new Set(ours.map((e) => e.path));
      for (const p of [dir, ...files]) expect(paths.has(p)).toBe(true);
      for (const e of ours) expect(devIno(e.path)).toMatchObject({ sdev: e.dev, ino: e.inode });

      // Resolved again from that image, with no handle: all cache hits.
      const again = new Irmap({ cacheDirs: [out], scanPaths: NOWHERE });
      for (const e of ours) expect(again.resolve(e.dev, e.inode, null)).toBe(e.path);
      expect(again.counters.cacheHits).toBe(ours.length);
      again.close();

      if (Bun.which("crit")) {
        const r = Bun.spawnSync(["crit", "decode", "-i", join(out, IRMAP_CACHE_FILE)], { stdout: "pipe", stderr: "pipe" });
        expect(r.stderr.toString()).toBe("");
        expect(r.exitCode).toBe(0);
        const decoded = parseExactJson(r.stdout.toString()) as { magic: string; entries: { dev: number; inode: number | string; path: string }[] };
        expect(decoded.magic).toBe("IRMAP_CACHE");
        expect(decoded.entries.map((e) => [e.dev, String(e.inode), e.path])).toEqual(ours.map((e) => [e.dev, String(e.inode), e.path]));
      }
    } finally {
      close(ify);
      close(fan);
      proc.close();
    }
  });
});
