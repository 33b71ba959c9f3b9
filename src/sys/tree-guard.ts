/**
 * A guard: a set of processes comes out whole or not at all, even when ckpt
 * is killed at the wrong moment. Two users:
 *
 * The restore (restore/restore.ts). Until its very end a restore holds
 * every task with PTRACE_O_EXITKILL, so a ckpt that dies takes the
 * half-built tree with it. The end itself is not one instant: ckpt detaches
 * the threads one by one, and a kill between two detaches would leave the
 * processes let go so far running without the rest (EXITKILL then kills
 * only the ones still traced). So before the first detach ckpt starts a
 * guard over the tree, and releases it once every thread is let go.
 *
 * `ckpt lazy-pages` (transfer/lazy-pages.ts). A lazily restored tree runs
 * before its memory is in; were the daemon killed, its userfaultfds would
 * close and every page not yet placed would read as zeros. So the daemon
 * starts a guard per process as it takes its userfaultfd, which holds a
 * copy of it too: a daemon that dies leaves the faulting threads waiting
 * (nobody answers, nothing reads as zeros) until the guard has killed them.
 * It is released once every page is in place.
 *
 * The guard is a tiny program (sys/tiny-elf.ts, named "ckpt-guard", in its
 * own session) that holds a pidfd of every guarded process and the read end
 * of a pipe whose only write end is ckpt's. It blocks in read(). Released,
 * it reads one byte and exits; if ckpt dies first, read() sees the end of
 * the pipe and the guard SIGKILLs every guarded process through its pidfds
 * (which name those processes, never a later owner of their pids). A kill
 * of ckpt after its work but before that byte also ends them: ckpt did not
 * report success, and the outcome stays all or nothing.
 */
import { pidfdOpen } from "./calls";
import { CommitPipe } from "./commit-pipe";
import { close, waitpid } from "./libc";
import { SIG, SYS } from "./nr";
import { asm, exitZero, forkThenChild, ownSessionNamed, reportPid, startTinyElf, tinyElf, type TinyLaunch } from "./tiny-elf";

export const GUARD_COMM = "ckpt-guard";
/** The guard's end of the pipe; the pidfds follow it, then the fds it only holds. */
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

export class TreeGuard {
  private constructor(
    private readonly launched: TinyLaunch,
    private readonly pipe: CommitPipe,
  ) {}

  /**
   * Launch a guard over `pids`, holding a copy of each fd of `hold` for as
   * long as it runs. It starts on its own meanwhile (its launcher holds the
   * fds from the moment this returns); `pid` waits for it to run, which a
   * restore does before its first detach.
   */
  static launch(pids: readonly number[], hold: readonly number[] = []): TreeGuard {
    const pipe = CommitPipe.create();
    const pidfds: number[] = [];
    try {
      for (const pid of pids) pidfds.push(pidfdOpen(pid));
      return new TreeGuard(startTinyElf(GUARD_COMM, tinyElf(guardCode(pids.length)), { ownSession: true, fds: [pipe.readEnd, ...pidfds, ...hold] }), pipe);
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

  /** The work is done (the tree is whole and running): the guard ends and leaves it be. */
  release(): void {
    this.pipe.commit();
  }

  /**
   * Collect the released guard's exit when it is ckpt's child (a restoring
   * ckpt, a subreaper, takes it from its launcher): it would otherwise stay
   * a zombie as long as ckpt runs on (a rehearsal's restore, rehearsal/rehearse.ts).
   */
  reap(): void {
    try {
      waitpid(this.pid, 0);
    } catch {
      // Not ckpt's child after all, or collected already.
    }
  }

  /** Close ckpt's end without the word: the guard kills the processes (ckpt failed). */
  abandon(): void {
    this.pipe.abandon();
  }
}
