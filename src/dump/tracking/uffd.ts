/**
 * userfaultfd write-protection in async mode, as a dirty-page tracker.
 *
 * A userfaultfd belongs to the mm of the process that made it, so ckpt makes
 * one inside each process of the tree (an injected userfaultfd() call), takes
 * a copy with pidfd_getfd and closes the process's own fd again: the process
 * is left with no fd and no mapping of ours. Everything else is done on
 * ckpt's copy — the kernel applies it to the mm the userfaultfd belongs to:
 * the API handshake (WP_ASYNC: a write to a protected page is resolved by
 * the kernel itself, which only clears the page's protect bit; no thread
 * ever waits for us), and registering each area to save in WP mode.
 * Write-protecting happens during the page scan (PAGEMAP_SCAN with
 * PM_SCAN_WP_MATCHING), and the scan's WRITTEN category then names the pages
 * written since the previous round.
 */
import type { ProcFs } from "../../proc/procfs";
import { pidfdGetfd, pidfdOpen } from "../../sys/calls";
import { Errno, SysError } from "../../sys/errno";
import { close, ioctl } from "../../sys/libc";
import { O, SYS, UFFD_API, UFFD_FEATURE, UFFD_USER_MODE_ONLY, UFFDIO_API, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_WP } from "../../sys/nr";
import { encodeUffdioRegister, UFFDIO_API_SIZE, UFFDIO_REGISTER_SIZE } from "../../sys/structs";
import { RemoteSyscalls } from "../task/inject";

/**
 * WP_UNPOPULATED makes the kernel keep protect markers on anonymous pages it
 * zaps and lets PAGEMAP_SCAN protect anonymous areas at all (its
 * "wp-allowed" test wants markers); WP_ASYNC is the no-waiting mode above.
 */
const ASYNC_TRACKING = { features: UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED, what: "WP_ASYNC|WP_UNPOPULATED", userModeOnly: true };

/**
 * A userfaultfd for process `pid` (frozen, leader thread `pid`), handshaken,
 * as an fd of ckpt's. USER_MODE_ONLY lets a process without privileges make
 * one whatever vm.unprivileged_userfaultfd says; it only concerns faults in
 * kernel mode, which async write-protection never delivers anyway.
 */
export function makeUffd(proc: ProcFs, pid: number, mode: { features: number; what: string; userModeOnly: boolean } = ASYNC_TRACKING): number {
  const remote = RemoteSyscalls.open(pid, { proc });
  let ours = -1;
  const flags = O.CLOEXEC | O.NONBLOCK | (mode.userModeOnly ? UFFD_USER_MODE_ONLY : 0);
  try {
    // The process's own fd is closed by a close() already armed in the
    // thread while we take our copy: a kill of ckpt meanwhile still closes it.
    remote.withNewFd("userfaultfd", SYS.userfaultfd, [flags], [`O_CLOEXEC|O_NONBLOCK${mode.userModeOnly ? "|UFFD_USER_MODE_ONLY" : ""}`], (theirs) => {
      const pidfd = pidfdOpen(pid);
      try {
        ours = pidfdGetfd(pidfd, theirs);
      } finally {
        close(pidfd);
      }
    });
  } catch (e) {
    if (ours >= 0) close(ours);
    throw e;
  } finally {
    remote.close();
  }
  try {
    const api = new Uint8Array(UFFDIO_API_SIZE);
    const v = new DataView(api.buffer);
    v.setBigUint64(0, BigInt(UFFD_API), true);
    v.setBigUint64(8, BigInt(mode.features), true);
    ioctl(ours, UFFDIO_API, api, `UFFDIO_API(${mode.what})`);
  } catch (e) {
    close(ours);
    throw e;
  }
  return ours;
}

const registerArg = new Uint8Array(UFFDIO_REGISTER_SIZE);

/**
 * Register [start, end) for write-protect tracking. False when the kernel
 * refuses this area (EINVAL: a kind it cannot protect; EPERM: a shared
 * mapping not opened for writing; EBUSY: another userfaultfd — the process's
 * own — has it): such an area is simply saved whole every round.
 */
export function registerWp(uffd: number, start: bigint, end: bigint): boolean {
  encodeUffdioRegister(start, end - start, UFFDIO_REGISTER_MODE_WP, registerArg);
  try {
    ioctl(uffd, UFFDIO_REGISTER, registerArg, `UFFDIO_REGISTER(0x${start.toString(16)}-0x${end.toString(16)}, MODE_WP)`);
    return true;
  } catch (e) {
    if (e instanceof SysError && (e.errno === Errno.EINVAL || e.errno === Errno.EPERM || e.errno === Errno.EBUSY)) return false;
    throw e;
  }
}
