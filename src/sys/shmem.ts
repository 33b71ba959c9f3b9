/**
 * Facts about shared memory objects (tmpfs inodes on the kernel's internal
 * shm mount) that dump and restore both need: which device those inodes
 * live on, and where an object's allocated pages are.
 */
import { lseek } from "./calls";
import { Errno, SysError } from "./errno";
import { mmap, munmap, statx } from "./libc";
import { AT, MAP, PAGE_SIZE, PROT, SEEK } from "./nr";

let device: { major: number; minor: number } | undefined;

/**
 * The device of the kernel's internal shm mount, where MAP_SHARED|MAP_ANONYMOUS
 * memory, memfds and SysV segments have their inodes: found once by making a
 * shared anonymous page and asking /proc/self/map_files what backs it.
 */
export function shmemDevice(): { major: number; minor: number } {
  if (device) return device;
  const at = mmap(0, PAGE_SIZE, PROT.READ, MAP.SHARED | MAP.ANONYMOUS);
  try {
    const st = statx(AT.FDCWD, `/proc/self/map_files/${at.toString(16)}-${(at + PAGE_SIZE).toString(16)}`);
    device = { major: st.devMajor, minor: st.devMinor };
    return device;
  } finally {
    munmap(at, PAGE_SIZE);
  }
}

/** The next run of allocated (or swapped) bytes of `fd` at or after `from`, or null past the last one. */
export function nextData(fd: number, from: bigint): { start: bigint; end: bigint } | null {
  let start: bigint;
  try {
    start = lseek(fd, from, SEEK.DATA);
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENXIO) return null;
    throw e;
  }
  return { start, end: lseek(fd, start, SEEK.HOLE) };
}
