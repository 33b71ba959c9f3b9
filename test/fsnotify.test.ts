/**
 * inotify watches and fanotify marks through dump and restore: a workload
 * holds an inotify fd (watches on a directory, files and the directory they
 * are in, with a gap in the wds and differing masks) and a fanotify fd (two
 * inode marks, one only ignoring, and a mount mark on a tmpfs of its own).
 * The images must hold the right wds, masks, inodes, handles and paths, and
 * a restored workload must get its events on the right wds.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { join } from "node:path";
import { FdTypes, FileEntrySchema } from "../src/image/gen/fdinfo_pb";
import { MarkType, type FanotifyFileEntry, type InotifyFileEntry } from "../src/image/gen/fsnotify_pb";
import { StatsEntrySchema } from "../src/image/gen/stats_pb";
import { parseFdInfo } from "../src/proc/fdinfo";
import { parseMountInfo } from "../src/proc/mountinfo";
import { nameToHandleAt } from "../src/sys/calls";
import { statx } from "../src/sys/libc";
import { AT, O } from "../src/sys/nr";
import { encodeKernelDev } from "../src/sys/structs";
import { parseExactJson, runCkpt } from "./helpers/cli";
import { critFailures, entries, runsFree } from "./helpers/images";
import { FAN_BITS, FSN, fsnotifyTarget, IN_BITS } from "./helpers/fsnotify-workloads";
import { alive, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { selfCheck } from "./helpers/workloads";

const targets: Target[] = [];
const mounts: string[] = [];
afterAll(() => {
  for (const t of targets) t.kill();
  for (const m of mounts) Bun.spawnSync(["umount", "-l", m]);
});

/** A tmpfs of the test's own at `at`, so the mount mark sees no one else's files. */
function mountTmpfs(at: string): void {
  mkdirSync(at);
  const r = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "ckpt-fsnotify", at], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`mount tmpfs on ${at}: ${r.stderr.toString()}`);
  mounts.push(at);
}

interface Workload {
  pid: number;
  out: string;
  dir: string;
  mnt: string;
  mdir: string;
}

async function start(): Promise<Workload> {
  const root = tempDir("fsnotify");
  const dir = join(root, "watched");
  mkdirSync(dir);
  const mnt = join(root, "mnt");
  mountTmpfs(mnt);
  const mdir = join(mnt, "files");
  mkdirSync(mdir);
  const r = await startReady([fsnotifyTarget(), dir, mnt, mdir]);
  targets.push(r.target);
  return { pid: r.target.pid, out: r.out, dir, mnt, mdir };
}


/** Device (kernel-internal form, as fdinfo and the images have it) and inode of a path. */
function devIno(path: string): { sdev: number; ino: bigint } {
  const st = statx(AT.FDCWD, path, AT.SYMLINK_NOFOLLOW);
  return { sdev: encodeKernelDev(st.devMajor, st.devMinor), ino: st.ino };
}

/** What each watch of the workload is on, and its mask as fdinfo reports it (IN_ONLYDIR is not kept). */
function expectedWatches(w: Workload): Map<number, { path: string; mask: number }> {
  return new Map([
    [FSN.WD_SUB, { path: join(w.dir, "sub"), mask: IN_BITS.CREATE | IN_BITS.DELETE }],
    [FSN.WD_A, { path: join(w.dir, "a.txt"), mask: IN_BITS.MODIFY }],
    [FSN.WD_B, { path: join(w.dir, "b.txt"), mask: (IN_BITS.CLOSE_WRITE | IN_BITS.ONESHOT) >>> 0 }],
    [FSN.WD_DIR, { path: w.dir, mask: IN_BITS.MOVED_TO }],
  ]);
}

function notifyEntries(images: string): { ify: InotifyFileEntry; ffy: FanotifyFileEntry } {
  const files = entries(images, "files.img", FileEntrySchema);
  const ify = files.find((f) => f.type === FdTypes.INOTIFY)?.ify;
  const ffy = files.find((f) => f.type === FdTypes.FANOTIFY)?.ffy;
  if (!ify || !ffy) throw new Error("files.img lacks the inotify or the fanotify entry");
  return { ify, ffy };
}

