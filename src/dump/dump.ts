/**
 * `ckpt dump`: freeze a tree, read everything while it is stopped, let it go,
 * write the image set.
 *
 * Order matters for safety and for the freeze time:
 *  1. freeze every thread (task/freeze.ts);
 *  2. read all state and copy all pages into memory while frozen;
 *  3. with --leave-running: resume the tree, then write the images — the freeze
 *     ends before the disk is touched. Without it: write every image first and
 *     only then kill the tree, so a failed write never loses the processes;
 *  4. stats-dump, then inventory.img last: a directory without it is not an
 *     image set, and a failed dump removes what it wrote.
 * Any error or SIGINT/SIGTERM on the way lets every task go untouched.
 */
import type { FileValidation } from "../image/file-validation";
import { create } from "@bufbuild/protobuf";
import { ImageEncoder } from "../image/encode";
import { CoreEntry_March, CoreEntrySchema, TaskCoreEntrySchema, TaskRlimitsEntrySchema, ThreadCoreEntrySchema, ThreadSasEntrySchema, type CoreEntry, type TaskKobjIdsEntry } from "../image/gen/core_pb";
import type { RseqEntry } from "../image/gen/rseq_pb";
import { FdinfoEntrySchema, FileEntrySchema, type FdinfoEntry } from "../image/gen/fdinfo_pb";
import { FsEntrySchema } from "../image/gen/fs_pb";
import { MmEntrySchema, type MmEntry } from "../image/gen/mm_pb";
import { PagemapEntrySchema } from "../image/gen/pagemap_pb";
import { PstreeEntrySchema } from "../image/gen/pstree_pb";
import { SeccompEntrySchema } from "../image/gen/seccomp_pb";
import { TaskKobjIdsEntrySchema } from "../image/gen/core_pb";
import { TimensEntrySchema, TimespecSchema } from "../image/gen/timens_pb";
import { kind } from "../image/magic";
import { readMaps, readSmaps, readSmapsInBackground, type MapArea } from "../proc/maps";
import { ProcFs } from "../proc/procfs";
import { hasExited, readStat } from "../proc/stat";
import { readStatus } from "../proc/status";
import { addressOf, callCountsSince, snapshotCallCounts, syscall } from "../sys/libc";
import { PAGE_SIZE, SIG, SYS } from "../sys/nr";
import * as ptrace from "../sys/ptrace";
import { credsEntry, isGone, readProcNumber, readThreadRegs, rlimits, robustList, signalQueue, threadInfo } from "./task/core";
import { readRseq } from "./task/task-state";
import { FileIds, type FileIdCounters } from "./files/file-ids";
import { FileTable } from "./files/file-table";
import { dumpFds, finishFds, type FilesDump } from "./files/fds";
import { FileLocks } from "./files/file-locks";
import { dumpLinkedFile } from "./files/regular";
import { SocketTable } from "../proc/sock-diag";
import { collectBeforeFreeze, Freezer, type FrozenProcess } from "./task/freeze";
import { learnBorrowedCode } from "./task/inject";
import { onProtectedMemory } from "./task/protected-memory";
import { KobjIds } from "./ids";
import { unrestorableSharing } from "../image/shared-kobjs";
import { ImageDirWriter } from "../image/image-dir";
import { InterruptGuard } from "./interrupt";
import { Irmap, type IrmapCounters } from "./files/irmap";
import { inventoryEntry, uptimeMicros } from "./inventory";
import { dumpVmas, mmEntry, parseAuxv, savesPages, type MapFilesCounters } from "./memory/mm";
import { SharedAnonMemory } from "./memory/shmem";
import { readTaskState } from "./task/remote-state";
import { lazyRanges, planProcessPages, saveProcessPages, type LazyRange, type PageCopy, type PagePlan, type ProcessTracking } from "./memory/page-dump";
import type { PageStore } from "../image/page-store";
import { openPageStore } from "../transfer/page-client";
import { LazySource, type LazyServeResult } from "../transfer/lazy-source";
import { TcpLock, TCP_LOCK_RECORD } from "../transfer/tcp-lock";
import type { Endpoint } from "../transfer/connection";
import { newAheadCounters, ProtectAhead, type AheadCounters, type ProtectedAhead } from "./memory/protect-ahead";
import { finishSnapshots, FROZEN_COPY_BYTES, settleAfterSnapshot, newSnapshotCounters, type ProcessSnapshot, type SnapshotCounters } from "./memory/snapshot";
import { Errno, SysError } from "../sys/errno";
import { newPageCounters, PE_PRESENT, type PageCounters } from "./memory/pages";
import { pstreeEntries } from "./pstree";
import { commitRound, endTracking } from "./commit";
import { newFrozenPhases, timePhase, type DumpFigures, type FrozenPhases, type RoundResult } from "./stats";
import { ParentImages } from "./memory/parent";
import { RoundTracking } from "./tracking/round";
import { schedGetscheduler } from "../sys/calls";

