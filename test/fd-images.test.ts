/**
 * Images that a dump of open files writes beyond fdinfo and regular files:
 * sockets, eventfd/epoll/signalfd/timerfd, fifos, ttys, memfds, ghost files
 * and their payload-carrying companions. Each is written with realistic
 * values, read back by our reader and by `ckpt show`, and (where installed)
 * decoded by Debian's crit, which must print the same values.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { create, equals, type DescMessage, type Message, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { decodeImage } from "../src/image/decode";
import { ImageEncoder } from "../src/image/encode";
import { ImageError } from "../src/image/errors";
import { EventfdFileEntrySchema } from "../src/image/gen/eventfd_pb";
import { EventpollFileEntrySchema, EventpollTfdEntrySchema } from "../src/image/gen/eventpoll_pb";
import { FdTypes, FileEntrySchema, type FileEntry } from "../src/image/gen/fdinfo_pb";
import { FifoEntrySchema } from "../src/image/gen/fifo_pb";
import { FownEntrySchema } from "../src/image/gen/fown_pb";
import { GhostChunkEntrySchema, GhostFileEntrySchema, TimevalSchema } from "../src/image/gen/ghost-file_pb";
import { MemfdFileEntrySchema, MemfdInodeEntrySchema } from "../src/image/gen/memfd_pb";
import { PagemapEntrySchema, PagemapHeadSchema } from "../src/image/gen/pagemap_pb";
import { PipeDataEntrySchema } from "../src/image/gen/pipe_pb";
import { RegFileEntrySchema } from "../src/image/gen/regfile_pb";
import { RemapFilePathEntrySchema, RemapType } from "../src/image/gen/remap-file-path_pb";
import { SignalfdEntrySchema } from "../src/image/gen/signalfd_pb";
import { InetSkEntrySchema, IpOptsEntrySchema } from "../src/image/gen/sk-inet_pb";
import { SkOptsEntrySchema, SkShutdown, type SkOptsEntry } from "../src/image/gen/sk-opts_pb";
import { ScmEntrySchema, SkPacketEntrySchema } from "../src/image/gen/sk-packet_pb";
import { FilePermsEntrySchema, UnixSkEntrySchema } from "../src/image/gen/sk-unix_pb";
import { TimerfdEntrySchema } from "../src/image/gen/timerfd_pb";
import { TermiosEntrySchema, TtyFileEntrySchema, TtyInfoEntrySchema, TtyPtyEntrySchema, TtyType, WinsizeEntrySchema } from "../src/image/gen/tty_pb";
import { readImageFile, writeEncodedImage } from "../src/image/image-file";
import { kind } from "../src/image/magic";
import { imageToJson, quotedPrintable, stringifyJson } from "../src/image/to-json";
import { parseExactJson, runCkpt } from "./helpers/cli";
import { critFailures } from "./helpers/images";
import { tempDir } from "./helpers/target";

const CRIT = Bun.which("crit");
if (!CRIT && process.env.CI) throw new Error("crit is not installed: `apt-get install -y criu` (CI must run the crit tests)");
if (!CRIT) console.warn("crit not found: skipping the crit comparison tests (apt-get install -y criu)");

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

/** base64 text (Python's encodebytes layout) back to bytes. */
const unbase64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\n/g, ""), "base64"));

// ---- realistic values -------------------------------------------------------

const fown = () => create(FownEntrySchema, { uid: 0, euid: 0, signum: 0, pidType: 0, pid: 0 });

function skOpts(extra: MessageInitShape<typeof SkOptsEntrySchema> = {}): SkOptsEntry {
  return create(SkOptsEntrySchema, {
    soSndbuf: 212992, soRcvbuf: 212992,
    soSndTmoSec: 0n, soSndTmoUsec: 0n, soRcvTmoSec: 5n, soRcvTmoUsec: 250000n,
    reuseaddr: false, soPriority: 0, soRcvlowat: 1, soMark: 0,
    soPasscred: false, soPasssec: false, soDontroute: false, soNoCheck: false,
    soReuseport: false, soBroadcast: false, soKeepalive: false, soBufLock: 0,
    ...extra,
  });
}

const O_RDWR = 2;
const O_NONBLOCK = 0o4000;

/** 127.0.0.1 and ::1 as CRIU stores them: network-order bytes read as host words. */
const LOOPBACK4 = [0x0100007f];
const LOOPBACK6 = [0, 0, 0, 0x01000000];

