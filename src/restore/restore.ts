/**
 * `ckpt restore`: bring back a tree from an image set, with its pids, memory,
 * threads, registers, signals, files and shared fds, and let it run on.
 *
 * Everything is done by ckpt through ptrace and injected system calls in
 * tasks it creates itself (puppet.ts): no helper binary, no code of ckpt's in
 * the restored tasks. The order:
 *  1. read and check the whole image set (validate.ts), refuse pids that
 *     are taken;
 *  2. start the seed (seed.ts), give it the syscall page, clone the tree
 *     with the original pids (tree.ts), let the seed exit;
 *  3. open every file in ckpt (files/), then per process: rlimits, address
 *     space and pages (mm.ts), fds, cwd/root/umask, signal actions, timers,
 *     then its threads and their state, queued signals, credentials;
 *  4. unmap the syscall page, park every thread in a signal stop and set its
 *     registers, FPU state and blocked mask there, so the kernel's
 *     syscall-restart rules apply to them as if the dump had never happened;
 *  5. start the guard (sys/tree-guard.ts), detach everything (job-stopped tasks get
 *     their SIGSTOP back first), then tell the guard the tree is whole.
 * Any failure kills every task made so far. ckpt installs no signal
 * handlers: the restore is synchronous, so a handler would only run once it
 * is over. A SIGINT/SIGTERM/SIGKILL simply ends ckpt, and PTRACE_O_EXITKILL
 * makes the kernel kill every task it still traces; during the detaching,
 * the guard kills the whole tree instead; a seed not yet seized ends itself
 * after 30 s (seed.ts).
 */
import type { FileValidation } from "../image/file-validation";
import { isFieldSet } from "@bufbuild/protobuf";
import { CoreEntrySchema, type CoreEntry } from "../image/gen/core_pb";
import { FdinfoEntrySchema, FileEntrySchema, type FdinfoEntry } from "../image/gen/fdinfo_pb";
import { FsEntrySchema, type FsEntry } from "../image/gen/fs_pb";
import { MmEntrySchema, type MmEntry } from "../image/gen/mm_pb";
import { PageChain } from "../image/page-chain";
import { LazyHandoff, lazyAreas } from "./lazy";
import { TcpRestoreSession } from "./files/tcp-stream";
import { InventoryEntrySchema } from "../image/gen/inventory_pb";
import { PstreeEntrySchema, type PstreeEntry } from "../image/gen/pstree_pb";
import { CoreEntry_March, SeccompMode, TaskCoreEntrySchema, TaskKobjIdsEntrySchema, ThreadCoreEntrySchema, type TaskKobjIdsEntry } from "../image/gen/core_pb";
import { readMaps } from "../proc/maps";
import { describeTask } from "../proc/task";
import { ProcFs } from "../proc/procfs";
import { isExiting } from "../proc/stat";
import { statOrNull, writeWholeFile } from "../sys/file";
import { TreeGuard } from "../sys/tree-guard";
import { addressOf, callCountsSince, kill, snapshotCallCounts, syscall, waitpid } from "../sys/libc";
import { MAP, PROT, SIG, SYS, W } from "../sys/nr";
import * as ptrace from "../sys/ptrace";
import { addEpollWatches, aboveAll, placeFds, restoreFs } from "./fds";
import { OpenedFiles } from "./files/open-files";
import { loadFileLocks, restoreFileLocks } from "./files/file-locks";
import type { FileLockEntry } from "../image/gen/file-lock_pb";
import { ImageSet } from "../image/image-set";
import { unrestorableSharing } from "../image/shared-kobjs";
import { fileIds, validateProcess, validateTree } from "./validate";
import { findFree, type Range } from "./layout";
import { rebuildMm } from "./mm";
import { SharedAnonObjects } from "./shmem";
import { ALL_SIGNALS, BATCH_AREA_SIZE, batchRunner, Puppet, puppetCounters, RESTORE_PTRACE_OPTIONS, waitStop } from "./puppet";
import { restoreRegisters } from "./regs";
import { startSeed } from "./seed";
import { startInit } from "./pidns-init";
import {
  PR, requeueSignals, restoreCreds, restoreDumpable, restoreLoginuid, restoreMembarrier, restoreItimers, restoreScheduling, restoreSigactions, restoreThreadState,
  setChildSubreaper, setPdeathSignal,
} from "./task";
import { checkSessions, createProcesses, PidTakenError, type RestoredTree, type ZombieState } from "./tree";
import { TargetFds } from "./target-fds";

