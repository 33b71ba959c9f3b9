/**
 * Tiny static x86_64 programs that ckpt writes into a memfd and executes, so
 * that no helper binary has to be shipped: the restore seed, the dirty
 * tracker of iterative dumps and the restore's guard. Each is one read+execute segment at a fixed
 * address, with hand-assembled code (the `asm` helpers below).
 *
 * All start the same way: fork, the parent exits at once (so the program
 * runs on as nobody's Bun child: Bun waits for the pids it spawns, and that
 * wait would steal ptrace stops or reap what must stay), the child writes its
 * pid to stdout as 4 raw bytes and closes stdout.
 */
import { Errno, SysError } from "./errno";
import { pipe2 } from "./calls";
import { addressOf, close, cstr, readInto, syscall, writeAll } from "./libc";
import { O, SYS } from "./nr";

/** Where a tiny program's one segment is loaded (a fixed ET_EXEC address). */
export const TINY_ELF_BASE = 0x400000n;
const EHDR_SIZE = 64;
const PHDR_SIZE = 56;
/** Offset of the first code byte in the file (and from TINY_ELF_BASE in memory). */
export const TINY_CODE_OFFSET = EHDR_SIZE + PHDR_SIZE;

const imm32 = (n: number): number[] => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
function imm64(n: bigint): number[] {
  const out: number[] = [];
  for (let i = 0n; i < 8n; i++) out.push(Number((n >> (8n * i)) & 0xffn));
  return out;
}

/** The few instructions the tiny programs use, as bytes. */
export const asm = {
  movEax: (n: number): number[] => [0xb8, ...imm32(n)],
  movEdi: (n: number): number[] => [0xbf, ...imm32(n)],
  movEsi: (n: number): number[] => [0xbe, ...imm32(n)],
  movEdx: (n: number): number[] => [0xba, ...imm32(n)],
  movR8d: (n: number): number[] => [0x41, 0xb8, ...imm32(n)],
  movR10d: (n: number): number[] => [0x41, 0xba, ...imm32(n)],
  movabsRax: (n: bigint): number[] => [0x48, 0xb8, ...imm64(n)],
  xorEdi: [0x31, 0xff],
  xorEdx: [0x31, 0xd2],
  decEax: [0xff, 0xc8],
  xorR10d: [0x45, 0x31, 0xd2],
  xorR9d: [0x45, 0x31, 0xc9],
  movRdiRsp: [0x48, 0x89, 0xe7],
  movRsiRsp: [0x48, 0x89, 0xe6],
  movRdxRsp: [0x48, 0x89, 0xe2],
  subRsi: (n: number): number[] => [0x48, 0x81, 0xee, ...imm32(n)],
  movR10Rsp: [0x49, 0x89, 0xe2],
  movEdiEax: [0x89, 0xc7],
  pushRax: [0x50],
  pushImm8: (n: number): number[] => [0x6a, n & 0xff],
  testEax: [0x85, 0xc0],
  jz: (rel: number): number[] => [0x74, rel],
  jnz: (rel: number): number[] => [0x75, rel],
  syscall: [0x0f, 0x05],
} as const;

/** exit_group(0) */
const EXIT_0 = [...asm.xorEdi, ...asm.movEax(SYS.exit_group), ...asm.syscall];

/** fork(); test eax, eax; jz to `child`; the parent exits — the shape every program starts with. */
export function forkThenChild(child: readonly number[]): number[] {
  return [...asm.movEax(SYS.fork), ...asm.syscall, ...asm.testEax, ...asm.jz(EXIT_0.length), ...EXIT_0, ...child];
}

/** Offset in forkThenChild()'s output where `child` begins. */
export const FORK_PROLOGUE_SIZE = 5 + 2 + 2 + 2 + EXIT_0.length;

/** exit_group(0), for the end of a child part. */
export function exitZero(): number[] {
  return [...EXIT_0];
}

/** The child's first steps: write(1, &pid, 4), close(1). */
export function reportPid(): number[] {
  return [
    ...asm.movEax(SYS.getpid), ...asm.syscall,
    ...asm.pushRax,
    ...asm.movEdi(1), ...asm.movRsiRsp, ...asm.movEdx(4), ...asm.movEax(SYS.write), ...asm.syscall,
    ...asm.movEdi(1), ...asm.movEax(SYS.close), ...asm.syscall,
  ];
}

/** Little-endian bytes of an ASCII string, zero-padded to 8, as a bigint. */
function ascii64(s: string): bigint {
  let v = 0n;
  for (let i = Math.min(s.length, 8) - 1; i >= 0; i--) v = (v << 8n) | BigInt(s.charCodeAt(i) & 0xff);
  return v;
}

const PR_SET_NAME = 15;

/**
 * setsid(); chdir("/"); prctl(PR_SET_NAME, name): for a program that outlives
 * ckpt, out of ckpt's session (a ^C at ckpt's terminal does not reach it), on
 * no mount but the root's, and named for ps. Leaves 24 bytes on the stack.
 */
