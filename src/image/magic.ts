/**
 * Image kinds: each image's magic number, the head magic that precedes it and
 * the message type of its entries. The framing codec is generic; everything it
 * needs to know about a particular image is in this table.
 */
import type { DescMessage } from "@bufbuild/protobuf";
import { CoreEntrySchema, TaskKobjIdsEntrySchema } from "./gen/core_pb";
import { FdinfoEntrySchema, FileEntrySchema } from "./gen/fdinfo_pb";
import { IrmapCacheEntrySchema } from "./gen/fh_pb";
import { FsEntrySchema } from "./gen/fs_pb";
import { FanotifyFileEntrySchema, FanotifyMarkEntrySchema, InotifyFileEntrySchema, InotifyWdEntrySchema } from "./gen/fsnotify_pb";
import { InventoryEntrySchema } from "./gen/inventory_pb";
import { MmEntrySchema } from "./gen/mm_pb";
import { PagemapEntrySchema, PagemapHeadSchema } from "./gen/pagemap_pb";
import { PipeDataEntrySchema } from "./gen/pipe_pb";
import { PstreeEntrySchema } from "./gen/pstree_pb";
import { SeccompEntrySchema } from "./gen/seccomp_pb";
import { StatsEntrySchema } from "./gen/stats_pb";
import { TimensEntrySchema } from "./gen/timens_pb";

/** Head magic of ordinary images. */
export const MAGIC_COMMON = 0x54564319;
/** Head magic of service images (stats, irmap cache), which restore does not need. */
export const MAGIC_SERVICE = 0x55105940;

export type HeadKind = "common" | "service" | "none";

export interface ImageKind {
  /** crit's name for the image, as `show` prints it. */
  name: string;
  magic: number;
  head: HeadKind;
  /** Message type of every entry (after the first, where `first` is set). */
  entry: DescMessage;
  /** Message type of the first entry when it differs (pagemap's head). */
  first?: DescMessage;
  /** For images where a raw payload follows an entry: the payload's byte count. */
  payloadSize?: (entry: Record<string, unknown>) => number;
}

const kinds: ImageKind[] = [
  { name: "INVENTORY", magic: 0x58313116, head: "none", entry: InventoryEntrySchema },
  { name: "PSTREE", magic: 0x50273030, head: "common", entry: PstreeEntrySchema },
  { name: "CORE", magic: 0x55053847, head: "common", entry: CoreEntrySchema },
  { name: "IDS", magic: 0x54432030, head: "common", entry: TaskKobjIdsEntrySchema },
  { name: "MM", magic: 0x57492820, head: "common", entry: MmEntrySchema },
  { name: "PAGEMAP", magic: 0x56084025, head: "common", entry: PagemapEntrySchema, first: PagemapHeadSchema },
  { name: "FDINFO", magic: 0x56213732, head: "common", entry: FdinfoEntrySchema },
  { name: "FILES", magic: 0x56303138, head: "common", entry: FileEntrySchema },
  { name: "FS", magic: 0x51403912, head: "common", entry: FsEntrySchema },
  {
    name: "PIPES_DATA", magic: 0x56453709, head: "common", entry: PipeDataEntrySchema,
    payloadSize: (e) => Number(e.bytes),
  },
  { name: "SECCOMP", magic: 0x64413049, head: "common", entry: SeccompEntrySchema },
  { name: "TIMENS", magic: 0x43114433, head: "common", entry: TimensEntrySchema },
  { name: "INOTIFY_FILE", magic: 0x48424431, head: "common", entry: InotifyFileEntrySchema },
  { name: "INOTIFY_WD", magic: 0x54562009, head: "common", entry: InotifyWdEntrySchema },
  { name: "FANOTIFY_FILE", magic: 0x55096122, head: "common", entry: FanotifyFileEntrySchema },
  { name: "FANOTIFY_MARK", magic: 0x56506035, head: "common", entry: FanotifyMarkEntrySchema },
  { name: "STATS", magic: 0x57093306, head: "service", entry: StatsEntrySchema },
  { name: "IRMAP_CACHE", magic: 0x57004059, head: "service", entry: IrmapCacheEntrySchema },
];

/** The message type of entry number `index` (from 0) of an image of kind `k`. */
export function entrySchema(k: ImageKind, index: number): DescMessage {
  return index === 0 && k.first ? k.first : k.entry;
}

const byMagic = new Map(kinds.map((k) => [k.magic, k]));
const byName = new Map(kinds.map((k) => [k.name, k]));

export function kindByMagic(magic: number): ImageKind | undefined {
  return byMagic.get(magic);
}

/** The kind with crit's name `name` (e.g. "PSTREE"); throws for an unknown name. */
export function kind(name: string): ImageKind {
  const k = byName.get(name);
  if (!k) throw new Error(`unknown image kind ${name}`);
  return k;
}

export function allKinds(): readonly ImageKind[] {
  return kinds;
}

/** pages-N.img files are raw page contents with no header at all. */
export const PAGES_FILE = /^pages-\d+\.img$/;

/**
 * Other images CRIU writes raw, with no magic: tmpfs contents as a tarball and
 * the output of ip/iptables/nft dumps. They are recognised by name.
 */
export const RAW_FILE = /^(tmpfs-dev-\d+\.tar\.gz|ifaddr-\d+|route6?-\d+|rule-\d+|ip6?tables-\d+|nftables-\d+)\.img$/;
