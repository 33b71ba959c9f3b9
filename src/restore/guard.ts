/**
 * The restore's guard: the tree comes back whole or not at all, even when
 * ckpt is killed while letting it go.
 *
 * Until its very end a restore holds every task with PTRACE_O_EXITKILL, so a
 * ckpt that dies takes the half-built tree with it. The end itself is not one
 * instant: ckpt detaches the threads one by one, and a kill between two
 * detaches would leave the processes let go so far running without the rest
 * (EXITKILL then kills only the ones still traced).
 *
 * So before the first detach ckpt starts the guard, a tiny program (sys/
 * tiny-elf.ts, named "ckpt-guard", in its own session) that holds a pidfd of
 * every restored process and the read end of a pipe whose only write end is
 * ckpt's. It blocks in read(). When every thread is detached ckpt writes one
 * byte and the guard exits; if ckpt dies first, read() sees the end of the
 * pipe and the guard SIGKILLs every process of the tree through its pidfds
 * (which name those processes, never a later owner of their pids). A kill of
 * ckpt after the last detach but before that byte also ends the tree: the
 * restore did not report success, and the outcome stays all or nothing.
 */
import { pidfdOpen } from "../sys/calls";
import { CommitPipe } from "../sys/commit-pipe";
import { close, waitpid } from "../sys/libc";
import { SIG, SYS } from "../sys/nr";
import { asm, exitZero, forkThenChild, ownSessionNamed, reportPid, startTinyElf, tinyElf, type TinyLaunch } from "../sys/tiny-elf";

export const GUARD_COMM = "ckpt-guard";
/** The guard's end of the pipe; the pidfds follow it. */
const PIPE_FD = 3;
const FIRST_PIDFD = 4;

function guardCode(processes: number): number[] {
  const exit = exitZero();
  const killAll: number[] = [];
  for (let i = 0; i < processes; i++) {
    killAll.push(
      ...asm.movEdi(FIRST_PIDFD + i), ...asm.movEsi(SIG.KILL), ...asm.xorEdx, ...asm.xorR10d,
      ...asm.movEax(SYS.pidfd_send_signal), ...asm.syscall,
    );
  }
  const child = [
    ...reportPid(),
    ...ownSessionNamed(GUARD_COMM),
    // read(3, rsp, 1): 1 means ckpt said the tree is whole; anything else, that ckpt is gone.
    ...asm.pushImm8(0), ...asm.movRsiRsp, ...asm.movEdi(PIPE_FD), ...asm.movEdx(1), ...asm.movEax(SYS.read), ...asm.syscall,
    ...asm.decEax, ...asm.jnz(exit.length), ...exit,
    ...killAll,
    ...exit,
  ];
  return forkThenChild(child);
}

export class RestoreGuard {
  private constructor(
    private readonly launched: TinyLaunch,
    private readonly pipe: CommitPipe,
  ) {}

  /**
   * Launch a guard over `pids` (every process of the restored tree, all
   * still traced by ckpt). It starts on its own meanwhile; `pid` waits for
   * it to run, which a restore does before its first detach.
   */
  static launch(pids: readonly number[]): RestoreGuard {
    const pipe = CommitPipe.create();
    const pidfds: number[] = [];
    try {
      for (const pid of pids) pidfds.push(pidfdOpen(pid));
      return new RestoreGuard(startTinyElf(GUARD_COMM, tinyElf(guardCode(pids.length)), { ownSession: true, fds: [pipe.readEnd, ...pidfds] }), pipe);
    } catch (e) {
      pipe.abandon();
      throw e;
    } finally {
      pipe.closeReadEnd();
      for (const fd of pidfds) close(fd);
    }
  }

  /** The guard's pid, once it runs. */
  get pid(): number {
    return this.launched.pid();
  }

  /** Wait until the guard runs (it reported its pid); from then on a ckpt that dies takes the tree along. */
  waitUntilRunning(): void {
    this.launched.pid();
  }

  /** The tree is whole and running: the guard ends and leaves it be. */
  release(): void {
    this.pipe.commit();
  }

  /**
   * Collect the released guard's exit: it is ckpt's child (ckpt, a
   * subreaper, took it from its launcher), and would otherwise stay a zombie
   * as long as ckpt runs on (a rehearsal's restore, rehearsal/rehearse.ts).
   */
  reap(): void {
    try {
      waitpid(this.pid, 0);
    } catch {
      // Not ckpt's child after all, or collected already.
    }
  }

  /** Close ckpt's end without the word: the guard kills the tree (the restore failed). */
  abandon(): void {
    this.pipe.abandon();
  }
}
