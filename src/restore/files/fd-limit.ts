/**
 * ckpt holds one fd per open file of the image set until every restored
 * process has taken its own, and a dumped tree may have thousands: the soft
 * RLIMIT_NOFILE is raised to the hard limit, and a set that would not fit
 * even then is refused before anything is opened.
 */
import { prlimit } from "../../sys/calls";
import { listDirectory } from "../../sys/file";
import { RLIMIT_NOFILE } from "../../sys/nr";

/** fds kept free for what ckpt opens meanwhile: images, /proc files, helpers. */
export const FD_HEADROOM = 64;

/** Make room for `files` more fds in ckpt; returns the new soft limit. */
export function makeRoomForFiles(files: number): number {
  const { hard } = prlimit(0, RLIMIT_NOFILE);
  prlimit(0, RLIMIT_NOFILE, { soft: hard, hard });
  // Listing /proc/self/fd opens one more fd, which the count includes.
  const open = listDirectory("/proc/self/fd").length;
  const limit = Number(hard);
  if (open + files + FD_HEADROOM > limit) {
    throw new Error(
      `files.img holds ${files} open files, but ckpt may have only ${limit} fds open (the RLIMIT_NOFILE hard limit), ` +
        `${open} of them in use already; raise the hard limit (ulimit -Hn, or fs.nr_open) to at least ${open + files + FD_HEADROOM}`,
    );
  }
  return limit;
}
