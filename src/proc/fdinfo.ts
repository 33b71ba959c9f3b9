/** /proc/PID/fdinfo/N: position, flags and per-kind lines of one open fd. */
import type { ProcFs, ProcTarget } from "./procfs";

export interface InotifyWatchInfo {
  wd: number;
  ino: bigint;
  /** Device of the watched inode in the kernel's internal form (see encodeKernelDev). */
  sdev: number;
  mask: number;
  ignoredMask: number;
  fhandleBytes: number;
  fhandleType: number;
  fhandle: Uint8Array;
}

/** What marks of a fanotify group have in common ("fanotify ..." lines). */
interface FanotifyMarkCommon {
  /** FAN_MARK_* flags the mark keeps (IGNORED_SURV_MODIFY, EVICTABLE, IGNORE). */
  mflags: number;
  mask: number;
  ignoredMask: number;
}

/** One mark of a fanotify fd, by what it is on. */
export type FanotifyMarkInfo =
  | (FanotifyMarkCommon & {
    type: "inode";
    ino: bigint;
    /** Kernel-internal form, as inotify's sdev. */
    sdev: number;
    fhandleBytes: number;
    fhandleType: number;
    fhandle: Uint8Array;
  })
  | (FanotifyMarkCommon & { type: "mount"; mntId: number })
  | (FanotifyMarkCommon & { type: "filesystem"; sdev: number })
  /** A mark on a mount namespace (FAN_MARK_MNTNS); `ns` names it as fdinfo does (inode or id, decimal). */
  | (FanotifyMarkCommon & { type: "mntns"; ns: string })
  /** A kind of mark newer than this parser: the line as the kernel wrote it. */
  | (FanotifyMarkCommon & { type: "unknown"; line: string });

/**
 * A lock taken through this open file by the fd's process ("lock:" line, as
 * the kernel's lock_get_status writes it):
 * "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF".
 */
export interface FdLockInfo {
  /** POSIX, OFDLCK, FLOCK, LEASE, ACCESS ... as the kernel names it. */
  kind: string;
  /** ADVISORY, or what else the kernel says (a lease's state follows its kind). */
  mode: string;
  /** READ, WRITE or UNLCK. */
  type: string;
  pid: number;
  start: bigint;
  /** Last byte locked; undefined for "EOF" (to the end of the file). */
  end?: bigint;
  line: string;
}

/** One "lock:" line's words after the id; undefined when they do not parse. */
function parseLockLine(rest: string): FdLockInfo | undefined {
  const line = rest.trim();
  const words = line.split(/\s+/).slice(1);
  // A lease has its state after its kind ("LEASE  ACTIVE    READ ..."); others "ADVISORY".
  const [kind, mode, type, pid, , start, end] = words;
  if (!kind || !mode || !type || pid === undefined || start === undefined || end === undefined || !/^-?\d+$/.test(pid) || !/^\d+$/.test(start)) return undefined;
  return { kind, mode, type, pid: Number(pid), start: BigInt(start), ...(end === "EOF" ? {} : { end: BigInt(end) }), line };
}

/** A fanotify fd's group: fanotify_init's flags and event_f_flags, and its marks. */
export interface FanotifyInfo {
  flags: number;
  eventFlags: number;
  marks: FanotifyMarkInfo[];
}

/** One file an eventpoll fd watches ("tfd:" line). */
export interface EpollTargetInfo {
  /** fd number of the watched file in the table it was added from. */
  tfd: number;
  events: number;
  data: bigint;
  pos: bigint;
  ino: bigint;
  /** Device in the kernel's internal form, like inotify's sdev. */
  sdev: number;
}

export interface FdInfo {
  pos: bigint;
  /** O_* flags (octal in the file). */
  flags: number;
  mntId: number;
  ino: bigint;
  /** Every "key: value" line, raw (the per-kind lines: eventfd-count, tfd, ...). */
  fields: Map<string, string>;
  /** inotify fds only. */
  inotify: InotifyWatchInfo[];
  /** eventpoll fds only. */
  epoll: EpollTargetInfo[];
  /** fanotify fds only. */
  fanotify?: FanotifyInfo;
  /** Locks taken through this open file, by this fd's process or on the file itself. */
  locks: FdLockInfo[];
  /** "lock:" lines this parser could not read. */
  unreadLocks: string[];
}

/** Split "a:1 b:2" into a map; values stay strings. */
function pairs(s: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const tok of s.trim().split(/\s+/)) {
    const c = tok.indexOf(":");
    if (c > 0) m.set(tok.slice(0, c), tok.slice(c + 1));
  }
  return m;
}

function hexBytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

const hex = (p: Map<string, string>, key: string): number => Number.parseInt(p.get(key) ?? "0", 16);

/**
 * One "fanotify ..." line (`what` is the word after "fanotify ", `rest` what
 * follows its colon): the group's "flags:%x event-flags:%x", or one mark.
 */
function parseFanotifyLine(info: FanotifyInfo, what: string, rest: string): void {
  const p = pairs(`${what}:${rest}`);
  if (what === "flags") {
    info.flags = hex(p, "flags");
    info.eventFlags = hex(p, "event-flags");
    return;
  }
  const common = { mflags: hex(p, "mflags"), mask: hex(p, "mask"), ignoredMask: hex(p, "ignored_mask") };
  if (what === "ino") {
    info.marks.push({
      ...common, type: "inode", ino: BigInt(`0x${p.get("ino") ?? "0"}`), sdev: hex(p, "sdev"),
      fhandleBytes: hex(p, "fhandle-bytes"), fhandleType: hex(p, "fhandle-type"), fhandle: hexBytes(p.get("f_handle") ?? ""),
    });
  } else if (what === "mnt_id") {
    info.marks.push({ ...common, type: "mount", mntId: hex(p, "mnt_id") });
  } else if (what === "sdev") {
    info.marks.push({ ...common, type: "filesystem", sdev: hex(p, "sdev") });
  } else if (what === "mnt_ns" || what === "mnt_ns_id") {
    info.marks.push({ ...common, type: "mntns", ns: p.get(what) ?? "" });
  } else {
    info.marks.push({ ...common, type: "unknown", line: `fanotify ${what}:${rest}`.trim() });
  }
}

export function parseFdInfo(text: string): FdInfo {
  const fields = new Map<string, string>();
  const inotify: InotifyWatchInfo[] = [];
  const epoll: EpollTargetInfo[] = [];
  let fanotify: FanotifyInfo | undefined;
  const locks: FdLockInfo[] = [];
  const unreadLocks: string[] = [];
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const key = line.slice(0, colon);
    const rest = line.slice(colon + 1);
    if (key === "inotify wd") {
      const p = pairs(`wd:${rest}`);
      inotify.push({
        wd: Number.parseInt(p.get("wd") ?? "0", 16),
        ino: BigInt(`0x${p.get("ino") ?? "0"}`),
        sdev: Number.parseInt(p.get("sdev") ?? "0", 16),
        mask: Number.parseInt(p.get("mask") ?? "0", 16),
        ignoredMask: Number.parseInt(p.get("ignored_mask") ?? "0", 16),
        fhandleBytes: Number.parseInt(p.get("fhandle-bytes") ?? "0", 16),
        fhandleType: Number.parseInt(p.get("fhandle-type") ?? "0", 16),
        fhandle: hexBytes(p.get("f_handle") ?? ""),
      });
    } else if (key === "lock") {
      const lock = parseLockLine(rest);
      if (lock) locks.push(lock);
      else unreadLocks.push(line);
    } else if (key.startsWith("fanotify ")) {
      fanotify ??= { flags: 0, eventFlags: 0, marks: [] };
      parseFanotifyLine(fanotify, key.slice("fanotify ".length), rest);
    } else if (key === "tfd") {
      // tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x
      const p = pairs(`tfd:${rest}`.replace(/:\s+/g, ":"));
      epoll.push({
        tfd: Number(p.get("tfd") ?? "-1"),
        events: Number.parseInt(p.get("events") ?? "0", 16),
        data: BigInt(`0x${p.get("data") ?? "0"}`),
        pos: BigInt(p.get("pos") ?? "0"),
        ino: BigInt(`0x${p.get("ino") ?? "0"}`),
        sdev: Number.parseInt(p.get("sdev") ?? "0", 16),
      });
    } else {
      fields.set(key, rest.trim());
    }
  }
  return {
    pos: BigInt(fields.get("pos") ?? "0"),
    flags: Number.parseInt(fields.get("flags") ?? "0", 8),
    mntId: Number(fields.get("mnt_id") ?? -1),
    ino: BigInt(fields.get("ino") ?? "0"),
    fields,
    inotify,
    epoll,
    ...(fanotify ? { fanotify } : {}),
    locks,
    unreadLocks,
  };
}

export function readFdInfo(proc: ProcFs, target: ProcTarget, fd: number): FdInfo {
  return parseFdInfo(proc.readText(target, `fdinfo/${fd}`));
}
