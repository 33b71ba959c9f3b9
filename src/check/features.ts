/**
 * Kernel feature probes for `ckpt check`. Each probe really performs the
 * operation on this process (or on a throw-away probe process) and reports
 * what happened; nothing is inferred from version numbers.
 */
import { ProcFs } from "../proc/procfs";
import { readStatus } from "../proc/status";
import { kcmp, nameToHandleAt, openByHandleAt, pidfdGetfd, pidfdOpen, poll, userfaultfd } from "../sys/calls";
import { addressOf, close, getpid, ioctl, kill, memoryView, mmap, munmap, openat, preadInto, processVmReadv, writeAll } from "../sys/libc";
import {
  AT, KCMP, MAP, O, PAGE_IS, PAGE_SIZE, PAGEMAP_SCAN, PROT, SIG, UFFD_API, UFFD_FEATURE,
  PM_SCAN, UFFD_USER_MODE_ONLY, UFFDIO_API, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_WP,
} from "../sys/nr";
import * as ptrace from "../sys/ptrace";
import { encodePmScanArg, encodeUffdioRegister, PAGE_REGION_SIZE, setIovec, UFFDIO_API_SIZE } from "../sys/structs";
import { startProbeTarget } from "./probe-target";

export interface FeatureResult {
  /** Stable identifier, used as the JSON key. */
  name: string;
  ok: boolean;
  /** True when `ckpt dump` cannot work without it. */
  requiredForDump: boolean;
  /** What was observed: the error, or what works. */
  detail: string;
}

/** CAP_CHECKPOINT_RESTORE's bit number. */
const CAP_CHECKPOINT_RESTORE = 40n;

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Run a cleanup step whose failure must not hide the error already on its way. */
function quietly(step: () => void): void {
  try {
    step();
  } catch {
    // The caller is already failing for a better reason.
  }
}

/**
 * SIGKILL the probe process and wait (up to a second) until it has exited:
 * `ckpt check` must not end while its probe still lives. It is not our
 * child, so a pidfd says when it is gone.
 */
function endProbe(pid: number): void {
  let pidfd = -1;
  try {
    pidfd = pidfdOpen(pid);
  } catch {
    // Gone already.
  }
  quietly(() => kill(pid, SIG.KILL));
  if (pidfd >= 0) {
    quietly(() => poll([{ fd: pidfd, events: 1 /* POLLIN: exited */ }], 1000));
    close(pidfd);
  }
}

async function probePtraceSeize(): Promise<string> {
  const pid = await startProbeTarget();
  try {
    ptrace.seize(pid);
    let stopped = false;
    try {
      ptrace.interrupt(pid);
      const status = ptrace.waitTracee(pid);
      if (!ptrace.isInterruptStop(status)) throw new Error(`probe process did not stop as expected (wait status 0x${status.toString(16)})`);
      stopped = true;
    } finally {
      // Detaching is part of what is probed once the stop worked; after a
      // failure it is only cleanup.
      if (stopped) ptrace.detach(pid);
      else quietly(() => ptrace.detach(pid));
    }
    return "PTRACE_SEIZE, PTRACE_INTERRUPT and PTRACE_DETACH work";
  } finally {
    endProbe(pid);
  }
}

function probeKcmp(): string {
  const self = getpid();
  const fd = openat(AT.FDCWD, "/", O.RDONLY | O.CLOEXEC);
  try {
    const fd2 = openat(AT.FDCWD, "/", O.RDONLY | O.CLOEXEC);
    try {
      const same = kcmp(self, self, KCMP.FILE, fd, fd);
      const other = kcmp(self, self, KCMP.FILE, fd, fd2);
      if (same !== "equal" || other === "equal") throw new Error(`kcmp says ${same} for one file and ${other} for two`);
      return "KCMP_FILE tells one open file from two";
    } finally {
      close(fd2);
    }
  } finally {
    close(fd);
  }
}

function probePidfdGetfd(): string {
  const pidfd = pidfdOpen(getpid());
  try {
    const fd = openat(AT.FDCWD, "/", O.RDONLY | O.CLOEXEC);
    try {
      close(pidfdGetfd(pidfd, fd));
      return "pidfd_open and pidfd_getfd work";
    } finally {
      close(fd);
    }
  } finally {
    close(pidfd);
  }
}