export interface DumpOptions {
  pid: number;
  dir: string;
  /**
   * Work for the moment before the freeze, run once the page server is
   * connected or the lazy-pages listener is up (a destination may connect
   * meanwhile); not part of the figures. The CLI's rehearsal
   * (rehearsal/rehearse.ts) is such work.
   */
  beforeFreeze?: () => Promise<unknown>;
  /** Resume the tree after the dump instead of killing it (-R). */
  leaveRunning: boolean;
  /**
   * Without -R: return once the tree is killed, without collecting its
   * deaths, for a caller about to exit (the command line): the kernel
   * finishes them. A caller that goes on (and may restore those pids here)
   * keeps the default, which waits until every process of the tree is dead.
   */
  exitAfter?: boolean;
  /** How to find pages to save: the PAGEMAP_SCAN ioctl, or reading /proc/PID/pagemap. */
  pageScan?: "auto" | "ioctl" | "pagemap";
  /** The tree is a job of the user's shell: dump the terminal it uses (--shell-job). */
  shellJob?: boolean;
  /** Save the file locks the tree holds (CRIU's --file-locks); without it a lock is refused. */
  fileLocks?: boolean;
  /** What restore will check files by (CRIU's --file-validation): "buildid" (the default) or "filesize". */
  fileValidation?: FileValidation;
  /** Directories to search for the paths of watched inodes (--irmap-scan-path); the irmap's defaults when none. */
  irmapScanPaths?: string[];
  /**
   * The previous round (--prev-images-dir), relative to `dir` unless
   * absolute: pages unchanged since then are recorded as in-parent.
   */
  prevImagesDir?: string;
  /** The largest unlinked file to save as a ghost file (--ghost-limit), in bytes; no limit when unset. */
  ghostLimit?: bigint;
  /**
   * With leaveRunning: copy private memory after letting the tree go, as a
   * snapshot of the freeze (snapshot.ts). The default; false copies
   * everything while frozen (--no-snapshot).
   */
  snapshot?: boolean;
  /** Send the pages to this page server (--page-server) instead of writing them here. */
  pageServer?: Endpoint;
  /**
   * A lazy dump (--lazy-pages): anonymous private memory is not saved; once
   * the images are written the tree stays frozen and its pages are served
   * from here to the destination's lazy-pages daemon; the tree is killed
   * when the destination has them all.
   */
  lazyPages?: Endpoint;
  /**
   * Save established TCP connections (--tcp-established) under a network
   * lock (transfer/tcp-lock.ts); without it they are refused.
   */
  tcpEstablished?: boolean;
  /** Called when the image set is complete (with --lazy-pages: before the pages are served). */
  onImagesWritten?: (info: { lazyPagesAt?: string }) => void;
}

export interface DumpResult extends RoundResult {
  leftRunning: boolean;
  mapFiles: MapFilesCounters;
  /** fds, open files, and how often kcmp had to tell shared files apart (seed 004). */
  files: FileIdCounters & { fds: number; openFiles: number };
  /** Paths of watched inodes: how each was found, and the time it took. */
  irmap: IrmapCounters & { ms: number };
  /** How memory was copied: as a snapshot after the freeze (dump -R), or while frozen, and why. */
  snapshot: SnapshotCounters & { used: boolean; why?: string; ahead: AheadCounters };
  /** --lazy-pages: what the destination fetched. */
  lazy?: LazyServeResult;
}

/** Everything read from one process while it was frozen. */
interface DumpedProcess {
  tree: FrozenProcess;
  ids: TaskKobjIdsEntry;
  cores: Map<number, CoreEntry>;
  mm: MmEntry;
  fdinfo: FdinfoEntry[];
  cwdId: number;
  rootId: number;
  umask: number;
  pages: PageCopy;
  /** With a snapshot dump: the copy to finish once the tree runs. */
  snapshot?: ProcessSnapshot;
}

function clockNow(clock: number): { tvSec: bigint; tvNsec: bigint } {
  const ts = new BigUint64Array(2);
  syscall("clock_gettime", SYS.clock_gettime, [clock, addressOf(ts)], [String(clock)]);
  return { tvSec: ts[0] ?? 0n, tvNsec: ts[1] ?? 0n };
}
const CLOCK_MONOTONIC = 1;
const CLOCK_BOOTTIME = 7;
const TASK_ALIVE = 1;
const TASK_STOPPED = 3;
const TASK_DEAD = 2;

