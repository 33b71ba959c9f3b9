/**
 * Files in dumps: which fds share an open file (seed 004: genid + kcmp), and
 * every fd kind's state in the images — compared with what the workload set
 * up, and with the workload confirming afterwards that nothing was consumed.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { readImageFile } from "../src/image/image-file";
import { FdTypes, FdinfoEntrySchema, FileEntrySchema, type FileEntry } from "../src/image/gen/fdinfo_pb";
import { TaskKobjIdsEntrySchema } from "../src/image/gen/core_pb";
import { FsEntrySchema } from "../src/image/gen/fs_pb";
import { RemapFilePathEntrySchema, RemapType } from "../src/image/gen/remap-file-path_pb";
import { MemfdInodeEntrySchema } from "../src/image/gen/memfd_pb";
import { parseExactJson, runCkpt } from "./helpers/cli";
import { critFailures, entries, runsFree } from "./helpers/images";
import { DATA, FD, fdTarget } from "./helpers/fd-workloads";
import { selfCheck } from "./helpers/workloads";
import { killablePid, startReady, tempDir, type Target } from "./helpers/target";

const targets: Target[] = [];
afterAll(() => {
  for (const t of targets) t.kill();
});

interface FilesSummary {
  files: { genidCollisions: number; kcmpCalls: number; sharedFds: number; fds: number; openFiles: number };
  syscalls: Record<string, number>;
}

const text = (b: Uint8Array | undefined): string => new TextDecoder().decode(b ?? new Uint8Array(0));

describe("dump -R of a tree holding every kind of fd", async () => {
  const work = tempDir("fds");
  const r0 = await startReady([fdTarget(), work]);
  targets.push(r0.target);
  const [parent, child, tcpPort] = r0.words.map(Number) as [number, number, number];
  targets.push(killablePid(child));
  const dir = join(tempDir("fds"), "images");
  const r = runCkpt(["dump", "-t", String(parent), "-D", dir, "-R", "--json"]);
  if (r.code !== 0) throw new Error(`dump failed: ${r.stderr}`);
  const summary = parseExactJson(r.stdout) as FilesSummary;

  const files = entries(dir, "files.img", FileEntrySchema);
  const byId = new Map(files.map((f) => [f.id, f]));
  const fdTableOf = (pid: number): Map<number, { id: number; type: FdTypes; flags: number }> => {
    const [ids] = entries(dir, `ids-${pid}.img`, TaskKobjIdsEntrySchema);
    return new Map(entries(dir, `fdinfo-${ids?.filesId}.img`, FdinfoEntrySchema).map((e) => [e.fd, { id: e.id, type: e.type, flags: e.flags }]));
  };
  const pfds = fdTableOf(parent);
  const cfds = fdTableOf(child);
  const fileAt = (fd: number): FileEntry => {
    const e = byId.get(pfds.get(fd)?.id ?? -1);
    if (!e) throw new Error(`no file entry for parent fd ${fd}`);
    return e;
  };

  test("crit decodes every image", () => {
    expect(critFailures(dir)).toEqual([]);
  });

  test("dup'ed fds share one id; a second open of the file at the same offset does not", () => {
    expect(pfds.get(FD.FILE_A_DUP)?.id).toBe(pfds.get(FD.FILE_A)?.id);
    expect(pfds.get(FD.FILE_A_AGAIN)?.id).not.toBe(pfds.get(FD.FILE_A)?.id);
    expect(fileAt(FD.FILE_A).reg?.pos).toBe(100n);
    expect(fileAt(FD.FILE_A_AGAIN).reg?.pos).toBe(100n);
    expect(fileAt(FD.FILE_A).reg?.name).toBe(join(work, "a.txt"));
  });

  test("fds inherited across fork and passed with SCM_RIGHTS share ids across processes", () => {
    for (const fd of [FD.FILE_A, FD.FILE_A_AGAIN, FD.PIPE_R, FD.PIPE_W, FD.STREAM_A, FD.MEMFD, FD.EPOLL]) {
      expect(cfds.get(fd)?.id).toBe(pfds.get(fd)?.id!);
    }
    expect(cfds.get(FD.PASSED)?.id).toBe(pfds.get(FD.PASSED)?.id!);
    expect(byId.get(cfds.get(FD.CHILD_OWN)?.id ?? -1)?.reg?.name).toBe(join(work, "child.txt"));
    expect(pfds.has(FD.CHILD_OWN)).toBe(false);
  });

  test("kcmp ran only for genid collisions, a small multiple of them", () => {
    const f = summary.files;
    expect(f.genidCollisions).toBeGreaterThan(0);
    // Every kcmp(KCMP_FILE) is one the genid could not settle (the rest compare fd tables, epoll watches).
    expect(summary.syscalls.kcmp).toBeGreaterThanOrEqual(f.kcmpCalls);
    expect(f.kcmpCalls).toBeLessThanOrEqual(4 * f.genidCollisions);
    expect(f.fds).toBe(pfds.size + cfds.size);
    expect(f.openFiles).toBeLessThan(f.fds);
  });

  test("regular files: flags, close-on-exec, owner and signal", () => {
    expect(fileAt(FD.APPEND).reg?.flags! & 0o2000).toBe(0o2000);
    expect(pfds.get(FD.CLOEXEC)?.flags).toBe(1);
    expect(pfds.get(FD.FILE_A)?.flags).toBe(0);
    const fown = fileAt(FD.APPEND).reg?.fown;
    expect(fown?.pid).toBe(parent);
    expect(fown?.signum).toBe(12);
  });

  test("an unlinked file keeps its contents in a ghost file", () => {
    const ghost = fileAt(FD.GHOST);
    expect(ghost.reg?.name).toBe(join(work, "ghost.txt"));
    const [remap] = entries(dir, "remap-fpath.img", RemapFilePathEntrySchema).filter((e) => e.origId === ghost.id);
    expect(remap?.remapType).toBe(RemapType.GHOST);
    const img = readImageFile(join(dir, `ghost-file-${remap!.remapId.toString(16)}.img`));
    // As data chunks (CRIU's form for regular files): here one, the whole file.
    expect((img.entries[0]?.message as unknown as { chunks: boolean }).chunks).toBe(true);
    expect(img.entries.length).toBe(2);
    expect(text(img.entries[1]?.payload)).toBe(DATA.ghost);
  });

  test("pipe and FIFO data are saved once per pipe, byte for byte", () => {
    const rd = fileAt(FD.PIPE_R);
    const wr = fileAt(FD.PIPE_W);
    expect(rd.type).toBe(FdTypes.PIPE);
    expect(rd.pipe?.pipeId).toBe(wr.pipe?.pipeId!);
    expect(rd.id).not.toBe(wr.id);
    const data = readImageFile(join(dir, "pipes-data.img")).entries;
    expect(data.length).toBe(1);
    expect((data[0]?.message as unknown as { pipeId: number }).pipeId).toBe(rd.pipe?.pipeId!);
    expect(text(data[0]?.payload)).toBe(DATA.pipe);
    const fifo = fileAt(FD.FIFO);
    expect(fifo.type).toBe(FdTypes.FIFO);
    expect(byId.get(fifo.fifo?.regfId ?? -1)?.reg?.name).toBe(join(work, "fifo"));
    const fdata = readImageFile(join(dir, "fifo-data.img")).entries;
    expect(fdata.map((e) => text(e.payload))).toEqual([DATA.fifo]);
  });

  test("socket queues are saved per receiving socket, datagrams one by one", () => {
    const queues = readImageFile(join(dir, "sk-queues.img")).entries.map((e) => ({ idFor: (e.message as unknown as { idFor: number }).idFor, data: text(e.payload) }));
    const of = (fd: number) => queues.filter((q) => q.idFor === pfds.get(fd)?.id).map((q) => q.data);
    expect(of(FD.STREAM_B)).toEqual([DATA.streamToB]);
    expect(of(FD.STREAM_A)).toEqual([DATA.streamToA]);
    expect(of(FD.DGRAM_B)).toEqual([...DATA.dgrams]);
    const a = fileAt(FD.STREAM_A).usk;
    const b = fileAt(FD.STREAM_B).usk;
    expect(a?.peer).toBe(b?.ino!);
    expect(b?.peer).toBe(a?.ino!);
    const l = fileAt(FD.UNIX_LISTEN).usk;
    expect(l?.state).toBe(10);
    expect(l?.backlog).toBe(7);
    expect(text(l?.name).replace(/\0$/, "")).toBe(join(work, "listen.sock"));
    expect(l?.filePerms?.mode! & 0o170000).toBe(0o140000);
  });

  test("the TCP listener: address, port, backlog", () => {
    const t = fileAt(FD.TCP_LISTEN).isk;
    expect(t?.state).toBe(10);
    expect(t?.srcPort).toBe(tcpPort);
    expect(t?.srcAddr).toEqual([0x0100007f]);
    expect(t?.backlog).toBe(9);
    expect(t?.opts?.reuseaddr).toBe(true);
  });

  test("eventfd, eventpoll, signalfd and timerfd state", () => {
    expect(fileAt(FD.EVENTFD).efd?.counter).toBe(5n);
    expect(fileAt(FD.EVENTFD).efd?.flags! & 0o4000).toBe(0o4000);
    const ep = fileAt(FD.EPOLL).epfd;
    // The kernel adds EPOLLERR|EPOLLHUP (0x18) to every watch's events.
    const watches = (ep?.tfd ?? []).map((t) => [t.tfd, (t.events & ~0x18) >>> 0, t.data]).sort((x, y) => Number(x[0]) - Number(y[0]));
    expect(watches).toEqual([[FD.PIPE_R, (1 | (1 << 31)) >>> 0, 77n], [FD.EVENTFD, 1, 0x1234567890n]]);
    expect(fileAt(FD.SIGNALFD).sgfd?.sigmask).toBe((1n << 11n) | (1n << 27n));
    expect(fileAt(FD.SIGNALFD).sgfd?.flags! & 0o4000).toBe(0o4000);
    const tfd = fileAt(FD.TIMERFD).tfd;
    expect(tfd?.clockid).toBe(1);
    expect([tfd?.isec, tfd?.insec]).toEqual([1n, 500n]);
    expect(tfd?.vsec).toBeGreaterThan(990n);
    expect(tfd?.vsec).toBeLessThanOrEqual(1000n);
  });

  test("memfd: name, seals, position, and its contents without the hole", () => {
    const m = fileAt(FD.MEMFD).memfd;
    expect(m?.pos).toBe(4096n + 7n);
    const [inode] = entries(dir, "memfd.img", MemfdInodeEntrySchema).filter((e) => Number(e.inodeId) === m?.inodeId);
    expect(inode?.name).toBe("ckpt-test");
    expect(inode?.size).toBe(5n * 4096n);
    expect(inode?.seals! & 2).toBe(2); // F_SEAL_SHRINK
    const pm = readImageFile(join(dir, `pagemap-shmem-${inode?.shmid}.img`)).entries.map((e) => e.message as unknown as { pagesId?: number; vaddr?: bigint; nrPages?: bigint });
    const pagesId = pm[0]?.pagesId;
    expect(pm.slice(1).map((e) => [e.vaddr, e.nrPages])).toEqual([[0n, 2n], [3n * 4096n, 2n]]);
    const pages = readFileSync(join(dir, `pages-${pagesId}.img`));
    expect([...[0, 1, 2, 3].map((i) => pages[i * 4096])]).toEqual(["a", "b", "d", "e"].map((c) => c.charCodeAt(0)));
  });

  test("fs entries point at regular files for cwd and root", () => {
    const [fs] = entries(dir, `fs-${parent}.img`, FsEntrySchema);
    expect(byId.get(fs?.rootId ?? -1)?.reg?.name).toBe("/");
  });

  test("the tree runs on with nothing consumed, offsets and peek offsets as they were", async () => {
    expect(runsFree(parent)).toBe(true);
    expect(runsFree(child)).toBe(true);
    expect(await selfCheck(parent, r0.out)).toBe("ok");
  });

  test("the image directory holds no file crit does not know", () => {
    for (const f of readdirSync(dir)) expect(statSync(join(dir, f)).mode & 0o777).toBe(0o600);
  });
});
