/**
 * The file half of restore: a tree holding every fd kind is dumped (and
 * killed, so its socket names and TCP port are free again), and its files
 * are re-created in this test process with OpenedFiles. Each ckpt-side fd is
 * checked against what the workload had set up: positions and flags, shared
 * ids, ghost contents, pipe, FIFO and socket data in order, sockets really
 * connected, listeners accepting, eventfd, epoll, signalfd, timerfd and memfd
 * state. Failures must name the file and leave no fd and no temporary file.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { create, isFieldSet } from "@bufbuild/protobuf";
import { ImageEncoder } from "../src/image/encode";
import { TaskKobjIdsEntrySchema, type TaskKobjIdsEntry } from "../src/image/gen/core_pb";
import { FdTypes, FdinfoEntrySchema, FileEntrySchema, type FileEntry } from "../src/image/gen/fdinfo_pb";
import { FownEntrySchema } from "../src/image/gen/fown_pb";
import { RegFileEntrySchema } from "../src/image/gen/regfile_pb";
import { writeEncodedImage } from "../src/image/image-file";
import { kind } from "../src/image/magic";
import { parseFdInfo } from "../src/proc/fdinfo";
import { inetSockets, unixSocket } from "../src/proc/sock-diag";
import { ImageSet } from "../src/image/image-set";
import { OpenedFiles } from "../src/restore/files/open-files";
import { fcntl, fcntlInto, getresuid, timerfdGettime } from "../src/sys/calls";
import { close, fstat, preadInto, readInto, writeAll } from "../src/sys/libc";
import { F, F_SEAL, O } from "../src/sys/nr";
import { accept4, AF, bind, connect, decodeSockaddr, getpeername, getsockname, getsockoptInt, IPPROTO, listen, MSG, recvfrom, sendto, setsockoptInt, SO, SOCK, sockaddrIn, sockaddrIn6, sockaddrUn, socket, SOL, TCP_OPT } from "../src/sys/socket";
import { runCkpt } from "./helpers/cli";
import { entries } from "./helpers/images";
import { DATA, FD, fdTarget, oddFdTarget } from "./helpers/fd-workloads";
import { buildC, killablePid, startReady, tempDir, waitFor, type Target } from "./helpers/target";

/** What `ckpt restore` passes when no option says otherwise. */
const FILE_DEFAULTS = { fileValidation: "buildid", skipFileRwxCheck: false } as const;

const targets: Target[] = [];
afterAll(() => {
  for (const t of targets) t.kill();
});

const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

/** fd numbers open in this process now (without the one listing them). */
function openFds(): Set<number> {
  const listing = `/proc/${process.pid}/fd`;
  return new Set(readdirSync("/proc/self/fd").map(Number).filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) !== listing;
    } catch {
      return false; // the listing's own fd, closed by now
    }
  }));
}

/**
 * fds open now that were not open at `before`. (Counting all fds would not
 * do: the runtime closes fds of its own, such as finished spawns' pipes, at
 * times of its choosing.)
 */
function newFds(before: ReadonlySet<number>): number[] {
  return [...openFds()].filter((fd) => !before.has(fd));
}

/** Files whose names end in ".ghost" under `dir`: temporary ghost files left behind. */
function ghostsIn(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.endsWith(".ghost"));
}

/** One non-blocking receive: the bytes, or null when nothing is queued. */
function receive(fd: number): string | null {
  const buf = new Uint8Array(4096);
  try {
    return text(buf.subarray(0, recvfrom(fd, buf, MSG.DONTWAIT)));
  } catch (e) {
    if ((e as { code?: string }).code === "EAGAIN") return null;
    throw e;
  }
}

/** Connect a new socket to `addr`, accept it on `listener` and send through: what the accepted end reads. */
function acceptedThrough(listener: number, family: number, addr: Uint8Array): string | null {
  const c = socket(family, SOCK.STREAM | SOCK.CLOEXEC);
  try {
    connect(c, addr);
    const s = accept4(listener, SOCK.CLOEXEC | SOCK.NONBLOCK);
    try {
      sendto(c, bytes("hi"));
      return receive(s);
    } finally {
      close(s);
    }
  } finally {
    close(c);
  }
}

function pread(fd: number, len: number, at: number): string {
  const buf = new Uint8Array(len);
  return text(buf.subarray(0, preadInto(fd, buf, at)));
}

function position(fd: number): bigint {
  return BigInt(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8").match(/^pos:\s+(\d+)/m)?.[1] ?? "-1");
}

function fdinfo(fd: number) {
  return parseFdInfo(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
}

/** Start a workload, dump it with the CLI in kill mode and wait until it is gone. */
async function dumpKilled(argv: string[], extra: string[] = []): Promise<{ dir: string; words: string[] }> {
  const r0 = await startReady(argv);
  targets.push(r0.target);
  const pids = r0.words.map(Number).filter((n) => n > 0);
  for (const p of pids) targets.push(killablePid(p));
  const dir = join(tempDir("rfiles"), "images");
  const r = runCkpt(["dump", "-t", String(pids[0]), "-D", dir, ...extra]);
  if (r.code !== 0) throw new Error(`dump failed: ${r.stderr}`);
  await waitFor("the dumped tree to be gone", () => gone(pids[0]!), 10000);
  return { dir, words: r0.words };
}

/** Whether a process has exited (a zombie whose parent has not reaped it counts). */
function gone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return true;
  }
}