const FILES: FileEntry[] = [
  create(FileEntrySchema, {
    type: FdTypes.INETSK, id: 1,
    isk: create(InetSkEntrySchema, {
      id: 1, ino: 123456, family: 2, type: 1, proto: 6, state: 10, srcPort: 8080, dstPort: 0, flags: O_RDWR, backlog: 128,
      srcAddr: LOOPBACK4, dstAddr: [0], fown: fown(),
      opts: skOpts({ reuseaddr: true, soKeepalive: true, tcpKeepcnt: 9, tcpKeepidle: 7200, tcpKeepintvl: 75 }),
      ipOpts: create(IpOptsEntrySchema, { freebind: false }), nsId: 1, shutdown: SkShutdown.NONE,
    }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.INETSK, id: 2,
    isk: create(InetSkEntrySchema, {
      id: 2, ino: 123457, family: 10, type: 2, proto: 17, state: 7, srcPort: 5353, dstPort: 0, flags: O_RDWR | O_NONBLOCK, backlog: 0,
      srcAddr: LOOPBACK6, dstAddr: [0, 0, 0, 0], fown: fown(), opts: skOpts({ soBoundDev: "lo" }), v6only: true, ifname: "lo", nsId: 1,
    }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.UNIXSK, id: 3,
    usk: create(UnixSkEntrySchema, {
      id: 3, ino: 200001, type: 1, state: 10, flags: O_RDWR, uflags: 0, backlog: 16, peer: 0, fown: fown(), opts: skOpts({ soPasscred: true }),
      name: text("/tmp/ckpt.sock"), shutdown: SkShutdown.NONE,
      filePerms: create(FilePermsEntrySchema, { mode: 0o140755, uid: 0, gid: 0 }), deleted: false, nsId: 1, mntId: 25,
    }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.UNIXSK, id: 4,
    usk: create(UnixSkEntrySchema, {
      id: 4, ino: 200002, type: 2, state: 1, flags: O_RDWR, uflags: 0, backlog: 0, peer: 200003, fown: fown(), opts: skOpts(),
      // An abstract name: a NUL, then the name.
      name: Uint8Array.from([0, ...text("ckpt-abstract")]), shutdown: SkShutdown.WRITE, nsId: 1,
    }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.EVENTFD, id: 5,
    efd: create(EventfdFileEntrySchema, { id: 5, flags: O_RDWR | O_NONBLOCK, fown: fown(), counter: 42n }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.EVENTPOLL, id: 6,
    epfd: create(EventpollFileEntrySchema, {
      id: 6, flags: O_RDWR, fown: fown(),
      tfd: [
        create(EventpollTfdEntrySchema, { id: 6, tfd: 5, events: 0x1, data: 0xdeadbeefcafef00dn, dev: 0x0e, inode: 1035n, pos: 0n }),
        create(EventpollTfdEntrySchema, { id: 6, tfd: 3, events: 0x19, data: 3n }),
      ],
    }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.SIGNALFD, id: 7,
    // SIGUSR1 (10) and SIGTERM (15).
    sgfd: create(SignalfdEntrySchema, { id: 7, flags: O_NONBLOCK, fown: fown(), sigmask: (1n << 9n) | (1n << 14n) }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.TIMERFD, id: 8,
    tfd: create(TimerfdEntrySchema, {
      id: 8, flags: O_RDWR, fown: fown(), clockid: 1, ticks: 3n, settimeFlags: 0, vsec: 0n, vnsec: 500_000_000n, isec: 1n, insec: 0n,
    }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.REG, id: 10,
    reg: create(RegFileEntrySchema, { id: 10, flags: 0, pos: 0n, fown: fown(), name: "/tmp/ckpt.fifo" }),
  }),
  create(FileEntrySchema, { type: FdTypes.FIFO, id: 9, fifo: create(FifoEntrySchema, { id: 9, pipeId: 300001, regfId: 10 }) }),
  create(FileEntrySchema, {
    type: FdTypes.REG, id: 12,
    reg: create(RegFileEntrySchema, { id: 12, flags: O_RDWR, pos: 0n, fown: fown(), name: "/dev/pts/3" }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.TTY, id: 11,
    tty: create(TtyFileEntrySchema, { id: 11, ttyInfoId: 2, flags: O_RDWR, fown: fown(), regfId: 12 }),
  }),
  create(FileEntrySchema, {
    type: FdTypes.MEMFD, id: 13,
    memfd: create(MemfdFileEntrySchema, { id: 13, flags: O_RDWR, pos: 4096n, fown: fown(), inodeId: 1 }),
  }),
];

const termios = (cc: number[]) =>
  create(TermiosEntrySchema, { cIflag: 0x500, cOflag: 0x5, cCflag: 0xbf, cLflag: 0x8a3b, cLine: 0, cIspeed: 38400, cOspeed: 38400, cCc: cc });
const CC = [3, 28, 127, 21, 4, 0, 1, 0, 17, 19, 26, 0, 18, 15, 23, 22, 0, 0, 0];

const TTYS = [
  create(TtyInfoEntrySchema, {
    id: 1, type: TtyType.PTY, locked: false, exclusive: false, packetMode: false, sid: 0, pgrp: 0, rdev: 0x502,
    termios: termios(CC), termiosLocked: termios(CC.map(() => 0)),
    winsize: create(WinsizeEntrySchema, { wsRow: 24, wsCol: 80, wsXpixel: 0, wsYpixel: 0 }),
    pty: create(TtyPtyEntrySchema, { index: 3 }), uid: 0, gid: 5,
  }),
  create(TtyInfoEntrySchema, {
    id: 2, type: TtyType.PTY, locked: false, exclusive: true, packetMode: false, sid: 4242, pgrp: 4242, rdev: 0x8803,
    termios: termios(CC), winsize: create(WinsizeEntrySchema, { wsRow: 50, wsCol: 132, wsXpixel: 0, wsYpixel: 0 }),
    pty: create(TtyPtyEntrySchema, { index: 3 }), dev: 0x19, uid: 1000, gid: 5,
  }),
];

const SHMID = 5555;
const PAGES_ID = 3;
const MEMFD_PAGES = Uint8Array.from([...pattern(4096, 1), ...pattern(4096, 2)]);

interface Entry {
  schema: DescMessage;
  message: Message;
  payload?: Uint8Array;
}
interface Image {
  file: string;
  kind: string;
  entries: Entry[];
}

const e = <D extends DescMessage>(schema: D, message: MessageShape<D>, payload?: Uint8Array): Entry => ({ schema, message, payload });
const timeval = (sec: bigint, usec: bigint) => create(TimevalSchema, { tvSec: sec, tvUsec: usec });

const IMAGES: Image[] = [
  { file: "files.img", kind: "FILES", entries: FILES.map((f) => e(FileEntrySchema, f)) },
  {
    file: "fifo-data.img", kind: "FIFO_DATA",
    entries: [e(PipeDataEntrySchema, create(PipeDataEntrySchema, { pipeId: 300001, bytes: 12, size: 65536 }), text("fifo payload"))],
  },
  {
    file: "sk-queues.img", kind: "SK_QUEUES",
    entries: [
      e(SkPacketEntrySchema, create(SkPacketEntrySchema, { idFor: 4, length: 5 }), text("hello")),
      e(
        SkPacketEntrySchema,
        create(SkPacketEntrySchema, { idFor: 4, length: 300, scm: [create(ScmEntrySchema, { type: 1, rights: [5, 6] })] }),
        pattern(300, 7),
      ),
    ],
  },
  {
    file: "remap-fpath.img", kind: "REMAP_FPATH",
    entries: [
      e(RemapFilePathEntrySchema, create(RemapFilePathEntrySchema, { origId: 10, remapId: 0x1a, remapType: RemapType.GHOST })),
      e(RemapFilePathEntrySchema, create(RemapFilePathEntrySchema, { origId: 14, remapId: 15, remapType: RemapType.LINKED })),
      e(RemapFilePathEntrySchema, create(RemapFilePathEntrySchema, { origId: 16, remapId: 4321, remapType: RemapType.PROCFS })),
    ],
  },
  {
    // A small unlinked file: its contents follow the header raw.
    file: "ghost-file-1a.img", kind: "GHOST_FILE",
    entries: [
      e(
        GhostFileEntrySchema,
        create(GhostFileEntrySchema, {
          uid: 0, gid: 0, mode: 0o100600, dev: 0x803, ino: 424242n,
          atim: timeval(1_700_000_000n, 123456n), mtim: timeval(1_700_000_100n, 0n),
        }),
        text("deleted but still open\n"),
      ),
    ],
  },
  {
    // A larger one, with a hole between two chunks of data.
    file: "ghost-file-1b.img", kind: "GHOST_FILE",
    entries: [
      e(GhostFileEntrySchema, create(GhostFileEntrySchema, {
        uid: 1000, gid: 1000, mode: 0o100644, dev: 0x803, ino: 424243n,
        atim: timeval(1_700_000_000n, 1n), mtim: timeval(1_700_000_000n, 2n), chunks: true, size: 20480n,
      })),
      e(GhostChunkEntrySchema, create(GhostChunkEntrySchema, { len: 4096n, off: 0n }), pattern(4096, 3)),
      e(GhostChunkEntrySchema, create(GhostChunkEntrySchema, { len: 4096n, off: 12288n }), pattern(4096, 4)),
    ],
  },
  {
    // An unlinked symlink: no contents, the target in the header.
    file: "ghost-file-1c.img", kind: "GHOST_FILE",
    entries: [
      e(
        GhostFileEntrySchema,
        create(GhostFileEntrySchema, { uid: 0, gid: 0, mode: 0o120777, dev: 0x803, ino: 424244n, symlnkTarget: "/etc/hostname" }),
        new Uint8Array(0),
      ),
    ],
  },
  { file: "tty-info.img", kind: "TTY_INFO", entries: TTYS.map((t) => e(TtyInfoEntrySchema, t)) },
  {
    file: "memfd.img", kind: "MEMFD_INODE",
    entries: [
      e(MemfdInodeEntrySchema, create(MemfdInodeEntrySchema, {
        name: "ckpt-memfd", uid: 0, gid: 0, size: 8192n, shmid: SHMID, seals: 1, inodeId: 1n,
      })),
    ],
  },
  {
    // The memfd's contents: a shmem pagemap naming pages-3.img.
    file: `pagemap-shmem-${SHMID}.img`, kind: "PAGEMAP",
    entries: [
      e(PagemapHeadSchema, create(PagemapHeadSchema, { pagesId: PAGES_ID })),
      e(PagemapEntrySchema, create(PagemapEntrySchema, { vaddr: 0n, compatNrPages: 2, nrPages: 2n, flags: 4 })),
    ],
  },
];

let dir = "";

beforeAll(() => {
  dir = tempDir("fd-images");
  for (const img of IMAGES) {
    const enc = new ImageEncoder(kind(img.kind));
    for (const en of img.entries) enc.add(en.schema, en.message as MessageShape<typeof en.schema>, en.payload);
    writeEncodedImage(join(dir, img.file), enc);
  }
  writeFileSync(join(dir, `pages-${PAGES_ID}.img`), MEMFD_PAGES);
});

describe("our reader", () => {
  for (const img of IMAGES) {
    test(`${img.file} round-trips`, () => {
      const back = readImageFile(join(dir, img.file));
      expect(back.kind.name).toBe(img.kind);
      expect(back.entries.length).toBe(img.entries.length);
      back.entries.forEach((got, i) => {
        const want = img.entries[i]!;
        expect(got.message.$typeName).toBe(want.schema.typeName);
        expect(equals(want.schema, got.message as MessageShape<typeof want.schema>, want.message as MessageShape<typeof want.schema>)).toBe(true);
        if (want.payload) expect(got.payload).toEqual(want.payload);
        else expect(got.payload).toBeUndefined();
      });
    });
  }

  test("every kind of open file keeps its sub-message", () => {
    const files = readImageFile(join(dir, "files.img")).entries.map((x) => x.message as FileEntry);
    const byType = (t: FdTypes) => files.filter((f) => f.type === t);
    expect(byType(FdTypes.INETSK).map((f) => f.isk?.srcPort)).toEqual([8080, 5353]);
    expect(byType(FdTypes.INETSK)[1]!.isk!.srcAddr).toEqual(LOOPBACK6);
    expect(byType(FdTypes.UNIXSK).map((f) => Buffer.from(f.usk!.name).toString("latin1"))).toEqual(["/tmp/ckpt.sock", "\0ckpt-abstract"]);
    expect(byType(FdTypes.UNIXSK)[0]!.usk!.mntId).toBe(25);
    // Unset, it reads as CRIU's default, and is not shown.
    expect(byType(FdTypes.UNIXSK)[1]!.usk!.mntId).toBe(-1);
    expect(byType(FdTypes.EVENTFD)[0]!.efd!.counter).toBe(42n);
    expect(byType(FdTypes.EVENTPOLL)[0]!.epfd!.tfd.map((t) => t.tfd)).toEqual([5, 3]);
    expect(byType(FdTypes.EVENTPOLL)[0]!.epfd!.tfd[0]!.data).toBe(0xdeadbeefcafef00dn);
    expect(byType(FdTypes.SIGNALFD)[0]!.sgfd!.sigmask).toBe(0x4200n);
    expect(byType(FdTypes.TIMERFD)[0]!.tfd!.vnsec).toBe(500_000_000n);
    expect(byType(FdTypes.FIFO)[0]!.fifo).toMatchObject({ pipeId: 300001, regfId: 10 });
    expect(byType(FdTypes.TTY)[0]!.tty).toMatchObject({ ttyInfoId: 2, regfId: 12 });
    expect(byType(FdTypes.MEMFD)[0]!.memfd).toMatchObject({ inodeId: 1, pos: 4096n });
  });

  test("a non-chunked ghost file's payload is the rest of the file, even when empty", () => {
    const small = readImageFile(join(dir, "ghost-file-1a.img"));
    expect(new TextDecoder().decode(small.entries[0]!.payload)).toBe("deleted but still open\n");
    const link = readImageFile(join(dir, "ghost-file-1c.img"));
    expect(link.entries.length).toBe(1);
    expect(link.entries[0]!.payload).toEqual(new Uint8Array(0));
  });

  test("a chunked ghost file: header without payload, then chunks with theirs", () => {
    const big = readImageFile(join(dir, "ghost-file-1b.img"));
    expect(big.entries.map((x) => x.payload?.length)).toEqual([undefined, 4096, 4096]);
    expect(big.entries[2]!.payload).toEqual(pattern(4096, 4));
  });

  test("UnixSkEntry.name shows as crit shows it, quoted-printable", () => {
    const json = imageToJson(readImageFile(join(dir, "files.img")));
    const usk = json.entries.filter((x) => (x as { type: string }).type === "UNIXSK").map((x) => (x as { usk: { name: string } }).usk.name);
    expect(usk).toEqual(["/tmp/ckpt.sock", "=00ckpt-abstract"]);
  });

  test("quoted-printable matches Python's quopri on the awkward cases", () => {
    // Expected strings are what quopri.encodestring returned for these bytes.
    const qp = (b: number[] | string) => quotedPrintable(typeof b === "string" ? text(b) : Uint8Array.from(b));
    expect(qp("/run/a b ")).toBe("/run/a b=20");
    expect(qp("x".repeat(80))).toBe(`${"x".repeat(75)}=\nxxxxx`);
    expect(qp("tab\t\nend")).toBe("tab=09\nend");
    expect(qp([0x3d, 0xff, 0x2e])).toBe("=3D=FF.");
    expect(qp(".")).toBe("=2E");
    expect(qp([])).toBe("");
  });
});

describe("encoder and decoder limits", () => {
  test("an unset required field is refused: a unix socket without its options", () => {
    const enc = new ImageEncoder(kind("FILES"));
    const usk = create(UnixSkEntrySchema, { id: 1, ino: 2, type: 1, state: 7, flags: 2, uflags: 0, backlog: 0, peer: 0, fown: fown(), name: new Uint8Array() });
    expect(() => enc.add(FileEntrySchema, create(FileEntrySchema, { type: FdTypes.UNIXSK, id: 1, usk }))).toThrow(/FILES image: entry 0: .*required field not set/);
  });

  test("a ghost file's raw contents end the image", () => {
    const enc = new ImageEncoder(kind("GHOST_FILE"));
    enc.add(GhostFileEntrySchema, create(GhostFileEntrySchema, { uid: 0, gid: 0, mode: 0o100644 }), text("abc"));
    expect(() => enc.add(GhostChunkEntrySchema, create(GhostChunkEntrySchema, { len: 0n, off: 0n }))).toThrow(/runs to the end of the image/);
  });

  test("a chunked ghost header carries no payload; chunks must match their length", () => {
    const header = create(GhostFileEntrySchema, { uid: 0, gid: 0, mode: 0o100644, chunks: true, size: 10n });
    expect(() => new ImageEncoder(kind("GHOST_FILE")).add(GhostFileEntrySchema, header, text("x"))).toThrow(/carries no payload/);
    const enc = new ImageEncoder(kind("GHOST_FILE")).add(GhostFileEntrySchema, header);
    expect(() => enc.add(GhostChunkEntrySchema, create(GhostChunkEntrySchema, { len: 10n, off: 0n }), text("short"))).toThrow(
      /entry says 10 payload bytes, 5 given/,
    );
  });

  test("a socket queue packet cut short is a truncated payload", () => {
    const enc = new ImageEncoder(kind("SK_QUEUES"));
    enc.add(SkPacketEntrySchema, create(SkPacketEntrySchema, { idFor: 1, length: 8 }), text("12345678"));
    const whole = enc.bytes();
    expect(() => decodeImage(whole.subarray(0, whole.length - 3), "q.img")).toThrow(ImageError);
    expect(() => decodeImage(whole.subarray(0, whole.length - 3), "q.img")).toThrow(/truncated payload: entry says 8 bytes, 5 left/);
  });
});

describe("ckpt show", () => {
  test("the directory lists every image with its kind", () => {
    const r = runCkpt(["show", dir, "--json"]);
    expect(r.code).toBe(0);
    const all = parseExactJson(r.stdout) as Record<string, { magic: string }>;
    for (const img of IMAGES) expect(all[img.file]?.magic).toBe(img.kind);
    expect(all[`pages-${PAGES_ID}.img`]).toEqual({ magic: "PAGES", pages: 2, bytes: 8192 } as never);
  });

  for (const img of IMAGES) {
    test(`${img.file} prints as our reader decodes it`, () => {
      const r = runCkpt(["show", join(dir, img.file), "--json"]);
      expect(r.code).toBe(0);
      const shown = parseExactJson(r.stdout);
      expect(shown).toEqual(parseExactJson(stringifyJson(imageToJson(readImageFile(join(dir, img.file))))));
    });
  }

  test("payloads show as base64 in an `extra` key, as crit prints them", () => {
    const r = runCkpt(["show", join(dir, "sk-queues.img"), "--json"]);
    const json = parseExactJson(r.stdout) as { entries: { extra: string }[] };
    expect(unbase64(json.entries[0]!.extra)).toEqual(text("hello"));
    expect(unbase64(json.entries[1]!.extra)).toEqual(pattern(300, 7));
  });
});

type CritImage = { magic: string; entries: Record<string, unknown>[] };

function critDecode(file: string): CritImage {
  const r = Bun.spawnSync([CRIT!, "decode", "-i", file], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`crit decode ${file} failed: ${r.stderr.toString()}`);
  return parseExactJson(r.stdout.toString()) as CritImage;
}

function ckptShow(file: string): CritImage {
  const r = runCkpt(["show", file, "--json"]);
  if (r.code !== 0) throw new Error(`ckpt show ${file} failed: ${r.stderr}`);
  return parseExactJson(r.stdout) as CritImage;
}

describe("crit", () => {
  test("accepts every image", () => {
    expect(critFailures(dir)).toEqual([]);
  });

  describe.skipIf(!CRIT)("prints the same values as ckpt show", () => {
    for (const img of IMAGES.filter((i) => i.kind !== "PAGEMAP")) {
      test(img.file, () => {
        expect(ckptShow(join(dir, img.file))).toEqual(critDecode(join(dir, img.file)));
      });
    }

    test("files.img: the important fields of each kind", () => {
      const files = critDecode(join(dir, "files.img")).entries as Record<string, Record<string, unknown>>[];
      expect(files.map((f) => f.type as unknown as string)).toEqual(FILES.map((f) => FdTypes[f.type]));
      const isk = files[0]!.isk!;
      expect(isk).toMatchObject({ family: 2, type: 1, proto: 6, state: 10, src_port: 8080, src_addr: LOOPBACK4, backlog: 128 });
      expect(isk.opts).toMatchObject({ so_sndbuf: 212992, so_rcv_tmo_usec: 250000, tcp_keepidle: 7200, reuseaddr: true });
      expect(files[1]!.isk).toMatchObject({ family: 10, src_addr: LOOPBACK6, v6only: true, ifname: "lo" });
      expect(files[2]!.usk).toMatchObject({ name: "/tmp/ckpt.sock", state: 10, backlog: 16, mnt_id: 25, file_perms: { mode: 0o140755, uid: 0, gid: 0 } });
      expect(files[3]!.usk).toMatchObject({ name: "=00ckpt-abstract", peer: 200003, shutdown: "WRITE" });
      expect(files[3]!.usk).not.toHaveProperty("mnt_id");
      expect(files[4]!.efd).toMatchObject({ id: 5, flags: O_RDWR | O_NONBLOCK, counter: 42 });
      // Above 2^53: parseExactJson keeps it as a digit string.
      expect(files[5]!.epfd).toMatchObject({ tfd: [{ tfd: 5, events: 1, data: String(0xdeadbeefcafef00dn), inode: 1035 }, { tfd: 3, events: 0x19, data: 3 }] });
      expect(files[6]!.sgfd).toMatchObject({ sigmask: 0x4200 });
      expect(files[7]!.tfd).toMatchObject({ clockid: 1, ticks: 3, vsec: 0, vnsec: 500_000_000, isec: 1, insec: 0, settime_flags: 0 });
      expect(files[9]!.fifo).toEqual({ id: 9, pipe_id: 300001, regf_id: 10 });
      expect(files[11]!.tty).toMatchObject({ tty_info_id: 2, regf_id: 12 });
      expect(files[12]!.memfd).toMatchObject({ inode_id: 1, pos: 4096 });
    });

    test("payload images: crit reads the bytes we wrote", () => {
      const fifo = critDecode(join(dir, "fifo-data.img"));
      expect(fifo.entries[0]).toMatchObject({ pipe_id: 300001, bytes: 12, size: 65536 });
      expect(unbase64(fifo.entries[0]!.extra as string)).toEqual(text("fifo payload"));
      const q = critDecode(join(dir, "sk-queues.img"));
      expect(q.entries.map((x) => x.length)).toEqual([5, 300]);
      expect(q.entries[1]!.scm).toEqual([{ type: 1, rights: [5, 6] }]);
      expect(unbase64(q.entries[1]!.extra as string)).toEqual(pattern(300, 7));
    });

    test("ghost files: raw, chunked and empty", () => {
      const small = critDecode(join(dir, "ghost-file-1a.img"));
      expect(small.entries.length).toBe(1);
      expect(small.entries[0]).toMatchObject({ mode: 0o100600, ino: 424242, atim: { tv_sec: 1_700_000_000, tv_usec: 123456 } });
      expect(unbase64(small.entries[0]!.extra as string)).toEqual(text("deleted but still open\n"));
      const big = critDecode(join(dir, "ghost-file-1b.img"));
      expect(big.entries.length).toBe(3);
      expect(big.entries[0]).toMatchObject({ chunks: true, size: 20480 });
      expect(big.entries[0]).not.toHaveProperty("extra");
      expect(big.entries.slice(1).map((c) => [c.len, c.off])).toEqual([[4096, 0], [4096, 12288]]);
      expect(unbase64(big.entries[2]!.extra as string)).toEqual(pattern(4096, 4));
      const link = critDecode(join(dir, "ghost-file-1c.img"));
      expect(link.entries).toEqual([{ uid: 0, gid: 0, mode: 0o120777, dev: 0x803, ino: 424244, symlnk_target: "/etc/hostname", extra: "" }]);
    });

    test("remap, tty and memfd images", () => {
      expect(critDecode(join(dir, "remap-fpath.img")).entries.map((x) => x.remap_type)).toEqual(["GHOST", "LINKED", "PROCFS"]);
      const ttys = critDecode(join(dir, "tty-info.img")).entries;
      expect(ttys[0]).toMatchObject({ id: 1, type: "PTY", rdev: 0x502, pty: { index: 3 }, winsize: { ws_row: 24, ws_col: 80 } });
      expect((ttys[0]!.termios as { c_cc: number[] }).c_cc).toEqual(CC);
      expect(ttys[1]).toMatchObject({ exclusive: true, sid: 4242, pgrp: 4242, locked: false, packet_mode: false });
      expect(critDecode(join(dir, "memfd.img")).entries).toEqual([
        { name: "ckpt-memfd", uid: 0, gid: 0, size: 8192, shmid: SHMID, seals: 1, inode_id: 1 },
      ]);
    });

    test("the memfd's shmem pagemap is an ordinary PAGEMAP image to crit", () => {
      const pm = critDecode(join(dir, `pagemap-shmem-${SHMID}.img`));
      expect(pm.magic).toBe("PAGEMAP");
      expect(pm.entries[0]).toEqual({ pages_id: PAGES_ID });
      // crit 3.17 calls field 2 nr_pages and does not know field 5.
      expect(pm.entries[1]).toEqual({ vaddr: 0, nr_pages: 2, flags: 4 });
    });
  });
});
