/** /proc/PID/status: "Key:\tvalue" lines with ids, capabilities and signal masks. */
import type { ProcFs, ProcTarget } from "./procfs";

export interface ProcStatus {
  /** Every line, raw. */
  fields: Map<string, string>;
  name: string;
  tgid: number;
  pid: number;
  ppid: number;
  /** Real, effective, saved, filesystem. */
  uids: [number, number, number, number];
  gids: [number, number, number, number];
  groups: number[];
  /** Innermost-namespace pid of each nesting level, outermost first. */
  nsPids: number[];
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  sigBlk: bigint;
  sigPnd: bigint;
  shdPnd: bigint;
  /** Signals whose action is SIG_IGN, and whose action is a handler. */
  sigIgn: bigint;
  sigCgt: bigint;
  seccomp: number;
  umask: number | undefined;
}

function ids(v: string | undefined, what: string): [number, number, number, number] {
  const n = (v ?? "").trim().split(/\s+/).map(Number);
  if (n.length !== 4 || n.some(Number.isNaN)) throw new Error(`/proc status: bad ${what} line ${JSON.stringify(v)}`);
  return n as [number, number, number, number];
}

const hex = (v: string | undefined): bigint => (v ? BigInt(`0x${v.trim()}`) : 0n);

export function parseStatus(text: string): ProcStatus {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  const list = (k: string): number[] => (fields.get(k) ?? "").split(/\s+/).filter(Boolean).map(Number);
  const umask = fields.get("Umask");
  return {
    fields,
    name: fields.get("Name") ?? "",
    tgid: Number(fields.get("Tgid")),
    pid: Number(fields.get("Pid")),
    ppid: Number(fields.get("PPid")),
    uids: ids(fields.get("Uid"), "Uid"),
    gids: ids(fields.get("Gid"), "Gid"),
    groups: list("Groups"),
    nsPids: list("NSpid"),
    capInh: hex(fields.get("CapInh")),
    capPrm: hex(fields.get("CapPrm")),
    capEff: hex(fields.get("CapEff")),
    capBnd: hex(fields.get("CapBnd")),
    capAmb: hex(fields.get("CapAmb")),
    sigBlk: hex(fields.get("SigBlk")),
    sigPnd: hex(fields.get("SigPnd")),
    shdPnd: hex(fields.get("ShdPnd")),
    sigIgn: hex(fields.get("SigIgn")),
    sigCgt: hex(fields.get("SigCgt")),
    seccomp: Number(fields.get("Seccomp") ?? 0),
    umask: umask === undefined ? undefined : Number.parseInt(umask, 8),
  };
}

export function readStatus(proc: ProcFs, target: ProcTarget, tid?: number): ProcStatus {
  return parseStatus(proc.readText(target, tid === undefined ? "status" : `task/${tid}/status`));
}
