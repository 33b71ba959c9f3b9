/**
 * `restore --lazy-pages`: the lazy runs of a process (PE_LAZY: left at the
 * source by `dump --lazy-pages`, or saved in the images of any other dump)
 * are not filled. Instead the process gets a
 * userfaultfd, made inside it (a userfaultfd belongs to the mm of its
 * maker), registered for missing pages over every anonymous private area
 * holding lazy runs; ckpt takes a copy with pidfd_getfd, closes the
 * process's own, and hands the copy to the `ckpt lazy-pages` daemon of the
 * image directory over its unix socket (as CRIU's restore hands its
 * userfaultfds to CRIU's lazy-pages). The daemon fills each page on first
 * touch, from the source or the images, and pushes the rest in the
 * background.
 *
 * The handoff is one message per process, {u32 image pid, u32 host pid} with
 * the userfaultfd as SCM_RIGHTS, then {0, 0}; the daemon answers one byte
 * once it holds them all. Only then is the tree let go. Once it runs, the
 * restore closes the socket, and the daemon starts fetching the rest in the
 * background (until then it answers faults only).
 */
import type { VmaEntry } from "../image/gen/vma_pb";
import { VMA } from "../image/vma-status";
import { pidfdGetfd, pidfdOpen } from "../sys/calls";
import { close, ioctl } from "../sys/libc";
import { O, SYS, UFFD_API, UFFD_FEATURE, UFFDIO_API, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_MISSING } from "../sys/nr";
import { AF, connect, recvfrom, rightsCmsg, sendmsg, SOCK, socket, sockaddrUn } from "../sys/socket";
import { encodeUffdioRegister, UFFDIO_API_SIZE, UFFDIO_REGISTER_SIZE } from "../sys/structs";
import type { Puppet } from "./puppet";

/** The daemon's socket in the image directory (CRIU's name for it). */
export const LAZY_SOCKET = "lazy-pages.socket";

/** The events the daemon follows: a forked child's memory, moved and dropped ranges. */
export const LAZY_FEATURES = UFFD_FEATURE.EVENT_FORK | UFFD_FEATURE.EVENT_REMAP | UFFD_FEATURE.EVENT_REMOVE | UFFD_FEATURE.EVENT_UNMAP;

/** Anonymous private areas holding any lazy run: registered whole, as CRIU does (a page never saved reads as zeros). */
export function lazyAreas(vmas: readonly VmaEntry[], lazy: readonly { start: bigint; end: bigint }[]): VmaEntry[] {
  return vmas.filter((v) => (v.status & VMA.ANON_PRIVATE) !== 0 && lazy.some((r) => r.start < v.end && r.end > v.start));
}

export class LazyHandoff {
  private readonly ours: number[] = [];

  private constructor(private sock: number, readonly path: string) {}

  /** Connect to the daemon before anything is made: without one a lazy restore cannot run. */
  static connect(dir: string): LazyHandoff {
    const path = `${dir}/${LAZY_SOCKET}`;
    const sock = socket(AF.UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC);
    try {
      connect(sock, sockaddrUn(path));
    } catch (e) {
      close(sock);
      throw new Error(`no lazy-pages daemon answers at ${path} (start \`ckpt lazy-pages -D ${dir}\` first, with \`--page-server --address SOURCE --port N\` for a --lazy-pages dump): ${(e as Error).message}`, { cause: e });
    }
    return new LazyHandoff(sock, path);
  }

  /** Give process `task` its userfaultfd over `areas` and hand it to the daemon. */
  register(task: Puppet, imagePid: number, areas: readonly VmaEntry[]): void {
    const theirs = Number(task.call(SYS.userfaultfd, [O.CLOEXEC | O.NONBLOCK], ["O_CLOEXEC|O_NONBLOCK"]));
    let ours = -1;
    try {
      const pidfd = pidfdOpen(task.tid);
      try {
        ours = pidfdGetfd(pidfd, theirs);
      } finally {
        close(pidfd);
      }
    } finally {
      task.call(SYS.close, [theirs]);
    }
    this.ours.push(ours);
    const api = new Uint8Array(UFFDIO_API_SIZE);
    const v = new DataView(api.buffer);
    v.setBigUint64(0, BigInt(UFFD_API), true);
    v.setBigUint64(8, BigInt(LAZY_FEATURES), true);
    ioctl(ours, UFFDIO_API, api, "UFFDIO_API(EVENT_FORK|EVENT_REMAP|EVENT_REMOVE|EVENT_UNMAP)");
    const reg = new Uint8Array(UFFDIO_REGISTER_SIZE);
    for (const a of areas) {
      encodeUffdioRegister(a.start, a.end - a.start, UFFDIO_REGISTER_MODE_MISSING, reg);
      ioctl(ours, UFFDIO_REGISTER, reg, `UFFDIO_REGISTER(0x${a.start.toString(16)}-0x${a.end.toString(16)}, MODE_MISSING) for process ${imagePid}`);
    }
    const msg = new Uint32Array([imagePid, task.tid]);
    sendmsg(this.sock, new Uint8Array(msg.buffer), { control: [rightsCmsg([ours])] });
  }

  /** Every process handed over: wait for the daemon to say it holds them. */
  finish(): void {
    sendmsg(this.sock, new Uint8Array(8));
    const ack = new Uint8Array(1);
    if (recvfrom(this.sock, ack) !== 1) throw new Error(`the lazy-pages daemon at ${this.path} went away before taking the userfaultfds`);
  }

  /**
   * Closing the socket tells the daemon the tree runs (or that the restore
   * failed): only then does it start its background fetch. Again is a no-op.
   */
  close(): void {
    for (const fd of this.ours.splice(0)) close(fd);
    if (this.sock >= 0) close(this.sock);
    this.sock = -1;
  }
}
