/** Free address ranges in a planned address space. */

export interface Range {
  start: bigint;
  end: bigint;
}

/** Lowest address restore places its own pages at (well above mmap_min_addr and classic ELF bases). */
const LOW = 0x100000000n;
/** Highest user address on x86_64 with 4-level paging. */
const HIGH = 0x7ffffffff000n;

/**
 * The lowest free range of `size` bytes at or above LOW that overlaps none of
 * `taken`, page aligned; throws when the address space has no such hole.
 */
export function findFree(taken: readonly Range[], size: bigint, from = LOW): bigint {
  const sorted = [...taken].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  let at = from;
  for (const r of sorted) {
    if (r.end <= at) continue;
    if (r.start >= at + size) break;
    at = r.end;
  }
  if (at + size > HIGH) throw new Error(`no free ${size} bytes in the restored address space`);
  return at;
}