export async function dump(opts: DumpOptions): Promise<DumpResult> {
  let started = performance.now();
  let calls0 = snapshotCallCounts();
  if (opts.lazyPages && opts.leaveRunning) throw new Error("--lazy-pages cannot be used with -R: the tree stays frozen until its pages have gone, then it is killed");
  if (opts.lazyPages && opts.pageServer) throw new Error("--lazy-pages serves the pages itself: give it without --page-server");
  const out = ImageDirWriter.open(opts.dir);
  let pages: ReturnType<typeof openPageStore>;
  let lazy: LazySource | null = null;
  try {
    pages = openPageStore(out, opts.pageServer);
    if (opts.lazyPages) lazy = LazySource.listen(opts.lazyPages);
  } catch (e) {
    out.discard();
    out.close();
    throw e;
  }
  const { store, client: server } = pages;
  if (opts.beforeFreeze) {
    try {
      await opts.beforeFreeze();
    } catch (e) {
      store.close();
      lazy?.close();
      out.discard();
      out.close();
      throw e;
    }
    // Its time and calls are not this dump's.
    started = performance.now();
    calls0 = snapshotCallCounts();
  }
  const proc = new ProcFs();
  const freezer = new Freezer(proc);
  const guard = new InterruptGuard();
  const table = new FileTable();
  if (opts.ghostLimit !== undefined) table.ghostLimit = opts.ghostLimit;
  if (opts.fileValidation) table.fileValidation = opts.fileValidation;
  let tcpLock: TcpLock | null = null;
  try {
    if (opts.tcpEstablished) tcpLock = await TcpLock.start(proc);
  } catch (e) {
    store.close();
    lazy?.close();
    tcpLock?.close();
    out.discard();
    out.close();
    proc.close();
    throw e;
  }
  const files: FilesDump = {
    ids: new FileIds(), kinds: new Map(), locks: new FileLocks(table, opts.fileLocks ?? false),
    ctx: {
      proc, table, opts: { shellJob: opts.shellJob ?? false, ...(tcpLock ? { tcpLock } : {}) }, sockets: new SocketTable(), shared: new Map(),
      irmap: new Irmap({ scanPaths: opts.irmapScanPaths, cacheDirs: [opts.dir, `${opts.dir}/parent`], proc }),
    },
  };
  const kobj = new KobjIds(proc);
  const mapFiles: MapFilesCounters = { fileAreas: 0, distinctFiles: 0 };
  const objects = new SharedAnonMemory();
  const pageCounters = newPageCounters();
  const fdTables = new Map<number, FdinfoEntry[]>();
  const dumped: DumpedProcess[] = [];
  const zombies: { pid: number; core: CoreEntry }[] = [];
  let released = false;
  let frozenAt = 0;
  let gcMs = 0;
  let frozenMs = 0;
  let memdumpMs = 0;
  let memwriteMs = 0;
  let tracking: RoundTracking | null = null;
  let lazyResult: LazyServeResult | null = null;
  const snapCounters = newSnapshotCounters();
  const aheadCounters = newAheadCounters();
  let ahead: ProtectAhead | null = null;
  let restoreHooks: (() => void) | null = null;
  const frozenPhases = newFrozenPhases();
  const snapshot: SnapshotChoice = { use: opts.leaveRunning && opts.snapshot !== false, counters: snapCounters };
  if (!opts.leaveRunning) snapshot.why = "the tree is killed after the dump: nothing runs to copy from";
  else if (opts.snapshot === false) snapshot.why = "--no-snapshot";
  try {
    const parent = opts.prevImagesDir === undefined ? null : ParentImages.open(out, opts.prevImagesDir, opts.pageServer !== undefined ? "remote" : opts.lazyPages ? "either" : "local");
    // Read the irmap cache (through the parent link just made) before the freeze.
    files.ctx.irmap.load();
    learnBorrowedCode(proc, opts.pid);
    // A dump that follows a pre-dump chain finds its areas held by the
    // tracker's userfaultfd: nothing to protect ahead there.
    if (snapshot.use && parent === null) {
      const prepared = (ahead = new ProtectAhead(aheadCounters));
      restoreHooks = onProtectedMemory({
        beforeStackWrite: (tgid, low, high) => prepared.unprotectStack(tgid, low, high),
        whileWaiting: () => prepared.answer(),
      });
      prepared.arm(proc, opts.pid);
      await guard.checkpoint();
    }
    gcMs = collectBeforeFreeze();
    const tree = freezer.freeze(opts.pid);
    frozenAt = performance.now();
    // What was read and not yet answered before the last thread stopped;
    // processes that left the tree meanwhile run on unprotected.
    ahead?.answer();
    ahead?.keepOnly(tree.filter((p) => !p.zombie).map((p) => p.pid));
    const frozenUptime = uptimeMicros(proc);
    tracking = RoundTracking.begin(proc, "dump", parent, opts.pid);
    // The clocks a restore in a new time namespace continues from.
    const clocks = { monotonic: clockNow(CLOCK_MONOTONIC), boottime: clockNow(CLOCK_BOOTTIME) };
    await guard.checkpoint();

    const treeIds = new Map(tree.filter((p) => !p.zombie).map((p) => {
      try {
        return [p.pid, kobj.of(p.pid)] as const;
      } catch (e) {
        throw explainProcessError(p.pid, e);
      }
    }));
    const sharing = unrestorableSharing([...treeIds].map(([pid, ids]) => ({ pid, ids })));
    if (sharing) throw new Error(`process ${sharing.pid}: ${sharing.why}`);
    for (const p of tree) {
      if (p.zombie) {
        zombies.push(zombieCore(proc, p.pid));
        continue;
      }
      try {
        dumped.push(await dumpProcess(proc, p, files, treeIds.get(p.pid)!, fdTables, mapFiles, objects, pageCounters, opts, tracking, snapshot, frozenPhases, ahead));
      } catch (e) {
        throw explainProcessError(p.pid, e);
      }
      await guard.checkpoint();
    }
    finishFds(files);
    const shmStarted = performance.now();
    const shared = objects.copy(proc);
    table.shmem.push(...shared.contents);
    memdumpMs = dumped.reduce((s, d) => s + d.pages.ms, 0) + (performance.now() - shmStarted);

    const writeAll = (): void => {
      const t = performance.now();
      for (const d of dumped) saveProcessPages(store, d.tree.pid, d.pages);
      saveShmem(store, table);
      memwriteMs = performance.now() - t;
      writeImages(out, dumped, zombies, table, tree, clocks);
      // Where the restore finds the lock's holder, to end it once the connections are back.
      if (tcpLock?.active && !opts.leaveRunning) out.write(TCP_LOCK_RECORD, new TextEncoder().encode(`${JSON.stringify(tcpLock.holder)}\n`));
      // The server has every page on disk before the inventory makes the set whole.
      store.finish();
    };

    const pageFigures = (): Omit<DumpFigures, "frozenMs" | "memwriteMs" | "totalMs"> => ({
      freezingMs: freezer.freezingMs, memdumpMs, frozenSinceEpochMs: performance.timeOrigin + frozenAt,
      pagesScanned: dumped.reduce((s, d) => s + d.pages.pagesScanned, 0),
      pagesWritten: dumped.reduce((s, d) => s + d.pages.pagesWritten, 0),
      pagesInParent: dumped.reduce((s, d) => s + d.pages.pagesInParent, 0),
      ...(opts.lazyPages ? { pagesLazy: dumped.reduce((s, d) => s + d.pages.lazy.reduce((n, r) => n + r.nrPages, 0), 0) } : {}),
      shpagesScanned: shared.counters.pagesScanned,
      shpagesWritten: shared.counters.pagesWritten,
      irmapMs: files.ctx.irmap.ms,
      gcMs,
      frozenPhases,
    });
    const inv = inventoryEntry(crypto.randomUUID(), frozenUptime);
    inv.rootIds = create(TaskKobjIdsEntrySchema, kobj.dumper);

    let figures: DumpFigures;
    if (opts.leaveRunning) {
      // The connections carry on here: out of repair mode before the tree runs again, and unlocked.
      tcpLock?.release();
      release(freezer, "resume");
      released = true;
      frozenMs = performance.now() - frozenAt;
      // The memory of the freeze, copied while the tree runs (copy-before-write).
      const snaps = dumped.flatMap((d) => (d.snapshot ? [d.snapshot] : []));
      finishSnapshots(snaps, snapCounters);
      writeAll();
      figures = { ...pageFigures(), frozenMs, memwriteMs, totalMs: performance.now() - started, snapshot: snapCounters };
      // The dump is complete: tracking is over (the tracker ends, the tree is unregistered).
      commitRound(out, figures, inv, tracking);
      // After the commit: nothing the tree does can hold up a complete set.
      settleAfterSnapshot(proc, snaps, snapCounters);
    } else {
      writeAll();
      await guard.checkpoint();
      // The image set is made whole (inventory last) before the tree is
      // killed: a ckpt killed in between leaves a complete set, never a
      // killed tree without one. stats-dump's frozen time therefore ends at
      // the commit; the figure returned includes the kill.
      const beforeKill = performance.now();
      figures = { ...pageFigures(), frozenMs: beforeKill - frozenAt, memwriteMs, totalMs: beforeKill - started };
      // Tracking ends once the tree is killed (below): the kernel unregisters
      // the tracked areas when the last copy of a userfaultfd closes, ~30 ms
      // for 2 GiB, which the frozen window (and a lazy dump's serving) need not wait for.
      commitRound(out, figures, inv, null);
      // The lock outlives ckpt from the kill on, until the restore (or its timeout): the tree's sockets close silently in repair mode.
      if (tcpLock?.active) tcpLock.commit(tree.map((p) => p.pid));
      else tcpLock?.release();
      opts.onImagesWritten?.(lazy ? { lazyPagesAt: lazy.where } : {});
      if (lazy) {
        // The tree stays frozen while its pages are fetched; a destination that goes away first leaves it running here (the catch below).
        lazyResult = await lazy.serve(dumped.map((d) => ({ pid: d.tree.pid, runs: d.pages.lazy })), async () => {
          await guard.checkpoint();
          // Killed from outside while its pages wait: nothing is left to serve, and the set would restore a tree that no longer has them.
          const dead = dumped.find((d) => hasExited(proc, d.tree.pid));
          if (dead) throw new Error(`process ${dead.tree.pid} of the tree died while its lazy pages waited to be fetched: the images are removed`);
        });
      }
      release(freezer, "kill", opts.exitAfter !== true);
      released = true;
      endTracking(tracking);
      // The holder closes the dumped sockets once the tree is gone, and keeps the lock.
      const handOffProblem = tcpLock?.handOff();
      if (handOffProblem) process.stderr.write(`ckpt: warning: ${handOffProblem}\n`);
      frozenMs = performance.now() - frozenAt;
      figures.frozenMs = frozenMs;
    }
    figures.totalMs = performance.now() - started;
    return {
      dir: opts.dir, pid: opts.pid, processes: tree.length,
      threads: tree.reduce((s, p) => s + p.threads.length, 0),
      leftRunning: opts.leaveRunning, figures, syscalls: callCountsSince(calls0),
      proc: { ...proc.counters }, mapFiles, pages: pageCounters,
      files: { ...files.ids.counters, fds: [...fdTables.values()].reduce((s, t) => s + t.length, 0), openFiles: files.kinds.size },
      bytesWritten: out.bytes,
      ...(server ? { pageServer: { peer: server.peer, ...server.counters } } : {}),
      ...(lazyResult ? { lazy: lazyResult } : {}),
      tracking: tracking.summary,
      irmap: { ...files.ctx.irmap.counters, ms: files.ctx.irmap.ms },
      snapshot: {
        ...snapCounters, used: snapCounters.processes > 0, ahead: aheadCounters,
        ...(snapshot.why ? { why: snapshot.why } : snapCounters.processes === 0 ? { why: `nothing worth protecting (processes with at most ${FROZEN_COPY_BYTES >> 20} MiB to save, areas with under 256 KiB): all copied while frozen` } : {}),
      },
    };
  } catch (e) {
    tracking?.abort();
    // Before the tree runs again: its connections out of repair mode, unlocked.
    tcpLock?.release();
    // Protection off before the tree runs: no thread should wait on a copy that will not come.
    for (const d of dumped) d.snapshot?.release();
    ahead?.close();
    if (!released) release(freezer, "resume");
    out.discard();
    throw e;
  } finally {
    restoreHooks?.();
    ahead?.close();
    guard.dispose();
    store.close();
    lazy?.close();
    tcpLock?.close();
    for (const d of dumped) d.pages.dispose();
    for (const m of table.shmem) m.buffer.dispose();
    out.close();
    proc.close();
  }
}