export interface RestoreOptions {
  dir: string;
  /** Leave the restored tree running on its own and return at once (-d). */
  detach: boolean;
  /** Write the root's pid here once it runs. */
  pidfile?: string;
  /** The tree was dumped with --shell-job: it joins ckpt's session and terminal. */
  shellJob?: boolean;
  /** Check files by their size and recorded build-id ("buildid", the default) or their size alone. */
  fileValidation?: FileValidation;
  /** Let a file whose rwx permission bits changed since the dump pass (CRIU's --skip-file-rwx-check). */
  skipFileRwxCheck?: boolean;
  /**
   * Restore into a new pid namespace (under an init of ckpt's, pid 1 there)
   * where every task has its dumped pid, whatever holds those pids on this host.
   */
  newPidNs?: boolean;
  /**
   * Leave every run flagged PE_LAZY to the `ckpt lazy-pages` daemon serving
   * this directory, which fills each page on first touch and the rest in the
   * background: from the source for a lazy dump's runs, from these images
   * for the others. The tree runs without waiting for its memory.
   */
  lazyPages?: boolean;
  /** Make established TCP connections again (CRIU's --tcp-established); without it they are refused. */
  tcpEstablished?: boolean;
  /**
   * Wait up to this long for DIR to hold a complete image set before
   * starting (ImageSet.whenComplete): a restore started ahead of the dump,
   * whose own start-up is then not part of the downtime.
   */
  waitImagesMs?: number;
  /**
   * With waitImagesMs: work for the wait, run first unless the set is
   * already there (`arrived` says whether its inventory is); its time counts
   * as waited. The CLI's rehearsal (rehearsal/rehearse.ts) is such work.
   */
  whileWaiting?: (arrived: () => boolean) => Promise<unknown>;
}

export interface RestoreFigures {
  /** --wait-images: how long the restore waited for a complete image set (not in the other figures). */
  waitedMs: number;
  /** From the start to the tree cloned: reading and checking the images, the seed, the clones. */
  forkMs: number;
  /** Of forkMs: opening the image set, checking its digests and planning the tree. */
  imagesMs: number;
  /** Of forkMs: starting the seed and taking hold of it (0 when that was done while waiting for the images). */
  seedMs: number;
  /** Address spaces, with the page copy. */
  mmMs: number;
  pagesMs: number;
  filesMs: number;
  /** Each task's own state: signal actions and queues, timers, limits, per-thread state, credentials. */
  tasksMs: number;
  /** Handing the lazy areas' userfaultfds to `ckpt lazy-pages`. */
  handoffMs: number;
  /** The end: registers, the guard that kills a half-made tree if ckpt dies, letting every task go. */
  letGoMs: number;
  totalMs: number;
  /**
   * When the whole tree was let go, in ms since the Unix epoch: with a
   * dump's frozenSinceEpochMs, a migration's downtime (ckpt's own exit
   * after it is not).
   */
  runningSinceEpochMs: number;
}

