/** /proc/PID/mountinfo: the mounts a process sees, with their ids, devices and mount points. */
import type { ProcFs, ProcTarget } from "./procfs";

export interface MountInfo {
  /** The mount's id (fdinfo's mnt_id, fanotify's mount marks). */
  mntId: number;
  parentId: number;
  /** st_dev of files on the mount, as major and minor number. */
  major: number;
  minor: number;
  /** The directory of the filesystem that is mounted here ("/" unless a bind mount of a subtree). */
  root: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

/** mountinfo escapes space, tab, newline and backslash as three octal digits after a backslash. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/**
 * "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS"
 * per line; the optional fields end at a lone "-".
 */
export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const f = line.split(" ");
    const dash = f.indexOf("-", 6);
    const [major, minor] = (f[2] ?? "").split(":").map(Number);
    if (f.length < 7 || dash < 0 || major === undefined || minor === undefined || Number.isNaN(major) || Number.isNaN(minor)) {
      throw new Error(`cannot read mountinfo line ${JSON.stringify(line)}`);
    }
    out.push({
      mntId: Number(f[0]), parentId: Number(f[1]), major, minor,
      root: unescape(f[3] ?? ""), mountPoint: unescape(f[4] ?? ""),
      fsType: f[dash + 1] ?? "", source: unescape(f[dash + 2] ?? ""),
    });
  }
  return out;
}

export function readMountInfo(proc: ProcFs, target: ProcTarget): MountInfo[] {
  return parseMountInfo(proc.readText(target, "mountinfo"));
}