function probeProcessVmReadv(): string {
  const src = new Uint8Array(PAGE_SIZE).fill(0x5a);
  const dst = new Uint8Array(PAGE_SIZE);
  const local = new BigUint64Array(2);
  const remote = new BigUint64Array(2);
  setIovec(local, 0, addressOf(dst), dst.length);
  setIovec(remote, 0, addressOf(src), src.length);
  const n = processVmReadv(getpid(), local, 1, remote, 1);
  if (n !== PAGE_SIZE || dst[PAGE_SIZE - 1] !== 0x5a) throw new Error(`read ${n} bytes, contents differ`);
  return "process_vm_readv copies memory";
}

/** An anonymous private page of our own, written once so it is present. */
function withTouchedPage<T>(fn: (addr: number, page: Uint8Array) => T): T {
  const addr = mmap(0, PAGE_SIZE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const page = memoryView(addr, PAGE_SIZE);
    page[0] = 1;
    return fn(addr, page);
  } finally {
    munmap(addr, PAGE_SIZE);
  }
}

function probePagemapScan(): string {
  return withTouchedPage((addr) => {
    const fd = openat(AT.FDCWD, "/proc/self/pagemap", O.RDONLY | O.CLOEXEC);
    try {
      const vec = new Uint8Array(PAGE_REGION_SIZE * 4);
      const arg = encodePmScanArg({
        flags: 0n, start: BigInt(addr), end: BigInt(addr + PAGE_SIZE), vec: BigInt(addressOf(vec)),
        vec_len: 4n, max_pages: 0n, category_inverted: 0n, category_mask: BigInt(PAGE_IS.PRESENT),
        category_anyof_mask: 0n, return_mask: BigInt(PAGE_IS.PRESENT),
      });
      const regions = ioctl(fd, PAGEMAP_SCAN, arg, "PAGEMAP_SCAN");
      if (regions !== 1) throw new Error(`PAGEMAP_SCAN found ${regions} regions for one present page`);
      return "PAGEMAP_SCAN reports present pages";
    } finally {
      close(fd);
    }
  });
}

/** Our own /proc/self/pagemap entry for the page at `addr`. */
function ownPagemapEntry(addr: number): bigint {
  const fd = openat(AT.FDCWD, "/proc/self/pagemap", O.RDONLY | O.CLOEXEC);
  try {
    const entry = new Uint8Array(8);
    preadInto(fd, entry, (addr / PAGE_SIZE) * 8);
    return new DataView(entry.buffer).getBigUint64(0, true);
  } finally {
    close(fd);
  }
}

/** Bit 55 of a pagemap entry: the page was written since the last clear_refs "4". */
function softDirtyBit(addr: number): boolean {
  return ((ownPagemapEntry(addr) >> 55n) & 1n) === 1n;
}

export function probeSoftDirty(): string {
  return withTouchedPage((addr, page) => {
    const fd = openat(AT.FDCWD, "/proc/self/clear_refs", O.WRONLY | O.CLOEXEC);
    try {
      writeAll(fd, new TextEncoder().encode("4"));
    } finally {
      close(fd);
    }
    const afterClear = softDirtyBit(addr);
    page[1] = 2;
    const afterWrite = softDirtyBit(addr);
    if (afterClear || !afterWrite) {
      throw new Error("soft-dirty bits are not tracked (kernel built without CONFIG_MEM_SOFT_DIRTY)");
    }
    return "clear_refs and pagemap bit 55 track writes";
  });
}

/**
 * Arm write-protection on a page of our own and write to it: async mode must
 * resolve the write by itself and PAGEMAP_SCAN must then call the page WRITTEN.
 */