/** fd number → file id of a dumped process. */
function fdTable(dir: string, pid: number): Map<number, number> {
  const [ids] = entries(dir, `ids-${pid}.img`, TaskKobjIdsEntrySchema) as TaskKobjIdsEntry[];
  return new Map(entries(dir, `fdinfo-${ids?.filesId}.img`, FdinfoEntrySchema).map((e) => [e.fd, e.id]));
}

/**
 * The engine re-creates the processes (with their pids) before the files, so
 * F_SETOWN owners exist. Here the dumped owner is gone: point its files at
 * this test process instead.
 */
function pointOwnersAt(dir: string, from: number, to: number): void {
  const files = entries(dir, "files.img", FileEntrySchema);
  const enc = new ImageEncoder(kind("FILES"));
  for (const f of files) {
    for (const fown of [f.reg?.fown, f.pipe?.fown, f.efd?.fown, f.epfd?.fown, f.sgfd?.fown, f.tfd?.fown, f.usk?.fown, f.isk?.fown, f.memfd?.fown]) {
      if (fown?.pid === from) fown.pid = to;
    }
    enc.add(FileEntrySchema, f);
  }
  writeEncodedImage(join(dir, "files.img"), enc);
}

/** An image set of only `files` (plus the dump's inventory), for refusals that need no workload. */
function syntheticSet(inventoryFrom: string, files: FileEntry[]): string {
  const dir = join(tempDir("rfiles-synth"), "images");
  mkdirSync(dir);
  copyFileSync(join(inventoryFrom, "inventory.img"), join(dir, "inventory.img"));
  const enc = new ImageEncoder(kind("FILES"));
  for (const f of files) enc.add(FileEntrySchema, f);
  writeEncodedImage(join(dir, "files.img"), enc);
  return dir;
}

function devNull(id: number): FileEntry {
  return create(FileEntrySchema, {
    type: FdTypes.REG, id,
    reg: create(RegFileEntrySchema, { id, flags: O.RDWR, pos: 0n, name: "/dev/null", fown: create(FownEntrySchema, { uid: 0, euid: 0, signum: 0, pidType: 0, pid: 0 }) }),
  });
}