/**
 * Name the process in an error from dumping it; a process that vanished
 * (killed while frozen) makes every /proc read and ptrace call fail, so say that.
 */
export function explainProcessError(pid: number, e: unknown): Error {
  if (!(e instanceof Error)) return new Error(`process ${pid}: ${String(e)}`);
  if (isGone(e) && !processAlive(pid)) return new Error(`process ${pid} exited during the dump (${e.message})`);
  if (e.message.includes(String(pid))) return e;
  e.message = `process ${pid}: ${e.message}`;
  return e;
}

function processAlive(pid: number): boolean {
  const proc = new ProcFs();
  try {
    const st = readStat(proc, pid);
    return st.state !== "Z" && st.state !== "X";
  } catch {
    return false;
  } finally {
    proc.close();
  }
}

/** Let the tree go; problems here are reported but never hide the dump's own error. */
export function release(freezer: Freezer, mode: "resume" | "kill", awaitDeath = true): void {
  for (const p of freezer.release(mode, undefined, awaitDeath)) process.stderr.write(`ckpt: warning: while letting the tree go: ${p}\n`);
}

/** Whether this dump copies memory as a snapshot, and if not, why. */
interface SnapshotChoice {
  use: boolean;
  why?: string;
  counters: SnapshotCounters;
}