export interface RestoreResult {
  dir: string;
  /** The root's pid on this host (not the image's, in a new pid namespace). */
  root: number;
  /** With a new pid namespace: the host pid of its init, the root's parent. */
  pidNsInit?: number;
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
const TASK_STOPPED = 3;
/** Where in the syscall page a new pid namespace's init gets its loop, and its wait status word. */
const INIT_CODE_OFFSET = 0x8000n;
const INIT_STATUS_OFFSET = 0x9000n;
/** Where in the syscall page the batch runner and its records go (puppet.ts, BATCH_AREA_SIZE bytes). */
const BATCH_OFFSET = 0xa000n;
if (BATCH_OFFSET + BigInt(BATCH_AREA_SIZE) > SYSCALL_PAGE_SIZE) throw new Error("restore: the batch area does not fit in the syscall page");
const TASK_DEAD = 2;

/** Everything the images say about one process. */
interface ProcessPlan {
  entry: PstreeEntry;
  cores: Map<number, CoreEntry>;
  ids: TaskKobjIdsEntry;
  mm: MmEntry;
  fs: FsEntry;
  fdinfo: FdinfoEntry[];
  pages: PageChain;
}

/** The image set's tree: its processes to rebuild, and its zombies (TASK_DEAD cores), in pstree order. */
interface TreePlan {
  pstree: PstreeEntry[];
  processes: ProcessPlan[];
  zombies: Map<number, ZombieState>;
  /** filelocks.img by the pid that holds each lock. */
  locks: Map<number, FileLockEntry[]>;
}

function loadPlan(images: ImageSet, lazyRestore: boolean): TreePlan {
  const pstree = images.entries("pstree.img", PstreeEntrySchema);
  if (pstree.length === 0) throw new Error(`${images.path("pstree.img")} lists no process`);
  const processes: ProcessPlan[] = [];
  const zombies = new Map<number, ZombieState>();
  for (const entry of pstree) {
    const pid = entry.pid;
    const leader = images.one(`core-${pid}.img`, CoreEntrySchema);
    if (leader.mtype !== CoreEntry_March.X86_64) throw new Error(`core-${pid}.img is for architecture ${leader.mtype}; this ckpt restores x86_64 tasks`);
    if (leader.tc?.taskState === TASK_DEAD) {
      if (pid === pstree[0]!.pid) throw new Error(`core-${pid}.img: the root process is a zombie (TASK_DEAD)`);
      // A zombie is its leader alone. CRIU 4.2 leaves its threads field
      // unset memory (any number), so it is not read.
      entry.threads = [pid];
      zombies.set(pid, { status: leader.tc.exitCode, comm: leader.tc.comm });
      continue;
    }
    if (entry.threads.length === 0 || entry.threads[0] !== pid) throw new Error(`pstree.img: process ${pid} does not list itself as its first thread`);
    const cores = new Map(entry.threads.map((tid) => [tid, tid === pid ? leader : images.one(`core-${tid}.img`, CoreEntrySchema)]));
    for (const [tid, c] of cores) {
      if (c.mtype !== CoreEntry_March.X86_64) throw new Error(`core-${tid}.img is for architecture ${c.mtype}; this ckpt restores x86_64 tasks`);
      if (!c.threadInfo || !c.threadCore) throw new Error(`core-${tid}.img has no thread state`);
      if (c.threadCore.seccompMode) throw new Error(`core-${tid}.img: thread_core.seccomp_mode is ${SeccompMode[c.threadCore.seccompMode] ?? c.threadCore.seccompMode}: ckpt cannot restore seccomp yet`);
    }
    if (!leader.tc) throw new Error(`core-${pid}.img has no task core`);
    if (leader.tc.oldSeccompMode) throw new Error(`core-${pid}.img: tc.old_seccomp_mode is ${SeccompMode[leader.tc.oldSeccompMode] ?? leader.tc.oldSeccompMode}: ckpt cannot restore seccomp yet`);
    const posix = leader.tc.timers?.posix.length ?? 0;
    if (posix > 0) throw new Error(`core-${pid}.img: tc.timers.posix holds ${posix} POSIX timer(s) (timer_create), which ckpt cannot restore yet`);
    const ids = images.one(`ids-${pid}.img`, TaskKobjIdsEntrySchema);
    processes.push({
      entry, cores, ids,
      mm: images.one(`mm-${pid}.img`, MmEntrySchema),
      fs: images.one(`fs-${pid}.img`, FsEntrySchema),
      // CRIU writes no image for an empty fd table (it leaves out every empty image).
      fdinfo: images.entries(`fdinfo-${ids.filesId}.img`, FdinfoEntrySchema, true),
      pages: PageChain.open(images, pid, lazyRestore),
    });
  }
  validateTree(pstree);
  checkSessions(pstree);
  const files = fileIds(images.entries("files.img", FileEntrySchema));
  for (const p of processes) validateProcess(p, files);
  const sharing = unrestorableSharing(processes.map((p) => ({ pid: p.entry.pid, ids: p.ids })));
  if (sharing) throw new Error(`ids-${sharing.pid}.img: ${sharing.why}`);
  const locks = loadFileLocks(images, new Map(processes.map((p) => [p.entry.pid, p.fdinfo])));
  return { pstree, processes, zombies, locks };
}

/**
 * How long a pid held by an exiting task (the dumped tree, killed a moment
 * ago on this host: its memory is still being freed, or its parent has not
 * reaped it yet) is waited for.
 */
const EXITING_HOLDER_WAIT_MS = 5000;

function checkPidsFree(proc: ProcFs, pstree: readonly PstreeEntry[]): void {
  const deadline = performance.now() + EXITING_HOLDER_WAIT_MS;
  for (const p of pstree) {
    for (const tid of p.threads) {
      while (statOrNull(`/proc/${tid}`) && isExiting(proc, tid) && performance.now() < deadline) Bun.sleepSync(1);
      if (statOrNull(`/proc/${tid}`)) throw new PidTakenError(tid, tid === p.pid ? `process ${p.pid}` : `thread of process ${p.pid}`, describeTask(proc, tid));
    }
  }
}

/**
 * Kill what a failed restore made; never throws. Exits are collected in
 * reverse order of creation: a traced thread stays a zombie until its tracer
 * waits for it, and until then the kernel holds back its leader's exit.
 */
function killAll(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      kill(pid, SIG.KILL);
    } catch {
      // Already gone.
    }
  }
  for (const pid of [...pids].reverse()) {
    try {
      // Collect the exit as tracer (and as parent, for the root under a subreaper ckpt).
      for (;;) if (!ptrace.isStopped(waitpid(pid, W.ALL).status)) break;
    } catch {
      // Not ours to wait for, or already collected.
    }
  }
}