export function ownSessionNamed(name: string): number[] {
  if (name.length > 15) throw new RangeError(`a task name has at most 15 characters: ${name}`);
  const padded = name.padEnd(16, "\0");
  return [
    ...asm.movEax(SYS.setsid), ...asm.syscall,
    ...asm.pushImm8(0x2f), ...asm.movRdiRsp, ...asm.movEax(SYS.chdir), ...asm.syscall, // chdir("/")
    ...asm.movabsRax(ascii64(padded.slice(8))), ...asm.pushRax,
    ...asm.movabsRax(ascii64(padded.slice(0, 8))), ...asm.pushRax,
    ...asm.movRsiRsp, ...asm.movEdi(PR_SET_NAME), ...asm.movEax(SYS.prctl), ...asm.syscall,
  ];
}

/** A whole ELF file around `code`. */
export function tinyElf(code: readonly number[]): Uint8Array {
  const size = TINY_CODE_OFFSET + code.length;
  const bytes = new Uint8Array(size);
  const v = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]); // ELF, 64-bit, little-endian, version 1, SysV
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, TINY_ELF_BASE + BigInt(TINY_CODE_OFFSET), true); // e_entry
  v.setBigUint64(32, BigInt(EHDR_SIZE), true); // e_phoff
  v.setUint16(52, EHDR_SIZE, true);
  v.setUint16(54, PHDR_SIZE, true);
  v.setUint16(56, 1, true); // one program header
  const ph = EHDR_SIZE;
  v.setUint32(ph, 1, true); // PT_LOAD
  v.setUint32(ph + 4, 5, true); // PF_R | PF_X
  v.setBigUint64(ph + 16, TINY_ELF_BASE, true);
  v.setBigUint64(ph + 24, TINY_ELF_BASE, true);
  v.setBigUint64(ph + 32, BigInt(size), true);
  v.setBigUint64(ph + 40, BigInt(size), true);
  v.setBigUint64(ph + 48, 0x1000n, true);
  bytes.set(code, TINY_CODE_OFFSET);
  return bytes;
}

const MFD_CLOEXEC = 1;
const MFD_EXEC = 0x10;

/** `bytes` in a new memfd of ckpt's; the caller closes it. */
function programMemfd(name: string, bytes: Uint8Array): number {
  const cname = cstr(name);
  let fd: number;
  try {
    fd = Number(syscall("memfd_create", SYS.memfd_create, [addressOf(cname), MFD_CLOEXEC | MFD_EXEC], [JSON.stringify(name), "MFD_CLOEXEC|MFD_EXEC"]));
  } catch (e) {
    // Kernels before 6.3 know no MFD_EXEC; their memfds are executable anyway.
    if (!(e instanceof SysError) || e.errno !== Errno.EINVAL) throw e;
    fd = Number(syscall("memfd_create", SYS.memfd_create, [addressOf(cname), MFD_CLOEXEC], [JSON.stringify(name), "MFD_CLOEXEC"]));
  }
  try {
    writeAll(fd, bytes);
  } catch (e) {
    close(fd);
    throw e;
  }
  return fd;
}

export interface LaunchOptions {
  /** Start in a new session (setsid), away from ckpt's terminal and process group. */
  ownSession: boolean;
  /** ckpt's fds that become the program's fds 3, 4, ... */
  fds?: readonly number[];
}

/** A tiny program launched, whose child's pid is read when first asked for. */
export interface TinyLaunch {
  /** The pid its child reported; blocks until it has (a millisecond or two after the launch). */
  pid(): number;
}

/**
 * Launch a tiny program that starts with forkThenChild(reportPid() ...).
 * Its output goes to a pipe of ckpt's own, read with a plain read(2) when
 * the pid is wanted: no turn of the event loop is needed, so a caller can
 * launch, go on with its work while the program starts on another core, and
 * take the pid later. (Bun reaps the launching parent on its own.)
 */
export function startTinyElf(name: string, bytes: Uint8Array, opts: LaunchOptions): TinyLaunch {
  const fd = programMemfd(name, bytes);
  let readEnd = -1;
  try {
    const [r, w] = pipe2(O.CLOEXEC);
    readEnd = r;
    try {
      Bun.spawn([`/proc/${process.pid}/fd/${fd}`], {
        stdio: ["ignore", w, "ignore", ...(opts.fds ?? [])],
        detached: opts.ownSession,
      });
    } finally {
      // The program's copies are the only write ends left: EOF if it dies before reporting.
      close(w);
    }
  } catch (e) {
    if (readEnd >= 0) close(readEnd);
    throw e;
  } finally {
    close(fd);
  }
  /** The pid once read, or why there is none (the pipe is closed either way). */
  let outcome: number | Error | null = null;
  const readPid = (): number => {
    const out = new Uint8Array(4);
    let got = 0;
    try {
      while (got < 4) {
        let n: number;
        try {
          n = readInto(readEnd, out.subarray(got));
        } catch (e) {
          if (e instanceof SysError && e.errno === Errno.EINTR) continue;
          throw e;
        }
        if (n === 0) break;
        got += n;
      }
    } finally {
      close(readEnd);
    }
    if (got !== 4) throw new Error(`${name} did not start (${got} bytes of output)`);
    return new DataView(out.buffer).getInt32(0, true);
  };
  return {
    pid(): number {
      if (outcome === null) {
        try {
          outcome = readPid();
        } catch (e) {
          outcome = e instanceof Error ? e : new Error(String(e));
        }
      }
      if (outcome instanceof Error) throw outcome;
      return outcome;
    },
  };
}

/** startTinyElf, then its pid. */
export async function launchTinyElf(name: string, bytes: Uint8Array, opts: LaunchOptions): Promise<number> {
  return startTinyElf(name, bytes, opts).pid();
}
