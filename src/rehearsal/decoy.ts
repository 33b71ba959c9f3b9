/**
 * The decoy: a process of ckpt's own for a rehearsal (rehearse.ts) to dump
 * and restore. A tiny static program (sys/tiny-elf.ts, named "ckpt-decoy",
 * in its own session) shaped like the trees ckpt meets, so that the
 * rehearsal runs the code they need: two threads, an executable mapping and
 * a stack of written pages, a private mapping of a regular file (ckpt's own
 * executable, passed as its fd 3, which stays open), a pipe, a TCP socket
 * listening on 127.0.0.1, a pair of unix sockets, /dev/null on fds 0 and 2,
 * a pending alarm, and the code the dump borrows for its injected calls (an
 * rt_sigreturn trampoline and a `syscall; ret`). It waits in pause(); its
 * alarm ends it within DECOY_LIFETIME_S should the rehearsal be abandoned.
 */
import { AT, O, SYS } from "../sys/nr";
import { close, openat } from "../sys/libc";
import { asm, forkThenChild, launchTinyElf, ownSessionNamed, reportPid, tinyElf } from "../sys/tiny-elf";

export const DECOY_COMM = "ckpt-decoy";
/** How long a decoy lives at most (its alarm, restored along with it). */
const DECOY_LIFETIME_S = 10;
const MAPPED_FD = 3;
const PROT_READ = 1;
const MAP_PRIVATE = 2;
const AF_UNIX = 1;
const AF_INET = 2;
const SOCK_STREAM = 1;
/** The first 8 bytes of a sockaddr_in for 127.0.0.1, port 0: family 2, port 0, address 127.0.0.1. */
const LOOPBACK_ANY_PORT = 0x0100007f00000002n;
/** A thread's clone flags: CLONE_VM | FS | FILES | SIGHAND | THREAD | SYSVSEM. */
const THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000;
/** Where below the main thread's stack pointer the second thread's stack begins (the stack grows to it). */
const THREAD_STACK_BELOW = 0x10000;

function decoyCode(): number[] {
  const pauseLoop = [...asm.movEax(SYS.pause), ...asm.syscall, 0xeb, 0xf7]; // pause(); jmp back to the mov
  const listen = [...asm.movEsi(8), ...asm.movEax(SYS.listen), ...asm.syscall];
  return forkThenChild([
    ...ownSessionNamed(DECOY_COMM),
    ...asm.movEdi(DECOY_LIFETIME_S), ...asm.movEax(SYS.alarm), ...asm.syscall,
    // mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0)
    ...asm.xorEdi, ...asm.movEsi(4096), ...asm.movEdx(PROT_READ), ...asm.movR10d(MAP_PRIVATE), ...asm.movR8d(MAPPED_FD), ...asm.xorR9d,
    ...asm.movEax(SYS.mmap), ...asm.syscall,
    // pipe2(rsp, 0), into 8 bytes pushed for it
    ...asm.pushImm8(0), ...asm.movRdiRsp, ...asm.movEsi(0), ...asm.movEax(SYS.pipe2), ...asm.syscall,
    // A TCP socket listening on 127.0.0.1 (a port the kernel picks), and a connected pair of unix sockets.
    ...asm.movEdi(AF_INET), ...asm.movEsi(SOCK_STREAM), ...asm.xorEdx, ...asm.movEax(SYS.socket), ...asm.syscall,
    ...asm.movEdiEax,
    ...asm.pushImm8(0), ...asm.movabsRax(LOOPBACK_ANY_PORT), ...asm.pushRax, ...asm.movRsiRsp, ...asm.movEdx(16),
    ...asm.movEax(SYS.bind), ...asm.syscall,
    // Listening only where bound: in a network namespace without loopback, listen() would bind every address.
    ...asm.testEax, ...asm.jnz(listen.length), ...listen,
    ...asm.pushImm8(0), ...asm.movR10Rsp, ...asm.movEdi(AF_UNIX), ...asm.movEsi(SOCK_STREAM), ...asm.xorEdx,
    ...asm.movEax(SYS.socketpair), ...asm.syscall,
    // A second thread, which waits in pause() on a stack 64 KiB below this one's.
    ...asm.movEdi(THREAD_FLAGS), ...asm.movRsiRsp, ...asm.subRsi(THREAD_STACK_BELOW), ...asm.xorEdx, ...asm.xorR10d, ...asm.movR8d(0),
    ...asm.movEax(SYS.clone), ...asm.syscall,
    ...asm.testEax, ...asm.jnz(pauseLoop.length), ...pauseLoop,
    // Last, so that a rehearsal that has the pid finds all of the above in place.
    ...reportPid(),
    ...pauseLoop,
    // Never run: the code a dump borrows (dump/task/inject.ts).
    ...asm.movEax(SYS.rt_sigreturn), ...asm.syscall,
    ...asm.syscall, 0xc3,
  ]);
}

/** Launch a decoy and return its pid once it runs. */
export async function launchDecoy(): Promise<number> {
  const mapped = openat(AT.FDCWD, process.execPath, O.RDONLY | O.CLOEXEC);
  try {
    return await launchTinyElf(DECOY_COMM, tinyElf(decoyCode()), { ownSession: true, fds: [mapped] });
  } finally {
    close(mapped);
  }
}
