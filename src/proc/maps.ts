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

/**
 * Parse maps or smaps text; smaps' per-area lines fill vmFlags, and kb unless
 * `withKb` is false. A process with thousands of areas has ~20 smaps lines per
 * area, so the loop walks the text by index and looks at a line's first
 * character before anything else: area headers start with a lowercase hex
 * digit, per-area lines with an uppercase key.
 */
export function parseMaps(text: string, withKb = true): MapArea[] {
  const areas: MapArea[] = [];
  let cur: MapArea | null = null;
  for (let start = 0; start < text.length; ) {
    let end = text.indexOf("\n", start);
    if (end < 0) end = text.length;
    const first = text.charCodeAt(start);
    if (end === start) {
      start = end + 1;
      continue;
    }
    const isKeyLine = first >= 65 && first <= 90; // 'A'..'Z'
    if (!isKeyLine) {
      const line = text.slice(start, end);
      const head = parseHeader(line);
      if (!head) throw new Error(`/proc maps: unparsable line ${JSON.stringify(line)}`);
      cur = head;
      areas.push(head);
    } else if (!cur) {
      throw new Error(`/proc maps: line before any area: ${JSON.stringify(text.slice(start, end))}`);
    } else if (text.startsWith("VmFlags:", start)) {
      cur.vmFlags = text.slice(start + 8, end).trim().split(" ").filter(Boolean);
    } else if (withKb) {
      const line = text.slice(start, end);
      const colon = line.indexOf(":");
      if (colon < 0) throw new Error(`/proc maps: unparsable line ${JSON.stringify(line)}`);
      const value = line.slice(colon + 1).trim();
      if (value.endsWith(" kB")) (cur.kb ??= {})[line.slice(0, colon)] = Number(value.slice(0, -3));
    }
    start = end + 1;
  }
  return areas;
}

export function readMaps(proc: ProcFs, target: ProcTarget): MapArea[] {
  return parseMaps(proc.readText(target, "maps"));
}

/** smaps areas with VmFlags; `withKb` false skips the per-area counters (the dump needs only flags). */
export function readSmaps(proc: ProcFs, target: ProcTarget, withKb = true): MapArea[] {
  return parseMaps(proc.readText(target, "smaps"), withKb);
}

/**
 * readSmaps with the reading on another core (ProcFs.readTextInBackground):
 * start it, do other work, await the areas. Marked handled, as the text is.
 */
export function readSmapsInBackground(proc: ProcFs, target: ProcTarget, withKb = true): Promise<MapArea[]> {
  const areas = proc.readTextInBackground(target, "smaps").then((text) => parseMaps(text, withKb));
  areas.catch(() => {});
  return areas;
}