/**
 * The pages of a frozen process: a snapshot begun, or copied now. A kernel
 * without synchronous write-protection (userfaultfd refused) turns the
 * snapshot off for the rest of the dump, saying why.
 */
function processPages(pid: number, plan: PagePlan, snapshot: SnapshotChoice, ahead: ProtectedAhead | null): { pages: PageCopy; snapshot?: ProcessSnapshot } {
  if (snapshot.use) {
    try {
      return plan.beginSnapshot(snapshot.counters, ahead);
    } catch (e) {
      if (!(e instanceof SysError && ([Errno.ENOSYS, Errno.EPERM, Errno.EINVAL, Errno.EOPNOTSUPP] as number[]).includes(e.errno))) throw e;
      snapshot.use = false;
      snapshot.why = `no synchronous userfaultfd write-protection here (${e.message}); memory copied while frozen`;
    }
  }
  ahead?.wp.close();
  return { pages: plan.copy(false) };
}

async function dumpProcess(
  proc: ProcFs, p: FrozenProcess, files: FilesDump, ids: TaskKobjIdsEntry, fdTables: Map<number, FdinfoEntry[]>, mapFiles: MapFilesCounters,
  objects: SharedAnonMemory, pageCounters: PageCounters, opts: DumpOptions, tracking: RoundTracking, snapshot: SnapshotChoice, phases: FrozenPhases,
  ahead: ProtectAhead | null,
): Promise<DumpedProcess> {
  const started = performance.now();
  const measured = (): number => phases.areas + phases.injected + phases.pageScan;
  const measuredBefore = measured();
  const { pid } = p;
  const stat = readStat(proc, pid);
  const status = readStatus(proc, pid);
  if (status.seccomp !== 0) throw new Error(`process ${pid} runs in seccomp mode ${status.seccomp}, which ckpt cannot dump yet`);
  // A filter may be a thread's alone (seccomp without TSYNC).
  for (const tid of p.threads.slice(1)) {
    const mode = readStatus(proc, pid, tid).seccomp;
    if (mode !== 0) throw new Error(`process ${pid}: thread ${tid} runs in seccomp mode ${mode}, which ckpt cannot dump yet`);
  }
  // POSIX timers are not saved yet: refuse rather than drop them silently.
  if (proc.readText(pid, "timers").trim() !== "") throw new Error(`process ${pid} has POSIX timers (timer_create), which ckpt cannot dump yet`);
  const { table } = files.ctx;

  // Files first: exe, cwd, root, then the fds and the mapped files.
  const exeId = dumpLinkedFile(proc, pid, "exe", table);
  const cwdId = dumpLinkedFile(proc, pid, "cwd", table);
  const rootId = dumpLinkedFile(proc, pid, "root", table);
  const fdinfo = dumpFds(files, pid);
  fdTables.set(ids.filesId, fdinfo);
  const auxv = parseAuxv(proc.readBytes(pid, "auxv"));

  const { regs, sigmasks, task } = timePhase(phases, "injected", () => ({
    // Registers before any injection touches them.
    regs: new Map(p.threads.map((tid) => [tid, readThreadRegs(tid)])),
    sigmasks: new Map(p.threads.map((tid) => [tid, ptrace.getSigmask(tid)])),
    // Signal actions to read from the task: the caught and ignored ones, and SIGCHLD (see readSigactions).
    task: readTaskState(proc, p.threads, status.sigCgt | status.sigIgn | (1n << BigInt(SIG.CHLD - 1))),
  }));
  // The two walks of every page table, at once. smaps (for the areas'
  // VmFlags) is read on another core while this thread scans the pages
  // (PAGEMAP_SCAN) of the areas /proc/PID/maps names: 14 and 15 ms each for
  // 2 GiB. Both start after the injected calls, whose scratch mapping (when
  // the stack has no room) and brk(0) (which takes the address space's write
  // lock, and would wait for the whole smaps walk) change or block them.
  // A small process's smaps is read after the scan, on this thread: a read
  // on the pool costs a thread's wake-up and a turn of the event loop
  // (~3 ms), more than the walk.
  const inBackground = stat.rssPages * PAGE_SIZE >= SMAPS_IN_BACKGROUND_BYTES;
  const prepared = ahead?.take(pid) ?? null;
  // Pages a lazy restore fills before the tree runs, never on a fault: each
  // thread's rseq area (the kernel writes it on the thread's way back to
  // user mode, and a fault there would hold the restore's last step until
  // the source sent it), and the page at its stack pointer (as CRIU keeps it).
  const rseqs = new Map(p.threads.map((tid) => [tid, readRseq(tid).entry]));
  const eager = p.threads.flatMap((tid) => [...rseqPages(rseqs.get(tid)!), stackPage(regs.get(tid)!.regs.sp)]);
  const where = opts.lazyPages ? "source" : "here";
  const scan = (saved: readonly MapArea[], ranges: readonly LazyRange[], tracked?: ProcessTracking | null): PagePlan => timePhase(phases, "pageScan", () =>
    planProcessPages(pid, saved, opts.pageScan ?? "auto", proc, pageCounters, tracked === undefined ? tracking.forProcess(pid, stat.startTime, saved) : tracked, { ranges, where }, prepared !== null));
  // The scan runs ahead of smaps, and one made on the wrong areas is simply
  // made again: it has no side effect but, when it follows a pre-dump chain,
  // registering an area new since the parent with the chain's userfaultfd
  // (a dump never protects). An area registered that smaps then leaves out
  // (a droppable one) stays registered, unprotected, until the chain's
  // tracker ends, and the kernel refuses those it cannot track. Every
  // registration takes the address space's write lock: they are made before
  // the smaps walk starts, or each would wait for all of it.
  const early = inBackground ? (() => {
    const saved = timePhase(phases, "areas", () => readMaps(proc, pid).filter(savesPages));
    return { saved, ranges: lazyRanges(saved, eager), tracked: timePhase(phases, "pageScan", () => tracking.forProcess(pid, stat.startTime, saved)) };
  })() : null;
  const smaps = inBackground ? readSmapsInBackground(proc, pid, false) : null;
  const earlyPlan = early ? scan(early.saved, early.ranges, early.tracked) : null;
  const areasStarted = performance.now();
  const vmas = dumpVmas(proc, pid, smaps ? await smaps : readSmaps(proc, pid, false), table, mapFiles, objects);
  phases.areas += performance.now() - areasStarted;
  const saved = vmas.filter((v) => v.savePages).map((v) => v.area);
  // maps lacks the VmFlags: a droppable area is not saved, a locked one not lazy.
  const ranges = lazyRanges(saved, eager);
  const plan = early && earlyPlan && sameAreas(early.saved, saved) && sameAreas(early.ranges, ranges) ? earlyPlan : scan(saved, ranges);

  const cores = new Map<number, CoreEntry>();
  for (const tid of p.threads) {
    const r = regs.get(tid);
    const t = task.threads.get(tid);
    if (!r || !t) throw new Error(`process ${pid}: thread ${tid} has no saved state`);
    const tstat = tid === pid ? stat : readStat(proc, pid, tid);
    const tstatus = tid === pid ? status : readStatus(proc, pid, tid);
    const robust = robustList(tid);
    const rseq = rseqs.get(tid)!;
    const threadCore = create(ThreadCoreEntrySchema, {
      futexRla: robust.head, futexRlaLen: robust.len,
      // The policy as sched_getscheduler() gives it: with SCHED_RESET_ON_FORK, which /proc's stat leaves out.
      schedNice: tstat.nice, schedPolicy: schedGetscheduler(tid), schedPrio: tstat.rtPriority,
      blkSigset: sigmasks.get(tid) ?? 0n,
      sas: create(ThreadSasEntrySchema, t.sigaltstack),
      pdeathSig: t.pdeathSig,
      signalsP: signalQueue(tid, false),
      creds: credsEntry(tstatus, t.securebits),
      comm: tstat.comm,
      ...(rseq.rseqAbiPointer !== 0n ? { rseqEntry: rseq } : {}),
    });
    const core = create(CoreEntrySchema, {
      mtype: CoreEntry_March.X86_64,
      threadInfo: threadInfo(tid, r, t.clearTidAddr),
      threadCore,
    });
    if (tid === pid) {
      core.tc = create(TaskCoreEntrySchema, {
        taskState: p.jobStopped ? TASK_STOPPED : TASK_ALIVE,
        ...(p.stopSigno ? { stopSigno: p.stopSigno } : {}),
        exitCode: 0,
        personality: readProcNumber(proc, pid, "personality", 16),
        flags: stat.flags,
        blkSigset: sigmasks.get(tid) ?? 0n,
        comm: stat.comm,
        timers: task.timers,
        rlimits: create(TaskRlimitsEntrySchema, { rlimits: rlimits(proc, pid) }),
        signalsS: signalQueue(tid, true),
        loginuid: readProcNumber(proc, pid, "loginuid") >>> 0,
        oomScoreAdj: readProcNumber(proc, pid, "oom_score_adj"),
        sigactions: task.sigactions,
        childSubreaper: task.childSubreaper,
        ...(task.membarrierRegistrations !== 0 ? { membarrierRegistrationMask: task.membarrierRegistrations } : {}),
      });
    }
    cores.set(tid, core);
  }
  const mm = mmEntry(stat, auxv, exeId, vmas, task.mm);
  phases.tasks += performance.now() - started - (measured() - measuredBefore);
  // Last, so that nothing can fail between protecting the memory and handing the snapshot to the dump.
  const { pages, snapshot: snap } = timePhase(phases, "pages", () => processPages(pid, plan, snapshot, prepared));
  return { tree: p, ids, cores, mm, fdinfo, cwdId, rootId, umask: status.umask ?? 0o022, pages, ...(snap ? { snapshot: snap } : {}) };
}