describe("the files of a dumped tree holding every fd kind", async () => {
  const work = tempDir("rfiles-work");
  const { dir, words } = await dumpKilled([fdTarget(), work]);
  const [parent, child, tcpPort] = words.map(Number) as [number, number, number];
  pointOwnersAt(dir, parent, process.pid);
  const pfds = fdTable(dir, parent);
  const cfds = fdTable(dir, child);
  const idOf = (fd: number): number => {
    const id = pfds.get(fd);
    if (id === undefined) throw new Error(`the parent had no fd ${fd}`);
    return id;
  };

  // Opened when this block's tests start, so the fd counts see no other block's files.
  let before = new Set<number>();
  let files!: OpenedFiles;
  beforeAll(() => {
    before = openFds();
    files = OpenedFiles.open(ImageSet.open(dir), { ...FILE_DEFAULTS, shellJob: false });
    // The engine sets owners once the tree exists; here the owners' pids are those of the killed workload.
    files.applyOwners();
  });
  const at = (fd: number): number => files.fd(idOf(fd));

  test("every fd of both processes has a ckpt fd; shared ids give the same fd, distinct opens differ", () => {
    for (const id of [...pfds.values(), ...cfds.values()]) expect(files.fd(id)).toBeGreaterThanOrEqual(0);
    expect(at(FD.FILE_A_DUP)).toBe(at(FD.FILE_A));
    expect(files.fd(cfds.get(FD.PASSED)!)).toBe(at(FD.PASSED));
    expect(files.fd(cfds.get(FD.FILE_A)!)).toBe(at(FD.FILE_A));
    expect(at(FD.FILE_A_AGAIN)).not.toBe(at(FD.FILE_A));
    expect(readlinkSync(`/proc/self/fd/${files.fd(cfds.get(FD.CHILD_OWN)!)}`)).toBe(join(work, "child.txt"));
    expect(() => files.fd(999999)).toThrow(/id 999999/);
    const held = files.ids().map((id) => files.fd(id));
    expect(new Set(held).size).toBe(files.count);
    const open = openFds();
    expect(held.filter((fd) => !open.has(fd))).toEqual([]);
  });

  test("regular files: path, position, access mode, O_APPEND, owner and signal", () => {
    for (const fd of [FD.FILE_A, FD.FILE_A_AGAIN]) {
      expect(readlinkSync(`/proc/self/fd/${at(fd)}`)).toBe(join(work, "a.txt"));
      expect(position(at(fd))).toBe(100n);
    }
    expect(fcntl(at(FD.FILE_A), F.GETFL) & 3).toBe(O.RDWR);
    expect(fcntl(at(FD.FILE_A_AGAIN), F.GETFL) & 3).toBe(O.RDONLY);
    expect(pread(at(FD.FILE_A), 10, 100)).toBe(DATA.fileA.slice(100, 110));
    const append = at(FD.APPEND);
    expect(fcntl(append, F.GETFL) & (3 | O.APPEND)).toBe(O.WRONLY | O.APPEND);
    const owner = new Int32Array(2);
    fcntlInto(append, F.GETOWN_EX, owner);
    expect([...owner]).toEqual([1, process.pid]); // F_OWNER_PID
    expect(fcntl(append, F.GETSIG)).toBe(12);
  });

  test("the unlinked file is back with its contents and mode, under a temporary name beside it", () => {
    const fd = at(FD.GHOST);
    expect(readlinkSync(`/proc/self/fd/${fd}`)).toMatch(new RegExp(`^${join(work, "ghost.txt")}\\.cr\\.[0-9a-f]+\\.ghost$`));
    expect(pread(fd, 4096, 0)).toBe(DATA.ghost);
    const st = fstat(fd);
    expect(st.size).toBe(BigInt(DATA.ghost.length));
    expect(st.mode & 0o7777).toBe(0o600);
    expect(fcntl(fd, F.GETFL) & 3).toBe(O.RDWR);
    expect(position(fd)).toBe(BigInt(DATA.ghost.length));
  });

  test("the pipe: one pipe for both ends, its unread data first", () => {
    const [r, w] = [at(FD.PIPE_R), at(FD.PIPE_W)];
    expect(fcntl(r, F.GETFL) & 3).toBe(O.RDONLY);
    expect(fcntl(w, F.GETFL) & 3).toBe(O.WRONLY);
    writeAll(w, bytes("+more"));
    const buf = new Uint8Array(256);
    expect(text(buf.subarray(0, readInto(r, buf)))).toBe(`${DATA.pipe}+more`);
  });

  test("the FIFO: its path, flags and unread data", () => {
    const fd = at(FD.FIFO);
    expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe(join(work, "fifo"));
    expect(fcntl(fd, F.GETFL) & (3 | O.NONBLOCK)).toBe(O.RDWR | O.NONBLOCK);
    const buf = new Uint8Array(256);
    expect(text(buf.subarray(0, readInto(fd, buf)))).toBe(DATA.fifo);
  });

  test("the stream pair: each end reads its own queue, then what the other end writes", () => {
    const [a, b] = [at(FD.STREAM_A), at(FD.STREAM_B)];
    expect(receive(b)).toBe(DATA.streamToB);
    expect(receive(a)).toBe(DATA.streamToA);
    expect(receive(a)).toBeNull();
    sendto(a, bytes("ping"));
    expect(receive(b)).toBe("ping");
    sendto(b, bytes("pong"));
    expect(receive(a)).toBe("pong");
  });

  test("the datagram pair: queued datagrams one by one, in order, and connected both ways", () => {
    const [a, b] = [at(FD.DGRAM_A), at(FD.DGRAM_B)];
    expect(receive(b)).toBe(DATA.dgrams[0]);
    expect(receive(b)).toBe(DATA.dgrams[1]);
    expect(receive(b)).toBeNull();
    expect(receive(a)).toBeNull();
    sendto(a, bytes("to b"));
    sendto(b, bytes("to a"));
    expect(receive(b)).toBe("to b");
    expect(receive(a)).toBe("to a");
  });

  test("the unix listener: its name, backlog, and a connection to it is accepted", () => {
    const l = at(FD.UNIX_LISTEN);
    expect(getsockoptInt(l, SOL.SOCKET, SO.ACCEPTCONN)).toBe(1);
    const diag = unixSocket(Number(fstat(l).ino));
    expect(diag?.name).toBe(join(work, "listen.sock"));
    expect(diag?.wqlen).toBe(7);
    expect(acceptedThrough(l, AF.UNIX, sockaddrUn(join(work, "listen.sock")))).toBe("hi");
  });

  test("the TCP listener: the recorded port and backlog, accepting a connection", () => {
    const l = at(FD.TCP_LISTEN);
    const diag = inetSockets(AF.INET).get(Number(fstat(l).ino));
    expect(diag?.srcPort).toBe(tcpPort);
    expect(diag?.wqueue).toBe(9);
    expect(getsockoptInt(l, SOL.SOCKET, SO.REUSEADDR)).toBe(1);
    expect(acceptedThrough(l, AF.INET, sockaddrIn("127.0.0.1", tcpPort))).toBe("hi");
  });

  test("eventfd counter and flags; epoll watches for the engine; signalfd mask; timerfd armed", () => {
    const efd = at(FD.EVENTFD);
    expect(fcntl(efd, F.GETFL) & O.NONBLOCK).toBe(O.NONBLOCK);
    expect(fdinfo(efd).fields.get("eventfd-count")).toBe("5");
    const watches = files.epollWatches(idOf(FD.EPOLL)).map((w) => [w.tfd, (w.events & ~0x18) >>> 0, w.data]).sort((x, y) => Number(x[0]) - Number(y[0]));
    expect(watches).toEqual([[FD.PIPE_R, (1 | (1 << 31)) >>> 0, 77n], [FD.EVENTFD, 1, 0x1234567890n]]);
    expect(files.epollWatches(idOf(FD.FILE_A))).toEqual([]);
    expect(readlinkSync(`/proc/self/fd/${at(FD.EPOLL)}`)).toBe("anon_inode:[eventpoll]");
    const sg = at(FD.SIGNALFD);
    expect(BigInt(`0x${fdinfo(sg).fields.get("sigmask")}`)).toBe((1n << 11n) | (1n << 27n));
    expect(fcntl(sg, F.GETFL) & O.NONBLOCK).toBe(O.NONBLOCK);
    const t = timerfdGettime(at(FD.TIMERFD));
    expect([t.intervalSec, t.intervalNsec]).toEqual([1n, 500n]);
    expect(t.valueSec).toBeGreaterThan(900n);
    expect(t.valueSec).toBeLessThanOrEqual(1000n);
    expect(fdinfo(at(FD.TIMERFD)).fields.get("clockid")).toBe("1");
  });

  test("the memfd: name, size, contents with the hole, position and seals", () => {
    const fd = at(FD.MEMFD);
    expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe("/memfd:ckpt-test (deleted)");
    expect(fstat(fd).size).toBe(5n * 4096n);
    expect(["a", "b", "\0", "d", "e"].map((c, i) => pread(fd, 4096, i * 4096) === c.repeat(4096))).toEqual([true, true, true, true, true]);
    expect(position(fd)).toBe(4096n + 7n);
    expect(fcntl(fd, F.GET_SEALS)).toBe(F_SEAL.SHRINK); // and sealing still allowed
  });

  test("finish() removes the temporary ghost file and closes every fd", () => {
    const ghostPath = readlinkSync(`/proc/self/fd/${at(FD.GHOST)}`);
    expect(existsSync(ghostPath)).toBe(true);
    const held = files.ids().map((id) => files.fd(id));
    files.finish();
    const open = openFds();
    expect(held.filter((fd) => open.has(fd))).toEqual([]);
    expect(existsSync(ghostPath)).toBe(false);
    expect(ghostsIn(work)).toEqual([]);
    expect(newFds(before)).toEqual([]);
    expect(() => files.fd(idOf(FD.FILE_A))).toThrow(/id/);
  });

  // Failures, on the same image set (each test puts back what it changed).
  const refused = (pattern: RegExp): void => {
    const was = openFds();
    expect(() => OpenedFiles.open(ImageSet.open(dir), { ...FILE_DEFAULTS, shellJob: false })).toThrow(pattern);
    expect(newFds(was)).toEqual([]);
    expect(ghostsIn(work)).toEqual([]);
  };

  test("a regular file whose size changed is refused by name, after the ghost was made, leaving nothing", () => {
    const passed = join(work, "passed.txt");
    appendFileSync(passed, "!");
    try {
      refused(new RegExp(`file id ${idOf(FD.PASSED)} \\(${passed}\\): ${passed} is 4 bytes now but was 3 bytes when dumped`));
    } finally {
      truncateSync(passed, 3);
    }
  });

  test("a log file (O_WRONLY|O_APPEND) that grew since the dump is restored, as CRIU does: its size is not recorded", () => {
    const [entry] = entries(dir, "files.img", FileEntrySchema).filter((e) => e.id === idOf(FD.APPEND));
    expect(entry?.reg?.name).toBe(join(work, "log.txt"));
    expect(isFieldSet(entry!.reg!, RegFileEntrySchema.field.size)).toBe(false);
    const log = join(work, "log.txt");
    const size = statSync(log).size;
    appendFileSync(log, "a line logged after the snapshot\n");
    const grown = OpenedFiles.open(ImageSet.open(dir), { ...FILE_DEFAULTS, shellJob: false });
    try {
      const fd = grown.fd(idOf(FD.APPEND));
      expect(fcntl(fd, F.GETFL) & (3 | O.APPEND)).toBe(O.WRONLY | O.APPEND);
    } finally {
      grown.finish();
      truncateSync(log, size);
    }
  });

  test("a regular file that is gone is refused by name", () => {
    const own = join(work, "child.txt");
    rmSync(own);
    try {
      refused(new RegExp(`file id ${cfds.get(FD.CHILD_OWN)} \\(${own}\\): ${own} is gone`));
    } finally {
      // As the workload made it: restore checks the mode too.
      writeFileSync(own, "", { mode: 0o600 });
    }
  });

  test("a FIFO whose path is gone is refused by name, with regular files, sockets and pipes open by then", () => {
    const fifo = join(work, "fifo");
    rmSync(fifo);
    try {
      refused(new RegExp(`file id ${idOf(FD.FIFO)} \\(FIFO ${fifo}\\): openat.*ENOENT`));
    } finally {
      Bun.spawnSync(["mkfifo", "-m", "600", fifo]);
    }
  });

  test("a socket path taken by something other than a socket is not replaced", () => {
    const sock = join(work, "listen.sock");
    rmSync(sock);
    writeFileSync(sock, "not a socket");
    try {
      refused(new RegExp(`file id ${idOf(FD.UNIX_LISTEN)} \\(unix stream socket ${sock}\\): ${sock} is a regular file, not a stale socket file`));
      expect(readFileSync(sock, "utf8")).toBe("not a socket");
    } finally {
      rmSync(sock);
    }
  });

  test("a TCP port taken meanwhile is refused by name", () => {
    const squatter = socket(AF.INET, SOCK.STREAM | SOCK.CLOEXEC);
    try {
      // Connections accepted above linger in TIME_WAIT on the port.
      setsockoptInt(squatter, SOL.SOCKET, SO.REUSEADDR, 1);
      bind(squatter, sockaddrIn("127.0.0.1", tcpPort));
      listen(squatter, 1);
      refused(new RegExp(`file id ${idOf(FD.TCP_LISTEN)} \\(TCP listener 127\\.0\\.0\\.1:${tcpPort}\\): bind.*EADDRINUSE`));
    } finally {
      close(squatter);
    }
  });

  test("a kind ckpt cannot restore is refused before anything is opened, naming id and type", () => {
    const synthetic = syntheticSet(dir, [devNull(1), create(FileEntrySchema, { type: FdTypes.PACKETSK, id: 2 })]);
    const was = openFds();
    expect(() => OpenedFiles.open(ImageSet.open(synthetic), { ...FILE_DEFAULTS, shellJob: false })).toThrow("file id 2 is of type PACKETSK (10), which ckpt cannot restore");
    expect(newFds(was)).toEqual([]);
  });

  test("an owner is set as the uids the dump recorded; ckpt is root again afterwards", () => {
    const file = devNull(1);
    file.reg!.fown = create(FownEntrySchema, { uid: 1000, euid: 1001, signum: 10, pidType: 1, pid: process.pid });
    const opened = OpenedFiles.open(ImageSet.open(syntheticSet(dir, [file])), { ...FILE_DEFAULTS, shellJob: false });
    try {
      opened.applyOwners();
      const uids = new Uint32Array(2);
      fcntlInto(opened.fd(1), F.GETOWNER_UIDS, uids);
      expect([...uids]).toEqual([1000, 1001]);
      const owner = new Int32Array(2);
      fcntlInto(opened.fd(1), F.GETOWN_EX, owner);
      expect([...owner]).toEqual([1, process.pid]);
      expect(fcntl(opened.fd(1), F.GETSIG)).toBe(10);
      expect(getresuid()).toEqual([0, 0, 0]);
    } finally {
      opened.finish();
    }
  });

  test("thousands of files fit (the soft fd limit is raised); more than the hard limit allows are refused up front", () => {
    const many = syntheticSet(dir, Array.from({ length: 3000 }, (_, i) => devNull(i + 1)));
    const opened = OpenedFiles.open(ImageSet.open(many), { ...FILE_DEFAULTS, shellJob: false });
    expect(opened.count).toBe(3000);
    expect(fcntl(opened.fd(3000), F.GETFL) & 3).toBe(O.RDWR);
    opened.finish();
    const script = join(tempDir("rfiles-limit"), "limit.ts");
    writeFileSync(script, `
      import { ImageSet } from "${join(import.meta.dir, "../src/image/image-set")}";
      import { OpenedFiles } from "${join(import.meta.dir, "../src/restore/files/open-files")}";
      try { OpenedFiles.open(ImageSet.open(${JSON.stringify(many)}), { fileValidation: "buildid", skipFileRwxCheck: false, shellJob: false }); console.log("opened"); }
      catch (e) { console.log((e as Error).message); }
    `);
    const r = Bun.spawnSync(["prlimit", "--nofile=1024:1024", process.execPath, script], { stdout: "pipe", stderr: "pipe" });
    expect(r.stdout.toString()).toMatch(/files\.img holds 3000 open files, but ckpt may have only 1024 fds open \(the RLIMIT_NOFILE hard limit\)/);
  });
});

