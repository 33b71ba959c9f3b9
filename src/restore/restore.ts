/**
 * `ckpt restore`: bring back a tree from an image set, with its pids, memory,
 * threads, registers, signals, files and shared fds, and let it run on.
 *
 * Everything is done by ckpt through ptrace and injected system calls in
 * tasks it creates itself (puppet.ts): no helper binary, no code of ckpt's in
 * the restored tasks. The order:
 *  1. read and check the images, refuse pids that are taken;
 *  2. start the seed (seed.ts), give it the syscall page, clone the tree
 *     with the original pids (tree.ts), let the seed exit;
 *  3. open every file in ckpt (files/), then per process: rlimits, address
 *     space and pages (mm.ts), fds, cwd/root/umask, signal actions, timers,
 *     then its threads and their state, queued signals, credentials;
 *  4. unmap the syscall page, park every thread in a signal stop and set its
 *     registers, FPU state and blocked mask there, so the kernel's
 *     syscall-restart rules apply to them as if the dump had never happened;
 *  5. detach everything (job-stopped tasks get their SIGSTOP back first).
 * Any failure kills every task made so far. ckpt installs no signal
 * handlers: the restore is synchronous, so a handler would only run once it
 * is over. A SIGINT/SIGTERM/SIGKILL simply ends ckpt, and PTRACE_O_EXITKILL
 * makes the kernel kill every task it still traces; a seed not yet seized
 * ends itself after 30 s (seed.ts).
 */
import { CoreEntrySchema, type CoreEntry } from "../image/gen/core_pb";
import { FdinfoEntrySchema, type FdinfoEntry } from "../image/gen/fdinfo_pb";
import { FsEntrySchema, type FsEntry } from "../image/gen/fs_pb";
import { MmEntrySchema, type MmEntry } from "../image/gen/mm_pb";
import { PagemapHeadSchema, type PagemapEntry, type PagemapHead } from "../image/gen/pagemap_pb";
import { PstreeEntrySchema, type PstreeEntry } from "../image/gen/pstree_pb";
import { CoreEntry_March, TaskKobjIdsEntrySchema, type TaskKobjIdsEntry } from "../image/gen/core_pb";
import { readMaps } from "../proc/maps";
import { ProcFs } from "../proc/procfs";
import { writeWholeFile } from "../sys/file";
import { addressOf, callCountsSince, kill, snapshotCallCounts, statx, syscall, waitpid } from "../sys/libc";
import { AT, MAP, PROT, SIG, SYS, W } from "../sys/nr";
import * as ptrace from "../sys/ptrace";
import { SysError, Errno } from "../sys/errno";
import { addEpollWatches, aboveAll, placeFds, restoreFs } from "./fds";
import { OpenedFiles } from "./files/open-files";
import { ImageSet } from "./image-set";
import { findFree, type Range } from "./layout";
import { rebuildMm } from "./mm";
import { blockAllSignals, Puppet, puppetCounters, RESTORE_PTRACE_OPTIONS, setSigmask } from "./puppet";
import { restoreRegisters } from "./regs";
import { startSeed } from "./seed";
import {
  requeueSignals, restoreCreds, restoreItimers, restoreScheduling, restoreSigactions, restoreThreadState, setChildSubreaper,
} from "./task";
import { createProcesses, createThreads, PidTakenError } from "./tree";
import { TargetFds } from "./target-fds";

export interface RestoreOptions {
  dir: string;
  /** Leave the restored tree running on its own and return at once (-d). */
  detach: boolean;
  /** Write the root's pid here once it runs. */
  pidfile?: string;
  /** The tree was dumped with --shell-job: it joins ckpt's session and terminal. */
  shellJob?: boolean;
}

export interface RestoreFigures {
  /** Creating the seed and cloning the tree. */
  forkMs: number;
  /** Address spaces, with the page copy. */
  mmMs: number;
  pagesMs: number;
  filesMs: number;
  totalMs: number;
}

export interface RestoreResult {
  dir: string;
  root: number;
  processes: number;
  threads: number;
  pagesRestored: number;
  injectedCalls: number;
  ptraceStops: number;
  figures: RestoreFigures;
  syscalls: Record<string, number>;
}

/** Bytes restore maps for its own code and scratch in each task; unmapped before the task runs. */
const SYSCALL_PAGE_SIZE = 0x10000n;
const SCRATCH_OFFSET = 0x100n;
const PR_SET_CHILD_SUBREAPER = 36;
const TASK_STOPPED = 3;

/** Everything the images say about one process. */
interface ProcessPlan {
  entry: PstreeEntry;
  cores: Map<number, CoreEntry>;
  ids: TaskKobjIdsEntry;
  mm: MmEntry;
  fs: FsEntry;
  fdinfo: FdinfoEntry[];
  pagemap: PagemapEntry[];
  pagesPath: string;
}

