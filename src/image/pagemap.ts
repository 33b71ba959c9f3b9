/** Image-format facts about pagemap images shared by dump and restore. */
import { isFieldSet } from "@bufbuild/protobuf";
import type { ImageEntry } from "./decode";
import { PAGE_SIZE } from "../sys/nr";
import { PagemapEntrySchema, PagemapHeadSchema, type PagemapEntry, type PagemapHead } from "./gen/pagemap_pb";

/** pagemap entry flag: the run's contents are in the parent image set (unchanged since that round). */
export const PE_PARENT = 1 << 0;
/**
 * pagemap entry flag: a lazy restore may fill the run on first touch. Alone,
 * the contents are at the lazy dump's source (--lazy-pages); with PE_PRESENT
 * or PE_PARENT they are in these images all the same.
 */
export const PE_LAZY = 1 << 1;
/** pagemap entry flag: the run's contents are in the pages file. */
export const PE_PRESENT = 1 << 2;

/** Pages of one pagemap entry (CRIU 4.2 writes nr_pages; older writers only the compat field). */
export function entryPageCount(e: PagemapEntry): number {
  return e.nrPages !== 0n ? Number(e.nrPages) : e.compatNrPages;
}

/** The entry's pages are in the parent image set (the flag, or the obsolete in_parent). */
export function entryInParent(e: PagemapEntry): boolean {
  return (e.flags & PE_PARENT) !== 0 || e.inParent;
}

/** The entry's pages are not in these images: the source host keeps them (a lazy dump's). */
export function entryLazy(e: PagemapEntry): boolean {
  return (e.flags & PE_LAZY) !== 0 && !entryPresent(e) && !entryInParent(e);
}

/**
 * A lazy restore leaves the entry's pages to its lazy-pages daemon, to place
 * on first touch: PE_LAZY, whether the pages are also here (present, or in
 * the parent) or only at the source.
 */
export function entryLazyable(e: PagemapEntry): boolean {
  return (e.flags & PE_LAZY) !== 0;
}

/**
 * The entry's pages follow in this set's pages file. An entry with no flags
 * field at all comes from an old writer, for which every entry not in_parent
 * was present.
 */
export function entryPresent(e: PagemapEntry): boolean {
  return !entryInParent(e) && (!isFieldSet(e, PagemapEntrySchema.field.flags) || (e.flags & PE_PRESENT) !== 0);
}

/** A pagemap image's head and entries, checked to be of those types; `what` names the file in errors. */
export function splitPagemap(raw: readonly ImageEntry[], what: string): { head: PagemapHead; entries: PagemapEntry[] } {
  const head = raw[0]?.message;
  if (head?.$typeName !== PagemapHeadSchema.typeName) throw new Error(`${what} does not start with a pagemap head`);
  const entries = raw.slice(1).map((e, i) => {
    if (e.message.$typeName !== PagemapEntrySchema.typeName) throw new Error(`${what}: entry ${i + 1} is a ${e.message.$typeName}, not a pagemap entry`);
    return e.message as PagemapEntry;
  });
  return { head: head as PagemapHead, entries };
}

/** The pages a pagemap image holds (saved or themselves in-parent), as sorted page-number intervals. */
export class PageCoverage {
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];

  constructor(entries: readonly PagemapEntry[]) {
    const spans: [number, number][] = [];
    for (const e of entries) {
      if (!entryPresent(e) && !entryInParent(e)) continue;
      const first = Number(e.vaddr / BigInt(PAGE_SIZE));
      spans.push([first, first + entryPageCount(e)]);
    }
    spans.sort((a, b) => a[0] - b[0]);
    for (const [s, e] of spans) {
      const last = this.ends.length - 1;
      if (last >= 0 && s <= this.ends[last]!) this.ends[last] = Math.max(this.ends[last]!, e);
      else {
        this.starts.push(s);
        this.ends.push(e);
      }
    }
  }

  /** Whether every page of [first, end) (page numbers) is held. */
  holds(first: number, end: number): boolean {
    const parts = this.split(first, end);
    return parts.length === 1 && parts[0]!.covered;
  }

  /** Split [first, end) (pages) into the parts the parent holds and the parts it does not, in order. */
  split(first: number, end: number): { first: number; end: number; covered: boolean }[] {
    const out: { first: number; end: number; covered: boolean }[] = [];
    // First interval that ends after `first`.
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! <= first) lo = mid + 1;
      else hi = mid;
    }
    let at = first;
    for (let i = lo; i < this.starts.length && at < end; i++) {
      const s = Math.max(this.starts[i]!, at);
      if (s >= end) break;
      if (s > at) out.push({ first: at, end: s, covered: false });
      const e = Math.min(this.ends[i]!, end);
      out.push({ first: s, end: e, covered: true });
      at = e;
    }
    if (at < end) out.push({ first: at, end, covered: false });
    return out;
  }
}