/** Fixed fd numbers of sidetarget. */
const SIDE = {
  SERVER: 10, CLIENT: 11, UNBOUND: 12, SHUT_A: 13, SHUT_B: 14, ABSTRACT_LISTEN: 15, GONE: 16, MEMFD: 17, MEMFD_RO: 18,
  PIPE_R: 19, PIPE_W: 20, PIPE_R2: 21, SEMAPHORE: 22, ABSTIME: 23, DIR: 24, TCP6: 25, CLIENT2: 26, RELAY: 27, TO_RELAY: 28,
  GHOST_1: 29, GHOST_2: 30, OLD_LISTEN: 31, NEW_LISTEN: 32,
} as const;

/**
 * sidetarget DIR: the less common states of the kinds above. A named
 * datagram server with datagrams queued from three senders (two connected to
 * it, one not); a relay socket that others connect to and that connects on;
 * a stream pair with one end shut for writing; an abstract listener; a socket
 * whose file was removed; a memfd opened twice (one read-only), sealed; a
 * pipe with two open files of its read end; a semaphore eventfd; an absolute
 * timer; a directory; an IPv6 listener; an unlinked file opened twice; two
 * listeners of one path, the newer one's file replaced by the older one's.
 * Prints "ready PID TCP6PORT".
 */