/** What every process's restore shares. */
interface RestoreContext {
  proc: ProcFs;
  files: OpenedFiles;
  syscallPage: Range;
  scratch: bigint;
  epollsDone: Set<number>;
  /** Shared anonymous memory objects, made on first use. */
  shared: SharedAnonObjects;
  /** filelocks.img by the pid that holds each lock. */
  locks: ReadonlyMap<number, readonly FileLockEntry[]>;
  figures: RestoreFigures;
  /** With --lazy-pages: where each process's userfaultfd goes. */
  lazy: LazyHandoff | null;
}

/**
 * One process, up to (not including) its registers: address space and pages,
 * fds, fs, signal actions and timers, limits, per-thread state and queued
 * signals, then credentials, and what a change of credentials resets
 * (dumpable, parent-death signal) after them. Returns the pages copied and
 * the signal that must stop the task as it is let go (it was job-stopped, or
 * a SIGSTOP was queued), 0 for none.
 */
function restoreProcess(ctx: RestoreContext, p: ProcessPlan, tree: RestoredTree): { pages: number; stop: number } {
  const pid = p.entry.pid;
  const task = tree.processes.get(pid);
  const tc = p.cores.get(pid)?.tc;
  if (!task || !tc) throw new Error(`process ${pid} was not created`);
  const { files, scratch } = ctx;
  const fds = new TargetFds(task);
  fds.reset(aboveAll(p.fdinfo));
  let t = performance.now();
  const fill = rebuildMm({
    puppet: task, pid, mm: p.mm, pages: p.pages, syscallPage: ctx.syscallPage, scratch, fds,
    ckptFd: (id) => files.fd(id), mappedFd: (id, access) => files.fdForMapping(id, access), sharedFd: (shmid) => ctx.shared.fd(shmid), proc: ctx.proc,
  });
  if (ctx.lazy && p.pages.lazy.length > 0) ctx.lazy.register(task, pid, lazyAreas(p.mm.vmas, p.pages.lazy));
  ctx.figures.mmMs += performance.now() - t;
  ctx.figures.pagesMs += fill.ms;
  t = performance.now();
  placeFds(fds, p.fdinfo, files);
  restoreFs(task, fds, p.fs, files, scratch);
  addEpollWatches(task, scratch, p.fdinfo, files, ctx.epollsDone);
  fds.done();
  // Last of the fd steps: closing any fd of a file drops its POSIX locks.
  restoreFileLocks(task, scratch, ctx.locks.get(pid) ?? []);
  ctx.figures.filesMs += performance.now() - t;

  t = performance.now();
  restoreSigactions(task, scratch, tc);
  restoreItimers(task, scratch, tc);
  task.call(SYS.personality, [tc.personality]);
  if (tc.childSubreaper) setChildSubreaper(task);
  if (tc.membarrierRegistrationMask) restoreMembarrier(task, tc.membarrierRegistrationMask);
  if (isFieldSet(tc, TaskCoreEntrySchema.field.loginuid)) restoreLoginuid(task, ctx.proc, scratch, tc.loginuid);
  if (tc.oomScoreAdj !== undefined && tc.oomScoreAdj !== 0) writeWholeFile(`/proc/${task.tid}/oom_score_adj`, new TextEncoder().encode(String(tc.oomScoreAdj)));
  // Limits now, with every fd and area in place (a low RLIMIT_NOFILE or
  // RLIMIT_DATA would have refused restore's own steps), and before the
  // credentials change: prlimit64 on a task of other uids needs CAP_SYS_RESOURCE.
  restoreRlimits(p, task.tid);

  let stop = false;
  const all = p.entry.threads.map((tid) => {
    const th = tree.threads.get(tid);
    const core = p.cores.get(tid);
    if (!th || !core?.threadCore) throw new Error(`thread ${tid} of process ${pid} was not created`);
    return { th, core, thc: core.threadCore };
  });
  for (const { th, core, thc } of all) {
    restoreThreadState(th, scratch, core, thc);
    restoreScheduling(th.tid, thc);
    // Injected: the ids the task itself knows (the image's).
    stop = requeueSignals(th, scratch, pid, thc.signalsP?.signals, th.ownTid) || stop;
  }
  stop = requeueSignals(task, scratch, pid, tc.signalsS?.signals) || stop;
  for (const { th, thc } of all) {
    if (thc.creds) restoreCreds(th, scratch, thc.creds);
    if (thc.pdeathSig) setPdeathSignal(th, thc.pdeathSig);
  }
  restoreDumpable(task, p.mm);
  ctx.figures.tasksMs += performance.now() - t;
  // A job-stopped task stops again by the signal that stopped it (CRIU's stop_signo; SIGSTOP when the image has none).
  const stopSignal = tc.taskState === TASK_STOPPED ? tc.stopSigno || SIG.STOP : stop ? SIG.STOP : 0;
  return { pages: fill.pages, stop: stopSignal };
}