export function probeUffdWpAsync(): string {
  const fd = userfaultfd(O.CLOEXEC | O.NONBLOCK | UFFD_USER_MODE_ONLY);
  try {
    const api = new Uint8Array(UFFDIO_API_SIZE);
    const v = new DataView(api.buffer);
    v.setBigUint64(0, BigInt(UFFD_API), true);
    v.setBigUint64(8, BigInt(UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED), true);
    ioctl(fd, UFFDIO_API, api, "UFFDIO_API(WP_ASYNC|WP_UNPOPULATED)");
    return withTouchedPage((addr, page) => {
      ioctl(fd, UFFDIO_REGISTER, encodeUffdioRegister(BigInt(addr), BigInt(PAGE_SIZE), UFFDIO_REGISTER_MODE_WP), "UFFDIO_REGISTER(MODE_WP)");
      const written = (protect: boolean): boolean => {
        const pm = openat(AT.FDCWD, "/proc/self/pagemap", O.RDONLY | O.CLOEXEC);
        try {
          const vec = new Uint8Array(PAGE_REGION_SIZE * 4);
          const arg = encodePmScanArg({
            flags: protect ? BigInt(PM_SCAN.WP_MATCHING) : 0n, start: BigInt(addr), end: BigInt(addr + PAGE_SIZE), vec: BigInt(addressOf(vec)),
            vec_len: 4n, max_pages: 0n, category_inverted: 0n, category_mask: BigInt(PAGE_IS.PRESENT),
            category_anyof_mask: 0n, return_mask: BigInt(PAGE_IS.WRITTEN),
          });
          const n = ioctl(pm, PAGEMAP_SCAN, arg, protect ? "PAGEMAP_SCAN(WP_MATCHING)" : "PAGEMAP_SCAN");
          return n === 1 && (new DataView(vec.buffer).getBigUint64(16, true) & BigInt(PAGE_IS.WRITTEN)) !== 0n;
        } finally {
          close(pm);
        }
      };
      written(true);
      if (written(false)) throw new Error("a write-protected page is reported written before any write");
      page[1] = 2;
      if (!written(false)) throw new Error("a write to a protected page is not reported");
      return "userfaultfd write-protect in async mode tracks writes (PAGEMAP_SCAN reports them)";
    });
  } finally {
    close(fd);
  }
}

function probeOpenByHandle(): string {
  const { handle } = nameToHandleAt(AT.FDCWD, "/");
  // Any fd on the same mount serves as the mount fd.
  const mountFd = openat(AT.FDCWD, "/", O.RDONLY | O.DIRECTORY | O.CLOEXEC);
  try {
    close(openByHandleAt(mountFd, handle, O.RDONLY | O.CLOEXEC));
    return "name_to_handle_at and open_by_handle_at work";
  } finally {
    close(mountFd);
  }
}

function probeCapCheckpointRestore(): string {
  const proc = new ProcFs();
  try {
    const caps = readStatus(proc, "self").capEff;
    if (((caps >> CAP_CHECKPOINT_RESTORE) & 1n) === 0n) throw new Error("CAP_CHECKPOINT_RESTORE is not in the effective set");
    return "CAP_CHECKPOINT_RESTORE is effective";
  } finally {
    proc.close();
  }
}

function probePagemapRead(): string {
  return withTouchedPage((addr) => {
    // Bit 63: page present.
    if (((ownPagemapEntry(addr) >> 63n) & 1n) === 0n) throw new Error("a touched page is not reported present");
    return "/proc/PID/pagemap reports present pages";
  });
}

interface Probe {
  name: string;
  requiredForDump: boolean;
  run: () => string | Promise<string>;
}

const PROBES: Probe[] = [
  { name: "ptrace_seize", requiredForDump: true, run: probePtraceSeize },
  { name: "process_vm_readv", requiredForDump: true, run: probeProcessVmReadv },
  { name: "pagemap", requiredForDump: true, run: probePagemapRead },
  { name: "kcmp", requiredForDump: true, run: probeKcmp },
  { name: "pagemap_scan", requiredForDump: false, run: probePagemapScan },
  { name: "pidfd_getfd", requiredForDump: false, run: probePidfdGetfd },
  { name: "soft_dirty", requiredForDump: false, run: probeSoftDirty },
  { name: "uffd_wp_async", requiredForDump: false, run: probeUffdWpAsync },
  { name: "open_by_handle_at", requiredForDump: false, run: probeOpenByHandle },
  { name: "cap_checkpoint_restore", requiredForDump: false, run: probeCapCheckpointRestore },
];

/** Run every probe. Failures are results, not exceptions. */
export async function checkFeatures(): Promise<FeatureResult[]> {
  const out: FeatureResult[] = [];
  for (const p of PROBES) {
    try {
      out.push({ name: p.name, ok: true, requiredForDump: p.requiredForDump, detail: await p.run() });
    } catch (e) {
      out.push({ name: p.name, ok: false, requiredForDump: p.requiredForDump, detail: describe(e) });
    }
  }
  return out;
}

/** True when every feature a dump needs is there. */
export function dumpCanWork(results: readonly FeatureResult[]): boolean {
  return results.every((r) => r.ok || !r.requiredForDump);
}