function loadPlan(images: ImageSet): ProcessPlan[] {
  const pstree = images.entries("pstree.img", PstreeEntrySchema);
  if (pstree.length === 0) throw new Error(`${images.path("pstree.img")} lists no process`);
  return pstree.map((entry) => {
    const pid = entry.pid;
    if (entry.threads.length === 0 || entry.threads[0] !== pid) throw new Error(`pstree.img: process ${pid} does not list itself as its first thread`);
    const cores = new Map(entry.threads.map((tid) => [tid, images.one(`core-${tid}.img`, CoreEntrySchema)]));
    for (const [tid, c] of cores) {
      if (c.mtype !== CoreEntry_March.X86_64) throw new Error(`core-${tid}.img is for architecture ${c.mtype}; this ckpt restores x86_64 tasks`);
      if (!c.threadInfo || !c.threadCore) throw new Error(`core-${tid}.img has no thread state`);
    }
    if (!cores.get(pid)?.tc) throw new Error(`core-${pid}.img has no task core`);
    const ids = images.one(`ids-${pid}.img`, TaskKobjIdsEntrySchema);
    const raw = images.raw(`pagemap-${pid}.img`);
    const first = raw[0]?.message;
    if (!first || first.$typeName !== PagemapHeadSchema.typeName) throw new Error(`pagemap-${pid}.img has no head entry`);
    const head = first as unknown as PagemapHead;
    return {
      entry, cores, ids,
      mm: images.one(`mm-${pid}.img`, MmEntrySchema),
      fs: images.one(`fs-${pid}.img`, FsEntrySchema),
      fdinfo: images.entries(`fdinfo-${ids.filesId}.img`, FdinfoEntrySchema),
      pagemap: raw.slice(1).map((e) => e.message as unknown as PagemapEntry),
      pagesPath: images.path(`pages-${head.pagesId}.img`),
    };
  });
}

function taskExists(pid: number): boolean {
  try {
    statx(AT.FDCWD, `/proc/${pid}`);
    return true;
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENOENT) return false;
    throw e;
  }
}

function checkPidsFree(plan: readonly ProcessPlan[]): void {
  for (const p of plan) {
    for (const tid of p.entry.threads) {
      if (taskExists(tid)) throw new PidTakenError(tid, tid === p.entry.pid ? `process ${p.entry.pid}` : `thread of process ${p.entry.pid}`);
    }
  }
}