function sideTarget(): string {
  return buildC("sidetarget", `
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void place(int fd, int at) { if (fd < 0) exit(40); if (fd != at) { if (dup2(fd, at) < 0) exit(41); close(fd); } }
static socklen_t path_addr(struct sockaddr_un *u, const char *dir, const char *name) {
  memset(u, 0, sizeof *u); u->sun_family = AF_UNIX; snprintf(u->sun_path, sizeof u->sun_path, "%s/%s", dir, name);
  return sizeof *u;
}
static socklen_t abstract_addr(struct sockaddr_un *u, const char *name) {
  memset(u, 0, sizeof *u); u->sun_family = AF_UNIX; snprintf(u->sun_path + 1, sizeof u->sun_path - 1, "%s-%d", name, getpid());
  return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(u->sun_path + 1);
}
static int dgram(void) { return socket(AF_UNIX, SOCK_DGRAM, 0); }

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  const char *dir = argv[1];
  struct sockaddr_un u, s; socklen_t l, sl;
  sl = path_addr(&s, dir, "server.sock");
  place(dgram(), ${SIDE.SERVER});
  if (bind(${SIDE.SERVER}, (struct sockaddr *)&s, sl)) return 3;
  place(dgram(), ${SIDE.RELAY});
  l = path_addr(&u, dir, "relay.sock");
  if (bind(${SIDE.RELAY}, (struct sockaddr *)&u, l)) return 4;
  place(dgram(), ${SIDE.TO_RELAY});                  /* connects to the relay before the relay connects on */
  if (connect(${SIDE.TO_RELAY}, (struct sockaddr *)&u, l) || send(${SIDE.TO_RELAY}, "five", 4, 0) != 4) return 5;
  place(dgram(), ${SIDE.CLIENT});
  l = abstract_addr(&u, "ckpt-rf-client");
  if (bind(${SIDE.CLIENT}, (struct sockaddr *)&u, l) || connect(${SIDE.CLIENT}, (struct sockaddr *)&s, sl)) return 6;
  if (send(${SIDE.CLIENT}, "one", 3, 0) != 3 || send(${SIDE.CLIENT}, "two", 3, 0) != 3) return 7;
  place(dgram(), ${SIDE.UNBOUND});
  if (sendto(${SIDE.UNBOUND}, "three", 5, 0, (struct sockaddr *)&s, sl) != 5) return 8;
  place(dgram(), ${SIDE.CLIENT2});
  l = path_addr(&u, dir, "client2.sock");
  if (bind(${SIDE.CLIENT2}, (struct sockaddr *)&u, l) || connect(${SIDE.CLIENT2}, (struct sockaddr *)&s, sl)) return 9;
  if (send(${SIDE.CLIENT2}, "four", 4, 0) != 4) return 10;
  if (connect(${SIDE.RELAY}, (struct sockaddr *)&s, sl)) return 11;

  int p[2]; if (socketpair(AF_UNIX, SOCK_STREAM, 0, p)) return 12;
  place(p[0], ${SIDE.SHUT_A}); place(p[1], ${SIDE.SHUT_B});
  if (send(${SIDE.SHUT_A}, "bye", 3, 0) != 3 || shutdown(${SIDE.SHUT_A}, SHUT_WR)) return 13;
  place(socket(AF_UNIX, SOCK_STREAM, 0), ${SIDE.ABSTRACT_LISTEN});
  l = abstract_addr(&u, "ckpt-rf-listen");
  if (bind(${SIDE.ABSTRACT_LISTEN}, (struct sockaddr *)&u, l) || listen(${SIDE.ABSTRACT_LISTEN}, 3)) return 14;
  place(socket(AF_UNIX, SOCK_STREAM, 0), ${SIDE.GONE});
  l = path_addr(&u, dir, "gone.sock");
  if (bind(${SIDE.GONE}, (struct sockaddr *)&u, l) || unlink(u.sun_path)) return 15;

  place(memfd_create("two-opens", MFD_ALLOW_SEALING), ${SIDE.MEMFD});
  if (ftruncate(${SIDE.MEMFD}, 10000) || pwrite(${SIDE.MEMFD}, "memfd contents", 14, 4096) != 14) return 16;
  if (pwrite(${SIDE.MEMFD}, "tail", 4, 9996) != 4) return 16;
  char proc[64]; snprintf(proc, sizeof proc, "/proc/self/fd/%d", ${SIDE.MEMFD});
  place(open(proc, O_RDONLY), ${SIDE.MEMFD_RO});
  lseek(${SIDE.MEMFD_RO}, 5, SEEK_SET);
  if (fcntl(${SIDE.MEMFD}, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW)) return 17;

  int q[2]; if (pipe(q)) return 18;
  place(q[0], ${SIDE.PIPE_R}); place(q[1], ${SIDE.PIPE_W});
  if (write(${SIDE.PIPE_W}, "pipe", 4) != 4) return 19;
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", ${SIDE.PIPE_R});
  place(open(proc, O_RDONLY | O_NONBLOCK), ${SIDE.PIPE_R2});
  place(eventfd(3, EFD_SEMAPHORE), ${SIDE.SEMAPHORE});
  place(timerfd_create(CLOCK_REALTIME, 0), ${SIDE.ABSTIME});
  struct timespec now; clock_gettime(CLOCK_REALTIME, &now);
  struct itimerspec its = { .it_value = { now.tv_sec + 500, 0 } };
  if (timerfd_settime(${SIDE.ABSTIME}, TFD_TIMER_ABSTIME, &its, NULL)) return 20;
  place(open(dir, O_RDONLY | O_DIRECTORY), ${SIDE.DIR});
  place(socket(AF_INET6, SOCK_STREAM, 0), ${SIDE.TCP6});
  int one = 1; setsockopt(${SIDE.TCP6}, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  int idle = 77, intvl = 11, cnt = 5;
  setsockopt(${SIDE.TCP6}, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(${SIDE.TCP6}, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(${SIDE.TCP6}, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(${SIDE.TCP6}, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
  socklen_t a6l = sizeof a6;
  if (bind(${SIDE.TCP6}, (struct sockaddr *)&a6, sizeof a6) || listen(${SIDE.TCP6}, 4) || getsockname(${SIDE.TCP6}, (struct sockaddr *)&a6, &a6l)) return 21;
  char twice[4096]; snprintf(twice, sizeof twice, "%s/twice.txt", dir);
  place(open(twice, O_RDWR | O_CREAT, 0640), ${SIDE.GHOST_1});
  if (write(${SIDE.GHOST_1}, "shared ghost", 12) != 12) return 22;
  place(open(twice, O_RDONLY), ${SIDE.GHOST_2});
  if (unlink(twice)) return 23;
  char moved[4096]; snprintf(moved, sizeof moved, "%s/moved.sock", dir);
  place(socket(AF_UNIX, SOCK_STREAM, 0), ${SIDE.OLD_LISTEN});
  l = path_addr(&u, dir, "both.sock");
  if (bind(${SIDE.OLD_LISTEN}, (struct sockaddr *)&u, l) || listen(${SIDE.OLD_LISTEN}, 2) || rename(u.sun_path, moved)) return 24;
  place(socket(AF_UNIX, SOCK_STREAM, 0), ${SIDE.NEW_LISTEN});
  if (bind(${SIDE.NEW_LISTEN}, (struct sockaddr *)&u, l) || listen(${SIDE.NEW_LISTEN}, 2) || rename(moved, u.sun_path)) return 25;
  printf("ready %d %d\\n", getpid(), ntohs(a6.sin6_port));
  fflush(stdout);
  for (;;) pause();
}
`);
}

