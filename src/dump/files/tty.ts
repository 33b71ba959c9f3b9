/**
 * Terminals. A process started from an interactive shell has the user's
 * terminal as stdio; that terminal is not part of the tree and cannot be
 * recreated, so — as CRIU does — it is dumped only when the user says the
 * tree is a shell job (--shell-job), and restore then hands the tree the
 * restorer's terminal. Saved per terminal: the pty index, termios, locked
 * termios, window size, exclusive mode, and the session and foreground
 * group that own it (from the /proc stat of the processes it controls).
 */
import { create } from "@bufbuild/protobuf";
import { FdTypes, FileEntrySchema } from "../../image/gen/fdinfo_pb";
import { TermiosEntrySchema, TtyFileEntrySchema, TtyInfoEntrySchema, TtyPtyEntrySchema, TtyType, WinsizeEntrySchema } from "../../image/gen/tty_pb";
import { readStat } from "../../proc/stat";
import { ioctl } from "../../sys/libc";
import { O, S_IF, S_IFMT } from "../../sys/nr";
import { encodeDev } from "../../sys/structs";
import { readFown, type OpenFd } from "./fd-access";
import { UnsupportedFileError } from "./file-table";
import type { FdDumpContext, FdKind } from "./kind";

/** Majors of the Unix98 pty slaves (/dev/pts/N). */
const PTS_MAJOR_FIRST = 136;
const PTS_MAJOR_LAST = 143;
const TTY_MAJORS = new Set([3, 4, 5, 188, 204, ...Array.from({ length: 16 }, (_, i) => 128 + i)]);

const TCGETS2 = 0x802c542a;
const TIOCGLCKTRMIOS = 0x5456;
const TIOCGWINSZ = 0x5413;
const TIOCGEXCL = 0x80045440;
/** struct termios2: four u32 flags, c_line, c_cc[19], then two u32 speeds. */
const TERMIOS2_SIZE = 44;
const NCCS = 19;

function isTerminal(f: OpenFd): boolean {
  return (f.st.mode & S_IFMT) === S_IF.CHR && TTY_MAJORS.has(f.st.rdevMajor);
}

function termios(bytes: Uint8Array, withSpeeds: boolean) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return create(TermiosEntrySchema, {
    cIflag: v.getUint32(0, true), cOflag: v.getUint32(4, true), cCflag: v.getUint32(8, true), cLflag: v.getUint32(12, true),
    cLine: v.getUint8(16), cIspeed: withSpeeds ? v.getUint32(36, true) : 0, cOspeed: withSpeeds ? v.getUint32(40, true) : 0,
    cCc: Array.from(bytes.subarray(17, 17 + NCCS)),
  });
}

/** Session and foreground group of the terminal: from a dumped process it controls, else none. */
function owner(ctx: FdDumpContext, pid: number, rdev: number): { sid: number; pgrp: number } {
  const st = readStat(ctx.proc, pid);
  if (st.ttyNr === rdev) return { sid: st.session, pgrp: st.tpgid > 0 ? st.tpgid : 0 };
  return { sid: 0, pgrp: 0 };
}

export const ttyKind: FdKind = {
  name: "terminal",
  type: FdTypes.TTY,
  matches: isTerminal,
  dump(f, id, ctx) {
    if (!ctx.opts.shellJob) throw new UnsupportedFileError(f.pid, f.fd, `a terminal (${f.link}); dump with --shell-job to save it`);
    if (f.st.rdevMajor < PTS_MAJOR_FIRST || f.st.rdevMajor > PTS_MAJOR_LAST) throw new UnsupportedFileError(f.pid, f.fd, `a terminal other than a pty slave (${f.link})`);
    const local = ctx.access.local(f.fd);
    const rdev = encodeDev(f.st.rdevMajor, f.st.rdevMinor);
    const infos = (ctx.shared.get("tty") as Map<number, number> | undefined) ?? new Map<number, number>();
    ctx.shared.set("tty", infos);
    let infoId = infos.get(rdev);
    if (infoId === undefined) {
      infoId = ctx.table.newId();
      infos.set(rdev, infoId);
      const t2 = new Uint8Array(TERMIOS2_SIZE);
      ioctl(local, TCGETS2, t2, "TCGETS2");
      const locked = new Uint8Array(TERMIOS2_SIZE);
      ioctl(local, TIOCGLCKTRMIOS, locked, "TIOCGLCKTRMIOS");
      const ws = new Uint16Array(4);
      ioctl(local, TIOCGWINSZ, new Uint8Array(ws.buffer), "TIOCGWINSZ");
      const excl = new Int32Array(1);
      ioctl(local, TIOCGEXCL, new Uint8Array(excl.buffer), "TIOCGEXCL");
      const { sid, pgrp } = owner(ctx, f.pid, rdev);
      ctx.table.image("tty-info.img", "TTY_INFO").add(TtyInfoEntrySchema, create(TtyInfoEntrySchema, {
        id: infoId, type: TtyType.PTY, locked: false, exclusive: (excl[0] ?? 0) !== 0, packetMode: false,
        sid, pgrp, rdev,
        termios: termios(t2, true), termiosLocked: termios(locked, false),
        winsize: create(WinsizeEntrySchema, { wsRow: ws[0] ?? 0, wsCol: ws[1] ?? 0, wsXpixel: ws[2] ?? 0, wsYpixel: ws[3] ?? 0 }),
        pty: create(TtyPtyEntrySchema, { index: (f.st.rdevMajor - PTS_MAJOR_FIRST) * 256 + f.st.rdevMinor }),
        uid: f.st.uid, gid: f.st.gid,
      }));
    }
    const fown = readFown(local);
    const regfId = ctx.table.addRegular({ path: f.link, flags: f.info.flags & ~O.CLOEXEC, pos: 0n, st: f.st, fown });
    ctx.table.add(create(FileEntrySchema, {
      type: FdTypes.TTY, id,
      tty: create(TtyFileEntrySchema, { id, ttyInfoId: infoId, flags: f.info.flags & ~O.CLOEXEC, fown, regfId }),
    }));
  },
};