/** Kill what a failed restore made; never throws. */
function killAll(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      kill(pid, SIG.KILL);
    } catch {
      // Already gone.
    }
  }
  for (const pid of pids) {
    try {
      // Collect the exit as tracer (and as parent, for the root under a subreaper ckpt).
      for (;;) if (!ptrace.isStopped(waitpid(pid, W.ALL).status)) break;
    } catch {
      // Not ours to wait for, or already collected.
    }
  }
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const calls0 = snapshotCallCounts();
  const counters0 = { ...puppetCounters };
  const images = ImageSet.open(opts.dir);
  const plan = loadPlan(images);
  checkPidsFree(plan);
  const proc = new ProcFs();
  const created: number[] = [];
  let seedPid = 0;
  let files: OpenedFiles | undefined;
  const figures: RestoreFigures = { forkMs: 0, mmMs: 0, pagesMs: 0, filesMs: 0, totalMs: 0 };
  let pagesRestored = 0;
  if (!opts.detach) syscall("prctl", SYS.prctl, [PR_SET_CHILD_SUBREAPER, 1], ["PR_SET_CHILD_SUBREAPER", "1"]);
  try {
    const seed = await startSeed(!opts.shellJob);
    seedPid = seed.pid;
    ptrace.seize(seed.pid, RESTORE_PTRACE_OPTIONS);
    ptrace.interrupt(seed.pid);
    ptrace.waitTracee(seed.pid);
    blockAllSignals(seed.pid);
    const seedTask = new Puppet(seed.pid, seed.syscallAddress);

    const taken: Range[] = [...plan.flatMap((p) => p.mm.vmas), ...readMaps(proc, seed.pid)];
    const pageAt = findFree(taken, SYSCALL_PAGE_SIZE);
    const syscallPage: Range = { start: pageAt, end: pageAt + SYSCALL_PAGE_SIZE };
    const rwx = PROT.READ | PROT.WRITE | PROT.EXEC;
    seedTask.call(SYS.mmap, [pageAt, SYSCALL_PAGE_SIZE, rwx, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0]);
    seedTask.write(pageAt, new Uint8Array([0x0f, 0x05]));
    seedTask.syscallAt = pageAt;
    const scratch = pageAt + SCRATCH_OFFSET;

    const tree = createProcesses(seedTask, scratch, plan.map((p) => p.entry), created);
    seedTask.callNoReturn(SYS.exit_group, [0]);
    seedPid = 0;
    figures.forkMs = performance.now() - started;

    for (const p of plan) restoreRlimits(p);
    let t = performance.now();
    files = OpenedFiles.open(images, { shellJob: opts.shellJob ?? false });
    figures.filesMs += performance.now() - t;

    const epollsDone = new Set<number>();
    const threads = new Map<number, Puppet>();
    for (const p of plan) {
      const pid = p.entry.pid;
      const task = tree.processes.get(pid);
      if (!task) throw new Error(`process ${pid} was not created`);
      const opened = files;
      const fds = new TargetFds(task, process.pid);
      fds.reset(aboveAll(p.fdinfo));
      t = performance.now();
      const fill = rebuildMm({
        puppet: task, pid, mm: p.mm, pagemap: p.pagemap, pagesPath: p.pagesPath, syscallPage, scratch, fds,
        ckptFd: (id) => opened.fd(id), proc,
      });
      figures.mmMs += performance.now() - t;
      figures.pagesMs += fill.ms;
      pagesRestored += fill.pages;
      t = performance.now();
      placeFds(fds, p.fdinfo, opened);
      restoreFs(task, fds, p.fs, opened, scratch);
      addEpollWatches(task, scratch, p.fdinfo, opened, epollsDone);
      fds.done();
      figures.filesMs += performance.now() - t;

      const tc = p.cores.get(pid)?.tc;
      if (!tc) throw new Error(`core-${pid}.img has no task core`);
      restoreSigactions(task, scratch, tc);
      restoreItimers(task, scratch, tc);
      task.call(SYS.personality, [tc.personality]);
      if (tc.childSubreaper) setChildSubreaper(task);
      if (tc.oomScoreAdj !== undefined && tc.oomScoreAdj !== 0) writeWholeFile(`/proc/${pid}/oom_score_adj`, new TextEncoder().encode(String(tc.oomScoreAdj)));

      const others = createThreads(task, scratch, p.entry.threads.slice(1), created);
      const all = [task, ...others];
      for (const th of all) {
        threads.set(th.tid, th);
        const core = p.cores.get(th.tid);
        const thc = core?.threadCore;
        if (!core || !thc) throw new Error(`core-${th.tid}.img has no thread core`);
        restoreThreadState(th, scratch, core, thc);
        restoreScheduling(th.tid, thc);
        requeueSignals(th, scratch, pid, thc.signalsP?.signals, th.tid);
      }
      requeueSignals(task, scratch, pid, tc.signalsS?.signals);
      for (const th of all) {
        const creds = p.cores.get(th.tid)?.threadCore?.creds;
        if (creds) restoreCreds(th, scratch, creds);
      }
    }
    files.finish();
    files = undefined;

    // Last: the syscall page goes, and every thread gets its registers in a signal stop.
    for (const p of plan) {
      const leader = tree.processes.get(p.entry.pid);
      leader?.call(SYS.munmap, [syscallPage.start, SYSCALL_PAGE_SIZE]);
      for (const tid of p.entry.threads) {
        const th = threads.get(tid);
        const core = p.cores.get(tid);
        if (!th || !core?.threadInfo) throw new Error(`thread ${tid} has no state to resume with`);
        th.parkInSignalStop();
        restoreRegisters(tid, core.threadInfo);
        setSigmask(tid, core.threadCore?.blkSigset ?? core.tc?.blkSigset ?? 0n);
      }
    }
    for (const p of plan) {
      if (p.cores.get(p.entry.pid)?.tc?.taskState === TASK_STOPPED) kill(p.entry.pid, SIG.STOP);
    }
    for (const p of plan) for (const tid of p.entry.threads) ptrace.detach(tid);
    created.length = 0;
  } catch (e) {
    files?.abort().forEach((m: string) => process.stderr.write(`ckpt: warning: while cleaning up files: ${m}\n`));
    killAll([...created, ...(seedPid ? [seedPid] : [])]);
    throw e;
  } finally {
    proc.close();
  }
  const root = plan[0]?.entry.pid ?? 0;
  if (opts.pidfile) writeWholeFile(opts.pidfile, new TextEncoder().encode(`${root}\n`), 0o644);
  figures.totalMs = performance.now() - started;
  return {
    dir: opts.dir, root, processes: plan.length,
    threads: plan.reduce((s, p) => s + p.entry.threads.length, 0),
    pagesRestored,
    injectedCalls: puppetCounters.calls - counters0.calls,
    ptraceStops: puppetCounters.stops - counters0.stops,
    figures, syscalls: callCountsSince(calls0),
  };
}

/** Resource limits, set from ckpt before anything the limits govern (fd numbers, stack). */
function restoreRlimits(p: ProcessPlan): void {
  const limits = p.cores.get(p.entry.pid)?.tc?.rlimits?.rlimits ?? [];
  const v = new BigUint64Array(2);
  limits.forEach((l, resource) => {
    v[0] = l.cur;
    v[1] = l.max;
    syscall("prlimit64", SYS.prlimit64, [p.entry.pid, resource, addressOf(v), 0], [String(p.entry.pid), String(resource), `{${l.cur}, ${l.max}}`, "NULL"]);
  });
}

/**
 * Wait for the restored root to end (ckpt is its parent as a subreaper) and
 * return its exit status as a shell would: the code, or 128 + signal.
 * Orphans of the tree that reparent to ckpt meanwhile are reaped too.
 */
export function waitForRoot(root: number): number {
  for (;;) {
    const { pid, status } = waitpid(-1, 0);
    if (pid !== root) continue;
    if (ptrace.isExited(status)) return ptrace.exitCode(status);
    if (ptrace.isSignaled(status)) return 128 + ptrace.termSig(status);
  }
}