describe("the less common states of sockets, memfds, pipes, eventfd and timerfd", async () => {
  const work = tempDir("rfiles-side");
  const { dir, words } = await dumpKilled([sideTarget(), work]);
  const [pid, tcp6Port] = words.map(Number) as [number, number];
  const table = fdTable(dir, pid);
  let files!: OpenedFiles;
  beforeAll(() => {
    files = OpenedFiles.open(ImageSet.open(dir), { ...FILE_DEFAULTS, shellJob: false });
  });
  const at = (fd: number): number => files.fd(table.get(fd)!);
  const name = (raw: Uint8Array): string => {
    const a = decodeSockaddr(raw);
    return "name" in a ? a.name : "";
  };
  afterAll(() => files.abort());

  test("a named datagram server gets its queue back in order, from three senders", () => {
    expect(receive(at(SIDE.SERVER))).toBe("one");
    expect(receive(at(SIDE.SERVER))).toBe("two");
    expect(receive(at(SIDE.SERVER))).toBe("three");
    expect(receive(at(SIDE.SERVER))).toBe("four");
    expect(receive(at(SIDE.SERVER))).toBeNull();
    expect(receive(at(SIDE.RELAY))).toBe("five");
  });

  test("datagram sockets are connected one way again, names and all, even along a chain", () => {
    const server = join(work, "server.sock");
    expect(name(getsockname(at(SIDE.CLIENT)))).toBe(`\0ckpt-rf-client-${pid}`);
    for (const fd of [SIDE.CLIENT, SIDE.CLIENT2, SIDE.RELAY]) expect(name(getpeername(at(fd)))).toBe(server);
    expect(name(getpeername(at(SIDE.TO_RELAY)))).toBe(join(work, "relay.sock"));
    sendto(at(SIDE.CLIENT2), bytes("again"));
    expect(receive(at(SIDE.SERVER))).toBe("again");
    // As in the dumped tree: the relay, connected on, takes nothing from those connected to it.
    expect(() => sendto(at(SIDE.TO_RELAY), bytes("six"))).toThrow(/EPERM/);
    expect(name(getsockname(at(SIDE.UNBOUND)))).toBe("");
  });

  test("a stream pair with one end shut for writing: data, then end of file; writing fails", () => {
    expect(receive(at(SIDE.SHUT_B))).toBe("bye");
    expect(receive(at(SIDE.SHUT_B))).toBe("");
    expect(() => sendto(at(SIDE.SHUT_A), bytes("more"), MSG.NOSIGNAL)).toThrow(/EPIPE/);
    expect(unixSocket(Number(fstat(at(SIDE.SHUT_A)).ino))?.shutdown).toBe(2); // SEND
  });

  test("an abstract listener accepts; a socket whose file was removed keeps its name and no file", () => {
    const l = at(SIDE.ABSTRACT_LISTEN);
    expect(unixSocket(Number(fstat(l).ino))?.wqlen).toBe(3);
    expect(acceptedThrough(l, AF.UNIX, sockaddrUn(`\0ckpt-rf-listen-${pid}`))).toBe("hi");
    const gone = join(work, "gone.sock");
    expect(name(getsockname(at(SIDE.GONE)))).toBe(gone);
    expect(existsSync(gone)).toBe(false);
  });

  test("two listeners of one path: both listen under that name, and the path's file is the older one's again", () => {
    const both = join(work, "both.sock");
    for (const fd of [SIDE.OLD_LISTEN, SIDE.NEW_LISTEN]) expect(name(getsockname(at(fd)))).toBe(both);
    expect(acceptedThrough(at(SIDE.OLD_LISTEN), AF.UNIX, sockaddrUn(both))).toBe("hi");
  });

  test("one memfd inode, two open files: read-write and read-only at its own position; seals last", () => {
    const [rw, ro] = [at(SIDE.MEMFD), at(SIDE.MEMFD_RO)];
    expect(fstat(ro).ino).toBe(fstat(rw).ino);
    expect(fcntl(rw, F.GETFL) & 3).toBe(O.RDWR);
    expect(fcntl(ro, F.GETFL) & 3).toBe(O.RDONLY);
    expect(position(ro)).toBe(5n);
    expect(fstat(rw).size).toBe(10000n);
    expect(pread(ro, 14, 4096)).toBe("memfd contents");
    expect(pread(ro, 100, 9990)).toBe("\0".repeat(6) + "tail");
    expect(fcntl(rw, F.GET_SEALS)).toBe(F_SEAL.WRITE | F_SEAL.GROW);
  });

  test("two open files of one pipe's read end share the pipe, each with its own flags", () => {
    const [r, w, r2] = [at(SIDE.PIPE_R), at(SIDE.PIPE_W), at(SIDE.PIPE_R2)];
    expect(r2).not.toBe(r);
    expect(fstat(r2).ino).toBe(fstat(w).ino);
    expect(fcntl(r, F.GETFL) & O.NONBLOCK).toBe(0);
    expect(fcntl(r2, F.GETFL) & (3 | O.NONBLOCK)).toBe(O.RDONLY | O.NONBLOCK);
    const buf = new Uint8Array(16);
    expect(text(buf.subarray(0, readInto(r2, buf)))).toBe("pipe");
  });

  test("a semaphore eventfd; an absolute timer; a directory; an IPv6 listener with its TCP options", () => {
    const info = fdinfo(at(SIDE.SEMAPHORE));
    expect(info.fields.get("eventfd-count")).toBe("3");
    expect(info.fields.get("eventfd-semaphore")).toBe("1");
    const timer = fdinfo(at(SIDE.ABSTIME));
    expect(timer.fields.get("clockid")).toBe("0");
    expect(Number.parseInt(timer.fields.get("settime flags") ?? "", 8)).toBe(1);
    const left = timerfdGettime(at(SIDE.ABSTIME)).valueSec;
    expect(left).toBeGreaterThan(400n);
    expect(left).toBeLessThanOrEqual(500n);
    expect(readlinkSync(`/proc/self/fd/${at(SIDE.DIR)}`)).toBe(work);
    expect(fcntl(at(SIDE.DIR), F.GETFL) & O.DIRECTORY).toBe(O.DIRECTORY);
    const l = at(SIDE.TCP6);
    const diag = inetSockets(AF.INET6).get(Number(fstat(l).ino));
    expect([diag?.srcPort, diag?.wqueue, diag?.v6only]).toEqual([tcp6Port, 4, true]);
    expect([TCP_OPT.NODELAY, TCP_OPT.KEEPIDLE, TCP_OPT.KEEPINTVL, TCP_OPT.KEEPCNT].map((o) => getsockoptInt(l, IPPROTO.TCP, o))).toEqual([1, 77, 11, 5]);
    expect(acceptedThrough(l, AF.INET6, sockaddrIn6("::1", tcp6Port))).toBe("hi");
  });

  test("an unlinked file opened twice comes back as one file, opened twice", () => {
    const [a, b] = [at(SIDE.GHOST_1), at(SIDE.GHOST_2)];
    expect(a).not.toBe(b);
    expect(fstat(a).ino).toBe(fstat(b).ino);
    expect(pread(b, 100, 0)).toBe("shared ghost");
    expect(position(a)).toBe(12n);
    expect(position(b)).toBe(0n);
    expect(fstat(a).mode & 0o7777).toBe(0o640);
  });

  test("finish() leaves no socket file made for a removed one, no ghost, and closes everything", () => {
    files.finish();
    expect(readdirSync(work).sort()).toEqual(["both.sock", "client2.sock", "relay.sock", "server.sock"]);
  });
});

