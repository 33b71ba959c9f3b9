/**
 * Kernel struct layouts (x86_64), decoded and encoded in this one place.
 * Offsets are the kernel's UAPI ones; test/structs.test.ts checks them.
 */

// ---------------------------------------------------------------- iovec

/** struct iovec { void *iov_base; size_t iov_len; }: two u64 words. */
export const IOVEC_SIZE = 16;

/**
 * Fill iovec slot `i` of `vec` (a BigUint64Array of 2*n words). The caller keeps
 * whatever `base` points into alive for as long as the kernel may use it.
 */
export function setIovec(vec: BigUint64Array, i: number, base: number | bigint, len: number | bigint): void {
  vec[2 * i] = BigInt(base);
  vec[2 * i + 1] = BigInt(len);
}

// ---------------------------------------------------------------- statx

export const STATX_SIZE = 256;
export const STATX_OFF = {
  mask: 0, blksize: 4, attributes: 8, nlink: 16, uid: 20, gid: 24, mode: 28, ino: 32,
  size: 40, blocks: 48, attributes_mask: 56, atime: 64, btime: 80, ctime: 96, mtime: 112,
  rdev_major: 128, rdev_minor: 132, dev_major: 136, dev_minor: 140, mnt_id: 144,
} as const;

export interface Statx {
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  ino: bigint;
  size: bigint;
  /** Device of the filesystem, in the kernel's new_encode_dev form (as /proc shows st_dev). */
  dev: number;
  devMajor: number;
  devMinor: number;
  /** Device number a device node stands for. */
  rdevMajor: number;
  rdevMinor: number;
  mntId: bigint;
  mtimeSec: bigint;
  mtimeNsec: number;
}

/** The kernel's new_encode_dev(): the 32-bit dev_t that /proc and stat(2) report. */
export function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/**
 * The kernel's internal dev_t (MKDEV: major in the top 12 bits, minor in the low
 * 20), which fdinfo's inotify and fanotify lines print and CRIU's fsnotify
 * images store as s_dev.
 */
export function encodeKernelDev(major: number, minor: number): number {
  return ((major << 20) | (minor & 0xfffff)) >>> 0;
}

/** The major and minor number of a kernel-internal dev_t (see encodeKernelDev). */
export function decodeKernelDev(dev: number): { major: number; minor: number } {
  return { major: dev >>> 20, minor: dev & 0xfffff };
}

export function decodeStatx(buf: Uint8Array): Statx {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const o = STATX_OFF;
  const devMajor = v.getUint32(o.dev_major, true);
  const devMinor = v.getUint32(o.dev_minor, true);
  return {
    mode: v.getUint16(o.mode, true),
    uid: v.getUint32(o.uid, true),
    gid: v.getUint32(o.gid, true),
    nlink: v.getUint32(o.nlink, true),
    ino: v.getBigUint64(o.ino, true),
    size: v.getBigUint64(o.size, true),
    dev: encodeDev(devMajor, devMinor),
    devMajor,
    devMinor,
    rdevMajor: v.getUint32(o.rdev_major, true),
    rdevMinor: v.getUint32(o.rdev_minor, true),
    mntId: v.getBigUint64(o.mnt_id, true),
    mtimeSec: v.getBigInt64(o.mtime, true),
    mtimeNsec: v.getUint32(o.mtime + 8, true),
  };
}

// ---------------------------------------------------------------- user_regs_struct

/** Register names of struct user_regs_struct, in memory order (27 u64). */
export const USER_REGS = [
  "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
  "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base", "gs_base", "ds",
  "es", "fs", "gs",
] as const;
export type UserRegName = (typeof USER_REGS)[number];
export type UserRegs = Record<UserRegName, bigint>;
export const USER_REGS_SIZE = USER_REGS.length * 8;

export function decodeUserRegs(buf: Uint8Array): UserRegs {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const regs = {} as UserRegs;
  USER_REGS.forEach((name, i) => {
    regs[name] = v.getBigUint64(i * 8, true);
  });
  return regs;
}

export function encodeUserRegs(regs: UserRegs, buf = new Uint8Array(USER_REGS_SIZE)): Uint8Array {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  USER_REGS.forEach((name, i) => {
    v.setBigUint64(i * 8, regs[name], true);
  });
  return buf;
}

// ---------------------------------------------------------------- user_fpregs_struct (FXSAVE)

export const USER_FPREGS_SIZE = 512;
export const USER_FPREGS_OFF = {
  cwd: 0, swd: 2, twd: 4, fop: 6, rip: 8, rdp: 16, mxcsr: 24, mxcsr_mask: 28,
  st_space: 32, xmm_space: 160, padding: 416,
} as const;

