/** /proc/PID/maps and /proc/PID/smaps: the task's memory areas. */
import type { ProcFs, ProcTarget } from "./procfs";

export interface MapArea {
  start: bigint;
  end: bigint;
  read: boolean;
  write: boolean;
  exec: boolean;
  /** 's' in the fourth permission column. */
  shared: boolean;
  /** Offset into the mapped file in bytes. */
  offset: bigint;
  devMajor: number;
  devMinor: number;
  inode: bigint;
  /** Path or pseudo-name ([heap], [stack], [vdso], ...); "" for anonymous memory. */
  path: string;
  /** smaps only: the VmFlags mnemonics (rd, wr, gd, dd, ...). */
  vmFlags?: string[];
  /** smaps only: counters in kB (Rss, Anonymous, Swap, ...). */
  kb?: Record<string, number>;
}

const HEADER = /^([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([sp]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)(?: +(.*))?$/;

function parseHeader(line: string): MapArea | null {
  const m = HEADER.exec(line);
  if (!m) return null;
  return {
    start: BigInt(`0x${m[1]}`),
    end: BigInt(`0x${m[2]}`),
    read: m[3] === "r",
    write: m[4] === "w",
    exec: m[5] === "x",
    shared: m[6] === "s",
    offset: BigInt(`0x${m[7]}`),
    devMajor: Number.parseInt(m[8] ?? "0", 16),
    devMinor: Number.parseInt(m[9] ?? "0", 16),
    inode: BigInt(m[10] ?? "0"),
    path: m[11] ?? "",
  };
}

/** Parse maps or smaps text; smaps' per-area lines fill vmFlags and kb. */
export function parseMaps(text: string): MapArea[] {
  const areas: MapArea[] = [];
  let cur: MapArea | null = null;
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const head = parseHeader(line);
    if (head) {
      cur = head;
      areas.push(head);
      continue;
    }
    if (!cur) throw new Error(`/proc maps: line before any area: ${JSON.stringify(line)}`);
    const colon = line.indexOf(":");
    if (colon < 0) throw new Error(`/proc maps: unparsable line ${JSON.stringify(line)}`);
    const key = line.slice(0, colon);
    const value = line.slice(colon + 1).trim();
    if (key === "VmFlags") {
      cur.vmFlags = value.split(/\s+/).filter(Boolean);
    } else if (value.endsWith(" kB")) {
      (cur.kb ??= {})[key] = Number(value.slice(0, -3));
    }
  }
  return areas;
}

export function readMaps(proc: ProcFs, target: ProcTarget): MapArea[] {
  return parseMaps(proc.readText(target, "maps"));
}

export function readSmaps(proc: ProcFs, target: ProcTarget): MapArea[] {
  return parseMaps(proc.readText(target, "smaps"));
}
