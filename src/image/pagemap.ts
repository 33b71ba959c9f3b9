/** Image-format facts about pagemap images shared by dump and restore. */
import { isFieldSet } from "@bufbuild/protobuf";
import type { ImageEntry } from "./decode";
import { PagemapEntrySchema, PagemapHeadSchema, type PagemapEntry, type PagemapHead } from "./gen/pagemap_pb";

/** pagemap entry flag: the run's contents are in the parent image set (unchanged since that round). */
export const PE_PARENT = 1 << 0;
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
