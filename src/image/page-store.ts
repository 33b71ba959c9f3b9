/**
 * Where the pages of a dump go. Locally, each pagemap and its contents are
 * two files of the image set (pagemap-ID.img or pagemap-shmem-ID.img, and
 * pages-N.img); with --page-server they go to another host instead
 * (transfer/page-client.ts) while every other image stays local.
 */
import { create } from "@bufbuild/protobuf";
import { ImageEncoder } from "./encode";
import { PagemapEntrySchema, PagemapHeadSchema, type PagemapEntry } from "./gen/pagemap_pb";
import type { ImageDirWriter, ImageSink } from "./image-dir";
import { kind } from "./magic";

/** What a pagemap describes: a process's memory, or a shared memory object's (by shmid). */
export interface PagemapTarget {
  kind: "task" | "shmem";
  id: number;
}

/** The image file a target's pagemap lives in. */
export function pagemapFileName(t: PagemapTarget): string {
  return t.kind === "task" ? `pagemap-${t.id}.img` : `pagemap-shmem-${t.id}.img`;
}

export interface PageStore {
  /**
   * Save one pagemap; `fill` writes the contents of its present entries, in
   * entry order, and returns the byte count.
   */
  save(target: PagemapTarget, entries: readonly PagemapEntry[], fill: (sink: ImageSink) => number): void;
  /** Every pagemap is saved: make them durable where they went. */
  finish(): void;
  /** Let go of what the store holds (after finish, or after a failure). */
  close(): void;
}

/** A pagemap image: its head naming the pages file, then the entries. */
export function pagemapImage(pagesId: number, entries: readonly PagemapEntry[]): ImageEncoder {
  const enc = new ImageEncoder(kind("PAGEMAP")).add(PagemapHeadSchema, create(PagemapHeadSchema, { pagesId }));
  for (const e of entries) enc.add(PagemapEntrySchema, e);
  return enc;
}

/** Pages into the image set itself; pages files are numbered 1, 2, ... in the order saved. */
export class LocalPageStore implements PageStore {
  private nextPagesId = 1;

  constructor(private readonly out: ImageDirWriter) {}

  save(target: PagemapTarget, entries: readonly PagemapEntry[], fill: (sink: ImageSink) => number): void {
    const pagesId = this.nextPagesId++;
    this.out.writeImage(pagemapFileName(target), pagemapImage(pagesId, entries));
    this.out.writeWith(`pages-${pagesId}.img`, fill);
  }

  finish(): void {}

  close(): void {}
}