/**
 * A thread's blocked mask as CRIU reads it: the leader's from the task core
 * (CRIU writes it there only), another thread's from its thread core.
 */
function blockedMask(core: CoreEntry): bigint {
  if (core.tc) return core.tc.blkSigset;
  const tc = core.threadCore;
  return tc && isFieldSet(tc, ThreadCoreEntrySchema.field.blkSigset) ? tc.blkSigset : 0n;
}

/** The seed, taken hold of: stopped, traced with EXITKILL, every signal blocked. */
interface HeldSeed {
  pid: number;
  task: Puppet;
}

async function holdSeed(ownSession: boolean): Promise<HeldSeed> {
  const seed = await startSeed(ownSession);
  try {
    ptrace.seize(seed.pid, RESTORE_PTRACE_OPTIONS);
    ptrace.interrupt(seed.pid);
    waitStop(seed.pid, "(the seed) before restore took hold of it");
    // Its alarm(30), for a ckpt that died before this point, stays pending
    // from here: blocked, and not passed on to the tasks cloned from it.
    ptrace.setSigmask(seed.pid, ALL_SIGNALS);
  } catch (e) {
    killAll([seed.pid]);
    throw e;
  }
  return { pid: seed.pid, task: new Puppet(seed.pid, seed.syscallAddress) };
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  let started = performance.now();
  let calls0 = snapshotCallCounts();
  let counters0 = { ...puppetCounters };
  // ckpt is a subreaper, so the seed and the root (cloned with CLONE_PARENT)
  // are its children: without -d it waits for the root; and a failed restore
  // reaps what it killed itself, leaving no zombie to hold a pid until init
  // (which may be slow to reap) gets to it. With -d the root goes on to
  // init, or to ckpt's nearest subreaper ancestor, when ckpt exits.
  syscall("prctl", SYS.prctl, [PR.SET_CHILD_SUBREAPER, 1], ["PR_SET_CHILD_SUBREAPER", "1"]);
  let images: ImageSet;
  let waitedMs = 0;
  /**
   * With --wait-images, the seed is started while the images are awaited:
   * its ~5 ms are then no downtime. Whoever holds it here kills it on a
   * failure; restoreFrom takes it out when it makes it its own.
   */
  const early: { seed: HeldSeed | null } = { seed: null };
  try {
    if (opts.waitImagesMs === undefined) images = ImageSet.open(opts.dir);
    else {
      const arrived = (): boolean => statOrNull(`${opts.dir}/inventory.img`) !== null;
      if (opts.whileWaiting && !arrived()) {
        await opts.whileWaiting(arrived);
        // Its calls (a rehearsal's dump and restore) are not this restore's.
        calls0 = snapshotCallCounts();
        counters0 = { ...puppetCounters };
      }
      early.seed = await holdSeed(!opts.shellJob);
      // ckpt's own garbage collected now, so that no collection falls in the
      // restore once the images are here (see collectBeforeFreeze).
      Bun.gc(true);
      images = await ImageSet.whenComplete(opts.dir, opts.waitImagesMs, started);
      // The figures count from the set's arrival, not from the start of a restore that waited for it.
      waitedMs = performance.now() - started;
      started = performance.now();
    }
  } catch (e) {
    if (early.seed) killAll([early.seed.pid]);
    throw e;
  }
  try {
    return await restoreFrom(images, opts, early, { started, waitedMs, calls0, counters0 });
  } catch (e) {
    if (early.seed) killAll([early.seed.pid]);
    throw e;
  }
}

