/** The flags `ckpt dump` and `ckpt pre-dump` share, and their checks. */
import { FILE_VALIDATIONS, type FileValidation } from "../image/file-validation";
import type { Endpoint } from "../transfer/connection";
import { flagValues, rejectUnknownArgs, UsageError } from "./exit";

const PAGE_SCANS = ["auto", "ioctl", "pagemap"] as const;
export type PageScan = (typeof PAGE_SCANS)[number];

export const sharedDumpArgs = {
  tree: { type: "string", alias: "t", description: "PID of the root of the tree", required: true },
  "images-dir": { type: "string", alias: "D", description: "directory for the images (created 0700 if missing; must not hold an image set)", required: true },
  "prev-images-dir": { type: "string", description: "the previous pre-dump's images, relative to DIR unless absolute: pages unchanged since then are not saved again" },
  "page-scan": { type: "string", description: "how to find the pages to save: auto, ioctl (PAGEMAP_SCAN) or pagemap (read /proc/PID/pagemap)", default: "auto" },
  "irmap-scan-path": { type: "string", description: "a directory to search for the paths of inodes inotify/fanotify watch (repeatable; replaces the defaults /etc, /var/log, /var/lib ...)" },
  json: { type: "boolean", description: "print a JSON summary (stats, syscall counts) instead of one line", default: false },
  "page-server": { type: "boolean", description: "send the pages to `ckpt page-server` (or CRIU's) at --address/--port instead of writing them into DIR; the other images stay in DIR", default: false },
  address: { type: "string", description: "with --page-server: the page server's IPv4 or IPv6 address" },
  port: { type: "string", description: "with --page-server: the page server's TCP port" },
  rehearsal: {
    type: "boolean",
    description: "before freezing the tree, dump a decoy process of ckpt's own once, so that the frozen window runs warm code (~2x shorter for a small tree; costs ~50 ms of total time); --no-rehearsal skips it",
    default: true,
  },
} as const;

const SHARED_KNOWN = ["tree", "t", "images-dir", "D", "prev-images-dir", "page-scan", "irmap-scan-path", "json", "page-server", "address", "port", "rehearsal"];
const SHARED_VALUED = ["tree", "t", "images-dir", "D", "prev-images-dir", "page-scan", "irmap-scan-path", "address", "port"];

export interface SharedDumpArgs {
  pid: number;
  dir: string;
  prevImagesDir?: string;
  pageScan: PageScan;
  irmapScanPaths: string[];
  pageServer?: Endpoint;
}

/** Check the command line (`known`/`valued`: the command's own flags) and read the shared flags. */
export function parseSharedDumpArgs(args: Record<string, unknown>, rawArgs: readonly string[], known: readonly string[], valued: readonly string[]): SharedDumpArgs {
  const allValued = [...SHARED_VALUED, ...valued];
  rejectUnknownArgs(rawArgs, [...SHARED_KNOWN, ...known], 0, allValued);
  const irmapScanPaths = flagValues(rawArgs, ["irmap-scan-path"], allValued);
  if (irmapScanPaths.some((p) => p === "")) throw new UsageError("--irmap-scan-path needs a directory");
  const pidText = String(args.tree);
  if (!/^[1-9]\d*$/.test(pidText)) throw new UsageError(`-t/--tree needs a process id, got ${JSON.stringify(pidText)}`);
  const dir = String(args["images-dir"]);
  if (dir === "") throw new UsageError("-D/--images-dir needs a directory");
  const pageScan = String(args["page-scan"]);
  if (!(PAGE_SCANS as readonly string[]).includes(pageScan)) throw new UsageError(`--page-scan must be one of ${PAGE_SCANS.join(", ")}`);
  const prev = args["prev-images-dir"];
  if (prev !== undefined && String(prev) === "") throw new UsageError("--prev-images-dir needs a directory");
  const pageServer = parsePageServer(args);
  return { pid: Number(pidText), dir, pageScan: pageScan as PageScan, irmapScanPaths, ...(prev !== undefined ? { prevImagesDir: String(prev) } : {}), ...(pageServer ? { pageServer } : {}) };
}

/** A TCP port as --port takes it; `zeroOk` for a server letting the kernel choose. */
/** dump --lazy-pages: where the source serves its pages (every IPv4 address unless --address). */
export function parseLazyPages(args: Record<string, unknown>): Endpoint | undefined {
  if (!args["lazy-pages"]) return undefined;
  if (args["page-server"]) throw new UsageError("--lazy-pages serves the pages itself: give it without --page-server");
  if (args.port === undefined) throw new UsageError("--lazy-pages needs --port (where the destination's ckpt lazy-pages fetches the pages)");
  return { address: args.address === undefined ? "0.0.0.0" : String(args.address), port: parsePort(args.port) };
}

export function parsePort(value: unknown, zeroOk = false): number {
  const text = String(value);
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port <= 65535 && (port > 0 || (zeroOk && port === 0)))) throw new UsageError(`--port needs a TCP port (${zeroOk ? 0 : 1}-65535), got ${JSON.stringify(text)}`);
  return port;
}

/**
 * --page-server with --address and --port; --address or --port alone is a
 * mistake worth saying (dump's --lazy-pages takes them too, and reads them itself).
 */
function parsePageServer(args: Record<string, unknown>): Endpoint | undefined {
  if (!args["page-server"]) {
    if (!args["lazy-pages"] && (args.address !== undefined || args.port !== undefined)) throw new UsageError("--address and --port are for --page-server (give it too)");
    return undefined;
  }
  if (args.address === undefined || String(args.address) === "") throw new UsageError("--page-server needs --address (the page server's IP address)");
  if (args.port === undefined) throw new UsageError("--page-server needs --port");
  return { address: String(args.address), port: parsePort(args.port) };
}

/** A wait in seconds (restore --wait-images, lazy-pages --wait-source): a positive number, fractions allowed. */
export function parseSeconds(flag: string, text: string): number {
  const seconds = /^\d{1,7}(\.\d{1,3})?$/.test(text) ? Number(text) : NaN;
  if (!(seconds > 0)) throw new UsageError(`${flag} needs a number of seconds above 0, got ${JSON.stringify(text)}`);
  return seconds;
}

const SIZE_UNITS: Record<string, bigint> = { "": 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n };

/** A byte count as CRIU's options take it: digits with an optional K, M or G (powers of 1024). */
export function parseSize(flag: string, text: string): bigint {
  const m = /^(\d+)([KMG]?)$/i.exec(text);
  if (!m) throw new UsageError(`${flag} needs a size in bytes (digits, optionally followed by K, M or G), got ${JSON.stringify(text)}`);
  return BigInt(m[1]!) * SIZE_UNITS[m[2]!.toUpperCase()]!;
}

/** --file-validation's value (dump and restore): buildid or filesize; undefined when not given. */
export function parseFileValidation(value: unknown): FileValidation | undefined {
  if (value === undefined) return undefined;
  const text = String(value);
  if (!(FILE_VALIDATIONS as readonly string[]).includes(text)) throw new UsageError(`--file-validation must be one of ${FILE_VALIDATIONS.join(", ")}, got ${JSON.stringify(text)}`);
  return text as FileValidation;
}