describe("a terminal (a --shell-job dump)", async () => {
  const { dir } = await dumpKilled([oddFdTarget(), "tty"], ["--shell-job"]);
  const script = join(tempDir("rfiles-tty"), "open-tty.ts");
  writeFileSync(script, `
    import { readlinkSync } from "node:fs";
    import { ImageSet } from "${join(import.meta.dir, "../src/image/image-set")}";
    import { OpenedFiles } from "${join(import.meta.dir, "../src/restore/files/open-files")}";
    import { fcntl } from "${join(import.meta.dir, "../src/sys/calls")}";
    import { FdTypes, FileEntrySchema } from "${join(import.meta.dir, "../src/image/gen/fdinfo_pb")}";
    try {
      const images = ImageSet.open(${JSON.stringify(dir)});
      const files = OpenedFiles.open(images, { fileValidation: "buildid", skipFileRwxCheck: false, shellJob: true });
      const fd = files.fd(images.entries("files.img", FileEntrySchema).find((e) => e.type === FdTypes.TTY)!.id);
      console.log(JSON.stringify({ fd: readlinkSync("/proc/self/fd/" + fd), stdin: readlinkSync("/proc/self/fd/0"), flags: fcntl(fd, 3), count: files.count }));
      files.finish();
    } catch (e) { console.log(JSON.stringify({ error: (e as Error).message })); }
  `);

  test("without --shell-job it is refused by name, telling what to do", () => {
    const was = openFds();
    expect(() => OpenedFiles.open(ImageSet.open(dir), { ...FILE_DEFAULTS, shellJob: false })).toThrow(/file id \d+ \(terminal \/dev\/pts\/\d+\): the dumped tree used a terminal; restore it with --shell-job/);
    expect(newFds(was)).toEqual([]);
  });

  test("with --shell-job, ckpt's stdin must be a terminal", () => {
    const r = Bun.spawnSync([process.execPath, script], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    expect(JSON.parse(r.stdout.toString()).error).toMatch(/restoring a shell job needs a terminal on ckpt's stdin, which is \/dev\/null/);
  });

  test("with --shell-job on a terminal, the tree gets that terminal, opened read-write", () => {
    const cmd = `${process.execPath} ${script}`;
    const r = Bun.spawnSync(["script", "-qec", cmd, "/dev/null"], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const line = r.stdout.toString().split("\n").find((l) => l.trim().startsWith("{")) ?? "{}";
    const out = JSON.parse(line.trim()) as { fd?: string; stdin?: string; flags?: number; count?: number; error?: string };
    expect(out.error).toBeUndefined();
    expect(out.fd).toMatch(/^\/dev\/pts\/\d+$/);
    expect(out.fd).toBe(out.stdin!);
    expect((out.flags ?? -1) & 3).toBe(O.RDWR);
  });
});