export interface UserFpregs {
  cwd: number; swd: number; twd: number; fop: number;
  rip: bigint; rdp: bigint; mxcsr: number; mxcsrMask: number;
  /** 32 words: 8 x87 registers of 16 bytes. */
  stSpace: number[];
  /** 64 words: 16 XMM registers of 16 bytes. */
  xmmSpace: number[];
  /** 24 words of the FXSAVE reserved area. */
  padding: number[];
}

function words(v: DataView, off: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => v.getUint32(off + i * 4, true));
}

export function decodeUserFpregs(buf: Uint8Array): UserFpregs {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const o = USER_FPREGS_OFF;
  return {
    cwd: v.getUint16(o.cwd, true), swd: v.getUint16(o.swd, true),
    twd: v.getUint16(o.twd, true), fop: v.getUint16(o.fop, true),
    rip: v.getBigUint64(o.rip, true), rdp: v.getBigUint64(o.rdp, true),
    mxcsr: v.getUint32(o.mxcsr, true), mxcsrMask: v.getUint32(o.mxcsr_mask, true),
    stSpace: words(v, o.st_space, 32), xmmSpace: words(v, o.xmm_space, 64),
    padding: words(v, o.padding, 24),
  };
}

// ---------------------------------------------------------------- XSAVE area (NT_X86_XSTATE)

/**
 * Where each user xstate component lives in the standard (non-compacted) XSAVE
 * layout, which the NT_X86_XSTATE regset always uses, and how many u64 or u32
 * words CRIU's xsave entry keeps of it.
 */
export const XFEATURE = {
  YMM: { bit: 2, offset: 576, bytes: 256 },
  BNDREGS: { bit: 3, offset: 960, bytes: 64 },
  BNDCSR: { bit: 4, offset: 1024, bytes: 16 },
  OPMASK: { bit: 5, offset: 1088, bytes: 64 },
  ZMM_HI256: { bit: 6, offset: 1152, bytes: 512 },
  HI16_ZMM: { bit: 7, offset: 1664, bytes: 1024 },
  PKRU: { bit: 9, offset: 2688, bytes: 8 },
} as const;

/** Byte offsets in the XSAVE area: the header's xstate_bv, and XCR0 in the FXSAVE software bytes. */
export const XSAVE_HEADER_BV = 512;
export const XSAVE_SW_XCR0 = 464;

// ---------------------------------------------------------------- PAGEMAP_SCAN

/** struct pm_scan_arg: twelve u64 fields. */
export const PM_SCAN_ARG_SIZE = 96;
export const PM_SCAN_ARG_FIELDS = [
  "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
  "category_inverted", "category_mask", "category_anyof_mask", "return_mask",
] as const;
export type PmScanArg = Record<(typeof PM_SCAN_ARG_FIELDS)[number], bigint>;

export function encodePmScanArg(arg: Omit<PmScanArg, "size" | "walk_end">, buf = new Uint8Array(PM_SCAN_ARG_SIZE)): Uint8Array {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const full: PmScanArg = { ...arg, size: BigInt(PM_SCAN_ARG_SIZE), walk_end: 0n };
  PM_SCAN_ARG_FIELDS.forEach((name, i) => v.setBigUint64(i * 8, full[name], true));
  return buf;
}

/** walk_end after a PAGEMAP_SCAN call: where the kernel stopped walking. */
export function pmScanWalkEnd(buf: Uint8Array): bigint {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getBigUint64(4 * 8, true);
}

/** struct page_region { u64 start, end, categories; }. */
export const PAGE_REGION_SIZE = 24;
export interface PageRegion {
  start: bigint;
  end: bigint;
  categories: bigint;
}

export function decodePageRegions(buf: Uint8Array, count: number): PageRegion[] {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: PageRegion[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * PAGE_REGION_SIZE;
    out.push({
      start: v.getBigUint64(o, true),
      end: v.getBigUint64(o + 8, true),
      categories: v.getBigUint64(o + 16, true),
    });
  }
  return out;
}

// ---------------------------------------------------------------- file_handle

/** struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }. */
export const MAX_HANDLE_SZ = 128;
export const FILE_HANDLE_HEADER = 8;

export interface FileHandle {
  type: number;
  bytes: Uint8Array;
}

/** A buffer ready for name_to_handle_at: handle_bytes set to the room there is. */
export function emptyFileHandle(): Uint8Array {
  const buf = new Uint8Array(FILE_HANDLE_HEADER + MAX_HANDLE_SZ);
  new DataView(buf.buffer).setUint32(0, MAX_HANDLE_SZ, true);
  return buf;
}