async function dumpAndKill(w: Workload, images: string): Promise<void> {
  const r = runCkpt(["dump", "-t", String(w.pid), "-D", images]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  await waitFor("the dumped workload to be gone", () => !existsSync(`/proc/${w.pid}`), 10000);
}

describe("inotify and fanotify", () => {
  test("dump -R: every watch and mark with its wd, mask, inode, handle and path; crit reads it; the workload runs on undisturbed", async () => {
    const w = await start();
    const images = join(tempDir("fsnotify-img"), "img");
    const r = runCkpt(["dump", "-t", String(w.pid), "-D", images, "-R", "--irmap-scan-path", "/nonexistent-ckpt-a", "--irmap-scan-path=/nonexistent-ckpt-b"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const { ify, ffy } = notifyEntries(images);

    const want = expectedWatches(w);
    expect(ify.wd.map((x) => x.wd)).toEqual([...want.keys()]);
    expect(ify.flags & O.NONBLOCK).toBe(O.NONBLOCK);
    for (const x of ify.wd) {
      const { path, mask } = want.get(x.wd)!;
      const { sdev, ino } = devIno(path);
      expect({ wd: x.wd, path: x.fHandle?.path, mask: x.mask >>> 0, ino: x.iIno, sdev: x.sDev }).toEqual({ wd: x.wd, path, mask, ino, sdev });
      // The kernel's handle for the inode, in 16 little-endian words.
      const { handle } = nameToHandleAt(AT.FDCWD, path);
      expect(x.fHandle?.type).toBe(handle.type);
      expect(x.fHandle?.bytes).toBe(handle.bytes.length);
      expect(x.fHandle?.handle.length).toBe(16);
      const words = new BigUint64Array(16);
      new Uint8Array(words.buffer).set(handle.bytes);
      expect(x.fHandle?.handle).toEqual([...words]);
    }

    expect(ffy.faflags).toBe(FAN_BITS.CLOEXEC | FAN_BITS.NONBLOCK);
    expect(ffy.evflags & 3).toBe(O.RDONLY);
    expect(ffy.mark.length).toBe(3);
    const inodeMarks = new Map(ffy.mark.filter((m) => m.type === MarkType.INODE).map((m) => [m.ie?.fHandle?.path, m]));
    const c = inodeMarks.get(join(w.dir, "c.txt"));
    expect(c).toBeDefined();
    expect([c?.mask, c?.ignoredMask, c?.mflags]).toEqual([FAN_BITS.CLOSE_WRITE, 0, 0]);
    expect([c?.sDev, c?.ie?.iIno]).toEqual(Object.values(devIno(join(w.dir, "c.txt"))));
    const quiet = inodeMarks.get(join(w.mdir, "quiet.txt"));
    expect(quiet).toBeDefined();
    expect([quiet?.mask, quiet?.ignoredMask, quiet?.mflags]).toEqual([0, FAN_BITS.CLOSE_WRITE, FAN_BITS.MARK_IGNORED_SURV_MODIFY]);
    expect([quiet?.sDev, quiet?.ie?.iIno]).toEqual(Object.values(devIno(join(w.mdir, "quiet.txt"))));
    const mount = ffy.mark.find((m) => m.type === MarkType.MOUNT);
    const mountInfo = parseMountInfo(readFileSync(`/proc/${w.pid}/mountinfo`, "utf8")).find((m) => m.mountPoint === w.mnt);
    expect(mount?.me).toMatchObject({ path: w.mnt, mntId: mountInfo?.mntId });
    expect(mount?.mask).toBe(FAN_BITS.CLOSE_WRITE);
    expect(mount?.sDev).toBe(devIno(w.mnt).sdev);

    const [stats] = entries(images, "stats-dump", StatsEntrySchema);
    expect(stats?.dump?.irmapResolve).toBeGreaterThanOrEqual(0);
    expect(critFailures(images)).toEqual([]);
    if (Bun.which("crit")) {
      // crit sees the same watches: CRIU's field names, our values.
      const decoded = parseExactJson(Bun.spawnSync(["crit", "decode", "-i", join(images, "files.img")]).stdout.toString()) as { entries: { type: string; ify?: { wd: { wd: number; f_handle: { path: string } }[] } }[] };
      const critIfy = decoded.entries.find((e) => e.type === "INOTIFY")?.ify;
      expect(critIfy?.wd.map((x) => [x.wd, x.f_handle.path])).toEqual(ify.wd.map((x) => [x.wd, x.fHandle?.path ?? ""]));
    }

    // The dump queued no event (reading the fds and finding paths is silent) and changed no watch.
    expect(runsFree(w.pid)).toBe(true);
    expect(await selfCheck(w.pid, w.out)).toBe("ok");
  });

  test("dump, kill, restore: the same wds, masks and marks, and events arrive where the workload expects them", async () => {
    const w = await start();
    const images = join(tempDir("fsnotify-img"), "img");
    const before = parseFdInfo(readFileSync(`/proc/${w.pid}/fdinfo/${FSN.INOTIFY_FD}`, "utf8"));
    const fanBefore = parseFdInfo(readFileSync(`/proc/${w.pid}/fdinfo/${FSN.FANOTIFY_FD}`, "utf8")).fanotify;
    await dumpAndKill(w, images);

    const r = runCkpt(["restore", "-D", images, "-d"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(alive(w.pid)).toBe(true);
    const after = parseFdInfo(readFileSync(`/proc/${w.pid}/fdinfo/${FSN.INOTIFY_FD}`, "utf8"));
    const watch = (i: typeof before): unknown[] => i.inotify.map((x) => [x.wd, x.mask, x.ino, x.sdev]).sort();
    expect(watch(after)).toEqual(watch(before));
    const fanAfter = parseFdInfo(readFileSync(`/proc/${w.pid}/fdinfo/${FSN.FANOTIFY_FD}`, "utf8")).fanotify;
    const marks = (f: typeof fanBefore): unknown[] => (f?.marks ?? []).map((m) => JSON.stringify(m, (_, v: unknown) => (typeof v === "bigint" ? String(v) : v instanceof Uint8Array ? [...v] : v))).sort();
    expect(fanAfter?.flags).toBe(fanBefore?.flags ?? -1);
    expect(fanAfter?.eventFlags).toBe(fanBefore?.eventFlags ?? -1);
    expect(marks(fanAfter)).toEqual(marks(fanBefore));
    expect(await selfCheck(w.pid, w.out)).toBe("ok");
  });

  test("a watched path that is gone fails the restore by name, and leaves nothing; back in place, the restore works", async () => {
    const w = await start();
    const images = join(tempDir("fsnotify-img"), "img");
    await dumpAndKill(w, images);
    const a = join(w.dir, "a.txt");
    renameSync(a, `${a}.away`);
    const r = runCkpt(["restore", "-D", images, "-d"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`file id \\d+ \\(inotify with 4 watch\\(es\\)\\): watch ${FSN.WD_A}: ${a.replaceAll(".", "\\.")} is gone`));
    await waitFor("the half-restored workload to be gone", () => !existsSync(`/proc/${w.pid}`), 5000);
    renameSync(`${a}.away`, a);
    const again = runCkpt(["restore", "-D", images, "-d"]);
    expect(again.stderr).toBe("");
    expect(again.code).toBe(0);
    expect(await selfCheck(w.pid, w.out)).toBe("ok");
  });
});

describe("fanotify fdinfo", () => {
  test("the group line and every kind of mark line are read", () => {
    const info = parseFdInfo([
      "pos:\t0", "flags:\t04002", "mnt_id:\t17", "ino:\t1039",
      "fanotify flags:3 event-flags:8000",
      "fanotify sdev:1b mflags:0 mask:8 ignored_mask:0",
      "fanotify mnt_id:1e mflags:0 mask:8 ignored_mask:0",
      "fanotify ino:220569 sdev:fe00000 mflags:40 mask:a ignored_mask:20 fhandle-bytes:8 fhandle-type:1 f_handle:69052200a45a7c5e",
      "fanotify mnt_ns:4026531841 mflags:0 mask:1000000 ignored_mask:0",
      "fanotify userns:4026531837 mflags:0 mask:1 ignored_mask:0",
      "",
    ].join("\n"));
    expect(info.fanotify?.flags).toBe(3);
    expect(info.fanotify?.eventFlags).toBe(0x8000);
    expect(info.fanotify?.marks).toEqual([
      { type: "filesystem", sdev: 0x1b, mflags: 0, mask: 8, ignoredMask: 0 },
      { type: "mount", mntId: 0x1e, mflags: 0, mask: 8, ignoredMask: 0 },
      {
        type: "inode", ino: 0x220569n, sdev: 0xfe00000, mflags: 0x40, mask: 0xa, ignoredMask: 0x20,
        fhandleBytes: 8, fhandleType: 1, fhandle: Uint8Array.from([0x69, 0x05, 0x22, 0x00, 0xa4, 0x5a, 0x7c, 0x5e]),
      },
      { type: "mntns", ns: "4026531841", mflags: 0, mask: 0x1000000, ignoredMask: 0 },
      { type: "unknown", line: "fanotify userns:4026531837 mflags:0 mask:1 ignored_mask:0", mflags: 0, mask: 1, ignoredMask: 0 },
    ]);
    expect(parseFdInfo("pos:\t0\nflags:\t02\n").fanotify).toBeUndefined();
  });
});
