/**
 * Image kinds: each image's magic number, the head magic that precedes it and
 * the message type of its entries. The framing codec is generic; everything it
 * needs to know about a particular image is in this table.
 */
import { FileLockEntrySchema } from "./gen/file-lock_pb";
import type { DescMessage } from "@bufbuild/protobuf";
import { CoreEntrySchema, TaskKobjIdsEntrySchema } from "./gen/core_pb";
import { FdinfoEntrySchema, FileEntrySchema } from "./gen/fdinfo_pb";
import { IrmapCacheEntrySchema } from "./gen/fh_pb";
import { FsEntrySchema } from "./gen/fs_pb";
import { FanotifyFileEntrySchema, FanotifyMarkEntrySchema, InotifyFileEntrySchema, InotifyWdEntrySchema } from "./gen/fsnotify_pb";
import { GhostChunkEntrySchema, GhostFileEntrySchema } from "./gen/ghost-file_pb";
import { InventoryEntrySchema } from "./gen/inventory_pb";
import { MemfdInodeEntrySchema } from "./gen/memfd_pb";
import { MmEntrySchema } from "./gen/mm_pb";
import { PagemapEntrySchema, PagemapHeadSchema } from "./gen/pagemap_pb";
import { PipeDataEntrySchema } from "./gen/pipe_pb";
import { PstreeEntrySchema } from "./gen/pstree_pb";
import { RemapFilePathEntrySchema } from "./gen/remap-file-path_pb";
import { SeccompEntrySchema } from "./gen/seccomp_pb";
import { SkPacketEntrySchema } from "./gen/sk-packet_pb";
import { StatsEntrySchema } from "./gen/stats_pb";
import { TimensEntrySchema } from "./gen/timens_pb";
import { TtyInfoEntrySchema } from "./gen/tty_pb";
import { TcpStreamEntrySchema } from "./gen/tcp-stream_pb";

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
  /** Message type of the first entry when it differs (pagemap's head, a ghost file's header). */
  first?: DescMessage;
  /**
   * For images where raw bytes follow every `entry`-typed entry: the entry's
   * field (as protobuf-es names it) that says how many.
   */
  payloadSizeField?: string;
  /** Where the byte count is not one field: the payload's size from the entry. */
  payloadBytes?: (entry: Record<string, unknown>) => number;
  /**
   * For images whose first entry may be followed by the rest of the file as
   * raw bytes, with no further entries (a small ghost file's contents):
   * whether this first entry is.
   */
  restAfterFirst?: (first: Record<string, unknown>) => boolean;
}

/** Payload after an entry: a byte count, or everything up to the end of the file. */
export type PayloadSize = number | "rest";

/**
 * What follows entry number `index` (from 0) of an image of kind `k`, given
 * the entry itself; undefined when the next entry follows directly.
 */
export function payloadSize(k: ImageKind, index: number, entry: Record<string, unknown>): PayloadSize | undefined {
  if (index === 0 && k.first) return k.restAfterFirst?.(entry) ? "rest" : undefined;
  if (k.payloadBytes) return k.payloadBytes(entry);
  if (k.payloadSizeField === undefined) return undefined;
  return Number(entry[k.payloadSizeField]);
}

const kinds: ImageKind[] = [
  { name: "INVENTORY", magic: 0x58313116, head: "none", entry: InventoryEntrySchema },
  { name: "PSTREE", magic: 0x50273030, head: "common", entry: PstreeEntrySchema },
  { name: "CORE", magic: 0x55053847, head: "common", entry: CoreEntrySchema },
  { name: "IDS", magic: 0x54432030, head: "common", entry: TaskKobjIdsEntrySchema },
  { name: "MM", magic: 0x57492820, head: "common", entry: MmEntrySchema },
  // pagemap-PID.img, and pagemap-shmem-SHMID.img for shared memory and memfd contents.
  { name: "PAGEMAP", magic: 0x56084025, head: "common", entry: PagemapEntrySchema, first: PagemapHeadSchema },
  { name: "FDINFO", magic: 0x56213732, head: "common", entry: FdinfoEntrySchema },
  { name: "FILES", magic: 0x56303138, head: "common", entry: FileEntrySchema },
  { name: "FS", magic: 0x51403912, head: "common", entry: FsEntrySchema },
  { name: "PIPES_DATA", magic: 0x56453709, head: "common", entry: PipeDataEntrySchema, payloadSizeField: "bytes" },
  // A fifo's unread data, laid out like pipes-data.img.
  { name: "FIFO_DATA", magic: 0x59333054, head: "common", entry: PipeDataEntrySchema, payloadSizeField: "bytes" },
  // Packets queued on sockets, each followed by its data.
  { name: "SK_QUEUES", magic: 0x56264026, head: "common", entry: SkPacketEntrySchema, payloadSizeField: "length" },
  // An established TCP connection, then its receive and send queues' bytes.
  { name: "TCP_STREAM", magic: 0x51465506, head: "common", entry: TcpStreamEntrySchema, payloadBytes: (e) => Number(e.inqLen) + Number(e.outqLen) },
  { name: "REMAP_FPATH", magic: 0x59133954, head: "common", entry: RemapFilePathEntrySchema },
  // A header, then the contents raw to the end of the file, or in chunks.
  {
    name: "GHOST_FILE", magic: 0x52583605, head: "common", entry: GhostChunkEntrySchema, first: GhostFileEntrySchema,
    payloadSizeField: "len", restAfterFirst: (f) => f.chunks !== true,
  },
  { name: "TTY_INFO", magic: 0x59453036, head: "common", entry: TtyInfoEntrySchema },
  // memfd.img; the contents are in pagemap-shmem-SHMID.img (PAGEMAP) and pages-N.img.
  { name: "MEMFD_INODE", magic: 0x48453499, head: "common", entry: MemfdInodeEntrySchema },
  { name: "SECCOMP", magic: 0x64413049, head: "common", entry: SeccompEntrySchema },
  { name: "TIMENS", magic: 0x43114433, head: "common", entry: TimensEntrySchema },
  { name: "INOTIFY_FILE", magic: 0x48424431, head: "common", entry: InotifyFileEntrySchema },
  { name: "INOTIFY_WD", magic: 0x54562009, head: "common", entry: InotifyWdEntrySchema },
  { name: "FANOTIFY_FILE", magic: 0x55096122, head: "common", entry: FanotifyFileEntrySchema },
  { name: "FANOTIFY_MARK", magic: 0x56506035, head: "common", entry: FanotifyMarkEntrySchema },
  { name: "FILE_LOCKS", magic: 0x54323616, head: "common", entry: FileLockEntrySchema },
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