export function decodeFileHandle(buf: Uint8Array): FileHandle {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = v.getUint32(0, true);
  return { type: v.getInt32(4, true), bytes: buf.slice(FILE_HANDLE_HEADER, FILE_HANDLE_HEADER + n) };
}

export function encodeFileHandle(h: FileHandle): Uint8Array {
  const buf = new Uint8Array(FILE_HANDLE_HEADER + h.bytes.length);
  const v = new DataView(buf.buffer);
  v.setUint32(0, h.bytes.length, true);
  v.setInt32(4, h.type, true);
  buf.set(h.bytes, FILE_HANDLE_HEADER);
  return buf;
}

// ---------------------------------------------------------------- linux_dirent64

/** One entry of a getdents64 buffer. */
export interface Dirent {
  ino: bigint;
  type: number;
  name: string;
}

/** struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }. */
export const DIRENT64_OFF = { ino: 0, off: 8, reclen: 16, type: 18, name: 19 } as const;

export function decodeDirents(buf: Uint8Array, len: number): Dirent[] {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: Dirent[] = [];
  const dec = new TextDecoder();
  for (let off = 0; off < len; ) {
    const reclen = v.getUint16(off + DIRENT64_OFF.reclen, true);
    const nameStart = off + DIRENT64_OFF.name;
    let nameEnd = nameStart;
    while (nameEnd < off + reclen && buf[nameEnd] !== 0) nameEnd++;
    out.push({
      ino: v.getBigUint64(off + DIRENT64_OFF.ino, true),
      type: v.getUint8(off + DIRENT64_OFF.type),
      name: dec.decode(buf.subarray(nameStart, nameEnd)),
    });
    off += reclen;
  }
  return out;
}

// ---------------------------------------------------------------- ptrace helpers

/** struct ptrace_peeksiginfo_args { u64 off; u32 flags; s32 nr; }. */
export const PEEKSIGINFO_ARGS_SIZE = 16;
export const PTRACE_PEEKSIGINFO_SHARED = 1;
export const SIGINFO_SIZE = 128;

export function encodePeeksiginfoArgs(off: number, flags: number, nr: number): Uint8Array {
  const buf = new Uint8Array(PEEKSIGINFO_ARGS_SIZE);
  const v = new DataView(buf.buffer);
  v.setBigUint64(0, BigInt(off), true);
  v.setUint32(8, flags, true);
  v.setInt32(12, nr, true);
  return buf;
}

/** struct uffdio_register { struct { u64 start, len; } range; u64 mode; u64 ioctls; }. */
export const UFFDIO_REGISTER_SIZE = 32;

export function encodeUffdioRegister(start: bigint, len: bigint, mode: number, buf = new Uint8Array(UFFDIO_REGISTER_SIZE)): Uint8Array {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  v.setBigUint64(0, start, true);
  v.setBigUint64(8, len, true);
  v.setBigUint64(16, BigInt(mode), true);
  v.setBigUint64(24, 0n, true);
  return buf;
}

/** struct uffdio_api { u64 api; u64 features; u64 ioctls; }. */
export const UFFDIO_API_SIZE = 24;

/** struct uffdio_copy { u64 dst, src, len, mode; s64 copy; }: 40 bytes. */
export const UFFDIO_COPY_SIZE = 40;

export function encodeUffdioCopy(dst: bigint, src: bigint, len: bigint, buf = new Uint8Array(UFFDIO_COPY_SIZE)): Uint8Array {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  v.setBigUint64(0, dst, true);
  v.setBigUint64(8, src, true);
  v.setBigUint64(16, len, true);
  v.setBigUint64(24, 0n, true);
  v.setBigInt64(32, 0n, true);
  return buf;
}

/** The `copy` field of a uffdio_copy or `zeropage` of a uffdio_zeropage after the ioctl: bytes done, or a negative errno. */
export function uffdioDone(buf: Uint8Array, offset: number): bigint {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getBigInt64(offset, true);
}

/** struct uffdio_zeropage { struct uffdio_range range; u64 mode; s64 zeropage; }: 32 bytes. */
export const UFFDIO_ZEROPAGE_SIZE = 32;

export function encodeUffdioZeropage(start: bigint, len: bigint, buf = new Uint8Array(UFFDIO_ZEROPAGE_SIZE)): Uint8Array {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  v.setBigUint64(0, start, true);
  v.setBigUint64(8, len, true);
  v.setBigUint64(16, 0n, true);
  v.setBigInt64(24, 0n, true);
  return buf;
}