/** Resident memory from which smaps is read on another core while the pages are scanned (its walk then costs more than the hand-over). */
const SMAPS_IN_BACKGROUND_BYTES = 64 * 1024 * 1024;

/** The pages of a thread's rseq area, [start, end); none when it registered none. */
function rseqPages({ rseqAbiPointer: at, rseqAbiSize: size }: RseqEntry): LazyRange[] {
  if (at === 0n) return [];
  const page = BigInt(PAGE_SIZE);
  return [{ start: at - (at % page), end: ((at + BigInt(Math.max(size, 1)) + page - 1n) / page) * page }];
}

/** The page holding a thread's stack pointer. */
function stackPage(sp: bigint): LazyRange {
  const start = sp - (sp % BigInt(PAGE_SIZE));
  return { start, end: start + BigInt(PAGE_SIZE) };
}

/** Whether two lists of areas name the same ranges, in the same order. */
function sameAreas(a: readonly LazyRange[], b: readonly LazyRange[]): boolean {
  return a.length === b.length && a.every((x, i) => x.start === b[i]!.start && x.end === b[i]!.end);
}

/**
 * A zombie's core, as CRIU writes it: the task core alone, with TASK_DEAD,
 * the wait status its parent is due to get, and its name. No other image.
 */
function zombieCore(proc: ProcFs, pid: number): { pid: number; core: CoreEntry } {
  const stat = readStat(proc, pid);
  return {
    pid,
    core: create(CoreEntrySchema, {
      mtype: CoreEntry_March.X86_64,
      tc: create(TaskCoreEntrySchema, { taskState: TASK_DEAD, exitCode: stat.exitCode, personality: 0, flags: 0, blkSigset: 0n, comm: stat.comm }),
    }),
  };
}

