/**
 * The page server's wire format, as CRIU speaks it (criu/page-xfer.c), so
 * that either tool can sit at either end of a migration.
 *
 * Every command is one 32-byte record, the C struct page_server_iov of
 * x86_64 in host (little-endian) order:
 *   u32 cmd  (low 16 bits the command, high 16 bits pagemap flags for ADD_F)
 *   4 bytes of padding
 *   u64 nr_pages, u64 vaddr, u64 dst_id
 * ADD_F with PE_PRESENT is followed by nr_pages pages of contents. OPEN2 is
 * answered with one byte (has the server a parent round for this pagemap),
 * PARENT with a 4-byte int, CLOSE and FORCE_CLOSE with an int32 status.
 */

import type { PagemapTarget } from "../image/page-store";

export const PSI_SIZE = 32;

export const PS = {
  ADD: 1,
  HOLE: 2,
  OPEN: 3,
  OPEN2: 4,
  PARENT: 5,
  ADD_F: 6,
  GET: 7,
  CLOSE: 0x1023,
  FORCE_CLOSE: 0x1024,
} as const;

const CMD_BITS = 16;
const CMD_MASK = (1 << CMD_BITS) - 1;

const TYPE_BITS = 8n;
const TYPE_TASK = 1n;
const TYPE_SHMEM = 2n;
/** Type numbers older CRIUs sent (their CR_FD_* values); CRIU 4.2's server still takes them. */
const LEGACY_TASK = new Set([10n, 11n, 16n, 17n]);
const LEGACY_SHMEM = new Set([27n, 28n, 29n, 32n, 33n, 34n]);

export function encodeTarget(t: PagemapTarget): bigint {
  return (BigInt(t.id) << TYPE_BITS) | (t.kind === "task" ? TYPE_TASK : TYPE_SHMEM);
}

/** The pagemap a dst_id names (a process's or a shared memory object's); null for a type no CRIU ever sent. */
export function decodeTarget(dstId: bigint): PagemapTarget | null {
  const type = dstId & ((1n << TYPE_BITS) - 1n);
  const id = Number(dstId >> TYPE_BITS);
  if (type === TYPE_TASK || LEGACY_TASK.has(type)) return { kind: "task", id };
  if (type === TYPE_SHMEM || LEGACY_SHMEM.has(type)) return { kind: "shmem", id };
  return null;
}

export interface PageServerIov {
  cmd: number;
  /** PE_* flags carried in the high half of cmd (ADD_F). */
  flags: number;
  nrPages: bigint;
  vaddr: bigint;
  dstId: bigint;
}

export function encodeIov(iov: Omit<PageServerIov, "flags"> & { flags?: number }, into = new Uint8Array(PSI_SIZE)): Uint8Array {
  const v = new DataView(into.buffer, into.byteOffset, PSI_SIZE);
  v.setUint32(0, (((iov.flags ?? 0) << CMD_BITS) | iov.cmd) >>> 0, true);
  v.setUint32(4, 0, true);
  v.setBigUint64(8, iov.nrPages, true);
  v.setBigUint64(16, iov.vaddr, true);
  v.setBigUint64(24, iov.dstId, true);
  return into;
}

export function decodeIov(bytes: Uint8Array): PageServerIov {
  const v = new DataView(bytes.buffer, bytes.byteOffset, PSI_SIZE);
  const raw = v.getUint32(0, true);
  return {
    cmd: raw & CMD_MASK,
    flags: raw >>> CMD_BITS,
    nrPages: v.getBigUint64(8, true),
    vaddr: v.getBigUint64(16, true),
    dstId: v.getBigUint64(24, true),
  };
}

/** CLOSE and FORCE_CLOSE are matched on the whole cmd word, as CRIU does. */
export function isClose(cmd: number, flags: number): boolean {
  return flags === 0 && (cmd === PS.CLOSE || cmd === PS.FORCE_CLOSE);
}
