/**
 * dirty-tracking.json: what a pre-dump armed, for the next round. It is
 * ckpt's own file (CRIU keeps the equivalent state in the kernel's soft-dirty
 * bits and needs none): the tracking method, the tracker process that keeps
 * the tracking alive, and which processes are tracked — with the start time
 * that tells a reused pid apart and, for userfaultfd tracking, which of the
 * tracker's fds is that process's userfaultfd.
 */
import { Errno, SysError } from "../../sys/errno";
import { readWholeFile } from "../../sys/file";
import type { TrackingMethod } from "./method";
import type { TrackerId } from "./tracker";

export const TRACKING_FILE = "dirty-tracking.json";

export interface TrackedProcess {
  pid: number;
  /** /proc/PID/stat start time in clock ticks, as a decimal string. */
  startTime: string;
  /** Index of its userfaultfd among the tracker's held fds; null for soft-dirty. */
  held: number | null;
}

export interface TrackingRecord {
  method: TrackingMethod;
  tracker: TrackerId;
  timeoutSeconds: number;
  processes: TrackedProcess[];
}

export function encodeTrackingRecord(r: TrackingRecord): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(r, null, 2)}\n`);
}

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v);
const isTicks = (v: unknown): v is string => typeof v === "string" && /^\d+$/.test(v);

/** The record in image directory `dir`; null when there is none. A malformed one is an error. */
export function readTrackingRecord(dir: string): TrackingRecord | null {
  const path = `${dir}/${TRACKING_FILE}`;
  let text: string;
  try {
    text = new TextDecoder().decode(readWholeFile(path));
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENOENT) return null;
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  const bad = (why: string): Error => new Error(`${path} is malformed (${why})`);
  let r: unknown;
  try {
    r = JSON.parse(text);
  } catch (e) {
    throw bad((e as Error).message);
  }
  if (typeof r !== "object" || r === null) throw bad("not an object");
  const o = r as Record<string, unknown>;
  if (o.method !== "soft-dirty" && o.method !== "uffd-wp") throw bad(`method ${JSON.stringify(o.method)}`);
  const t = o.tracker as Record<string, unknown> | undefined;
  if (!t || !isInt(t.pid) || !isTicks(t.startTime)) throw bad("tracker");
  if (!isInt(o.timeoutSeconds)) throw bad("timeoutSeconds");
  if (!Array.isArray(o.processes)) throw bad("processes");
  const processes = o.processes.map((p: unknown, i: number): TrackedProcess => {
    const q = p as Record<string, unknown>;
    if (!q || !isInt(q.pid) || !isTicks(q.startTime) || !(q.held === null || isInt(q.held))) throw bad(`processes[${i}]`);
    return { pid: q.pid, startTime: q.startTime, held: q.held };
  });
  return { method: o.method, tracker: { pid: t.pid, startTime: t.startTime }, timeoutSeconds: o.timeoutSeconds, processes };
}