type Clock = ReturnType<typeof clockNow>;

function writeImages(out: ImageDirWriter, dumped: readonly DumpedProcess[], zombies: readonly { pid: number; core: CoreEntry }[], table: FileTable, tree: readonly FrozenProcess[], clocks: { monotonic: Clock; boottime: Clock }): void {
  const pstree = new ImageEncoder(kind("PSTREE"));
  for (const e of pstreeEntries(tree)) pstree.add(PstreeEntrySchema, e);
  out.writeImage("pstree.img", pstree);
  for (const z of zombies) out.writeImage(`core-${z.pid}.img`, new ImageEncoder(kind("CORE")).add(CoreEntrySchema, z.core));
  for (const d of dumped) {
    const pid = d.tree.pid;
    for (const [tid, core] of d.cores) out.writeImage(`core-${tid}.img`, new ImageEncoder(kind("CORE")).add(CoreEntrySchema, core));
    out.writeImage(`ids-${pid}.img`, new ImageEncoder(kind("IDS")).add(TaskKobjIdsEntrySchema, d.ids));
    out.writeImage(`mm-${pid}.img`, new ImageEncoder(kind("MM")).add(MmEntrySchema, d.mm));
    out.writeImage(`fs-${pid}.img`, new ImageEncoder(kind("FS")).add(FsEntrySchema, create(FsEntrySchema, { cwdId: d.cwdId, rootId: d.rootId, umask: d.umask })));
    const fdinfo = new ImageEncoder(kind("FDINFO"));
    for (const e of d.fdinfo) fdinfo.add(FdinfoEntrySchema, e);
    out.writeImage(`fdinfo-${d.ids.filesId}.img`, fdinfo);
  }
  const files = new ImageEncoder(kind("FILES"));
  for (const e of table.entries) files.add(FileEntrySchema, e);
  out.writeImage("files.img", files);
  for (const [name, enc] of table.images) out.writeImage(name, enc);
  out.writeImage("seccomp.img", new ImageEncoder(kind("SECCOMP")).add(SeccompEntrySchema, create(SeccompEntrySchema, {})));
  out.writeImage("timens-0.img", new ImageEncoder(kind("TIMENS")).add(TimensEntrySchema, create(TimensEntrySchema, {
    monotonic: create(TimespecSchema, clocks.monotonic),
    boottime: create(TimespecSchema, clocks.boottime),
  })));
}

/** Contents of memfds and shared anonymous memory: per object a pagemap-shmem pagemap (entries at offsets into the object) and its pages. */
function saveShmem(store: PageStore, table: FileTable): void {
  for (const m of table.shmem) {
    const entries = m.runs.map((r) => {
      const nr = r.data.length / PAGE_SIZE;
      return create(PagemapEntrySchema, { vaddr: r.offset, compatNrPages: nr, nrPages: BigInt(nr), flags: PE_PRESENT });
    });
    store.save({ kind: "shmem", id: m.shmid }, entries, (sink) => {
      let bytes = 0;
      for (const r of m.runs) {
        sink.write(r.data);
        bytes += r.data.length;
      }
      return bytes;
    });
  }
}