async function restoreFrom(
  images: ImageSet, opts: RestoreOptions, early: { seed: HeldSeed | null },
  { started, waitedMs, calls0, counters0 }: { started: number; waitedMs: number; calls0: ReturnType<typeof snapshotCallCounts>; counters0: typeof puppetCounters },
): Promise<RestoreResult> {
  if (images.one("inventory.img", InventoryEntrySchema).preDumpMode) {
    throw new Error(`${opts.dir} is a pre-dump (memory only, the tree ran on); restore the final dump, made with --prev-images-dir`);
  }
  // Every byte as the dump wrote it (the parents' are checked as the page chains reach them).
  images.verifyDigests();
  const { pstree, processes: plan, zombies, locks } = loadPlan(images, opts.lazyPages === true);
  const imagesMs = performance.now() - started;
  const lazyPids = plan.filter((p) => p.pages.lazy.length > 0);
  if (lazyPids.length > 0 && !opts.lazyPages) {
    const p = lazyPids[0]!;
    throw new Error(`pagemap-${p.entry.pid}.img holds ${p.pages.lazyPages} lazy page(s) (a dump made with --lazy-pages, whose source serves them): restore with --lazy-pages, with \`ckpt lazy-pages\` running for ${opts.dir}`);
  }
  // Reached before anything is made: without its daemon a lazy restore cannot run.
  const lazy = opts.lazyPages ? LazyHandoff.connect(opts.dir) : null;
  const shared = new SharedAnonObjects(images, plan.map((p) => p.mm));
  const proc = new ProcFs();
  try {
    // In a new pid namespace every pid is free, but 1, which its init takes.
    if (opts.newPidNs) {
      const one = pstree.find((e) => e.threads.includes(1) || e.pid === 1);
      if (one) throw new Error(`pstree.img: process ${one.pid} has pid or tid 1, which the new pid namespace's init takes (--restore-in-new-pidns restores trees whose pids are all above 1)`);
    } else {
      // A seed started ahead that took one of the tree's pids makes way for one started now.
      const taken = early.seed?.pid;
      if (taken !== undefined && pstree.some((e) => e.threads.includes(taken))) {
        killAll([taken]);
        early.seed = null;
      }
      checkPidsFree(proc, pstree);
    }
  } catch (e) {
    proc.close();
    lazy?.close();
    throw e;
  }
  const created: number[] = [];
  let seedPid = 0;
  let files: OpenedFiles | undefined;
  let guard: TreeGuard | undefined;
  const figures: RestoreFigures = { waitedMs, forkMs: 0, imagesMs, seedMs: 0, mmMs: 0, pagesMs: 0, filesMs: 0, tasksMs: 0, handoffMs: 0, letGoMs: 0, totalMs: 0, runningSinceEpochMs: 0 };
  let pagesRestored = 0;
  let root = pstree[0]?.pid ?? 0;
  let pidNsInit: number | undefined;
  const tcp = opts.tcpEstablished ? new TcpRestoreSession(opts.dir, proc) : undefined;
  try {
    const seedStarted = performance.now();
    const seed = early.seed ?? (await holdSeed(!opts.shellJob));
    // From here its kill is this function's.
    early.seed = null;
    seedPid = seed.pid;
    figures.seedMs = performance.now() - seedStarted;
    const seedTask = seed.task;

    const taken: Range[] = [...plan.flatMap((p) => p.mm.vmas), ...readMaps(proc, seed.pid)];
    const pageAt = findFree(taken, SYSCALL_PAGE_SIZE);
    const syscallPage: Range = { start: pageAt, end: pageAt + SYSCALL_PAGE_SIZE };
    const rwx = PROT.READ | PROT.WRITE | PROT.EXEC;
    seedTask.call(SYS.mmap, [pageAt, SYSCALL_PAGE_SIZE, rwx, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0]);
    seedTask.write(pageAt, new Uint8Array([0x0f, 0x05]));
    seedTask.syscallAt = pageAt;
    seedTask.write(pageAt + BATCH_OFFSET, batchRunner());
    seedTask.batchAt = pageAt + BATCH_OFFSET;
    const scratch = pageAt + SCRATCH_OFFSET;

    const tree = createProcesses(seedTask, scratch, pstree, created, zombies, opts.newPidNs ?? false);
    root = hostPid(tree, root);
    pidNsInit = tree.init?.tid;
    seedTask.callNoReturn(SYS.exit_group, [0]);
    seedPid = 0;
    // The guard (needed from the first detach on) is launched now, and its
    // program starts on another core while the tasks are filled in.
    const hostPids = plan.map((p) => hostPid(tree, p.entry.pid));
    guard = TreeGuard.launch(tree.init ? [tree.init.tid, ...hostPids] : hostPids);
    figures.forkMs = performance.now() - started;

    // Files once the tasks exist: a /proc/PID file of the tree's own
    // processes (zdtm child_opened_proc) opens only then. A file that changed
    // fails the restore here, and every task made is killed and reaped.
    const t = performance.now();
    files = OpenedFiles.open(images, { shellJob: opts.shellJob ?? false, fileValidation: opts.fileValidation ?? "buildid", skipFileRwxCheck: opts.skipFileRwxCheck ?? false, ...(tcp ? { tcp } : {}) });
    files.applyOwners();
    figures.filesMs += performance.now() - t;

    const ctx: RestoreContext = { proc, files, syscallPage, scratch, epollsDone: new Set(), shared, locks, figures, lazy };
    /** Tasks to stop as they are let go, with the stop signal of each. */
    const stopped = new Map<number, number>();
    for (const p of plan) {
      const r = restoreProcess(ctx, p, tree);
      pagesRestored += r.pages;
      if (r.stop) stopped.set(hostPid(tree, p.entry.pid), r.stop);
    }
    files.finish();
    files = undefined;
    // The connections may flow again: the dump's lock (on this host) and ours go.
    tcp?.finish();
    pagesRestored += shared.pages;
    shared.close();
    // The daemon holds every userfaultfd before any task runs.
    const handoff = performance.now();
    lazy?.finish();
    const letGo = performance.now();
    figures.handoffMs = letGo - handoff;

    // Last: the syscall page goes, and every thread gets its registers in a signal stop.
    for (const p of plan) {
      tree.processes.get(p.entry.pid)?.call(SYS.munmap, [syscallPage.start, SYSCALL_PAGE_SIZE]);
      for (const tid of p.entry.threads) {
        const core = p.cores.get(tid);
        const th = tree.threads.get(tid);
        if (!core?.threadInfo) throw new Error(`thread ${tid} has no registers in its core image`);
        if (!th) throw new Error(`thread ${tid} was not created`);
        th.parkInSignalStop();
        restoreRegisters(th.tid, core.threadInfo);
        ptrace.setSigmask(th.tid, blockedMask(core));
      }
    }
    if (tree.init) startInit(tree.init, pstree[0]!.pid, syscallPage.start + INIT_CODE_OFFSET, syscallPage.start + INIT_STATUS_OFFSET);
    // Before the tree runs, so that a bad path fails the restore and not after it.
    if (opts.pidfile) writeWholeFile(opts.pidfile, new TextEncoder().encode(`${root}\n`), 0o644);
    // From here a kill of ckpt must not leave part of the tree running (sys/tree-guard.ts).
    guard.waitUntilRunning();
    // Pending when the tasks are let go, so they stop before running a single instruction.
    for (const [pid, sig] of stopped) kill(pid, sig);
    for (const p of plan) for (const tid of p.entry.threads) ptrace.detach(hostPid(tree, tid));
    if (tree.init) ptrace.detach(tree.init.tid);
    guard.release();
    created.length = 0;
    const running = performance.now();
    figures.runningSinceEpochMs = performance.timeOrigin + running;
    figures.letGoMs = running - letGo;
    // The tree runs: the daemon may fetch the rest in the background.
    lazy?.close();
    // After the tree runs: its exit is no downtime.
    guard.reap();
  } catch (e) {
    // Abandoned, the guard kills the tree (once it runs), as killAll below does.
    guard?.abandon();
    tcp?.abort();
    files?.abort().forEach((m: string) => process.stderr.write(`ckpt: warning: while cleaning up files: ${m}\n`));
    killAll([...created, ...(seedPid ? [seedPid] : [])]);
    throw e;
  } finally {
    shared.close();
    proc.close();
    lazy?.close();
  }
  figures.totalMs = performance.now() - started;
  return {
    dir: opts.dir, root, ...(pidNsInit !== undefined ? { pidNsInit } : {}), processes: pstree.length,
    threads: plan.reduce((s, p) => s + p.entry.threads.length, 0),
    pagesRestored,
    injectedCalls: puppetCounters.calls - counters0.calls,
    ptraceStops: puppetCounters.stops - counters0.stops,
    figures, syscalls: callCountsSince(calls0),
  };
}

/** The host pid of the image's task `tid` (the same number unless the tree is in a new pid namespace). */
function hostPid(tree: RestoredTree, tid: number): number {
  return tree.threads.get(tid)?.tid ?? tid;
}

/** Resource limits, set from ckpt before anything the limits govern (fd numbers, stack). */
function restoreRlimits(p: ProcessPlan, hostPid: number): void {
  const limits = p.cores.get(p.entry.pid)?.tc?.rlimits?.rlimits ?? [];
  const v = new BigUint64Array(2);
  limits.forEach((l, resource) => {
    v[0] = l.cur;
    v[1] = l.max;
    syscall("prlimit64", SYS.prlimit64, [hostPid, resource, addressOf(v), 0], [String(hostPid), String(resource), `{${l.cur}, ${l.max}}`, "NULL"]);
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
