/** Reading a dump's image set back in tests, and checking processes' ptrace state. */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { readImageFile, writeImageFile } from "../../src/image/image-file";
import { InventoryEntrySchema, type InventoryEntry } from "../../src/image/gen/inventory_pb";
import { kind } from "../../src/image/magic";
import type { PagemapEntry } from "../../src/image/gen/pagemap_pb";
import { splitPagemap } from "../../src/image/pagemap";
import { close, openat, preadInto } from "../../src/sys/libc";
import { AT, O } from "../../src/sys/nr";

/** Entries of one image, typed by the schema the test expects (checked). */
export function entries<D extends DescMessage>(dir: string, name: string, schema: D): MessageShape<D>[] {
  const img = readImageFile(join(dir, name));
  return img.entries.map((e, i) => {
    if (e.message.$typeName !== schema.typeName) throw new Error(`${name} entry ${i} is ${e.message.$typeName}, not ${schema.typeName}`);
    return e.message as MessageShape<D>;
  });
}

/**
 * Rewrite the set's inventory without ckpt's digests, as CRIU writes it: a
 * test that edits an image on purpose (to reach a check behind the digest
 * check, or to fake another kernel) does this so that the edit is not
 * simply refused as corruption.
 */
export function dropDigests(dir: string): void {
  const inv = entries(dir, "inventory.img", InventoryEntrySchema) as InventoryEntry[];
  for (const e of inv) e.ckptDigests = [];
  writeImageFile(join(dir, "inventory.img"), kind("INVENTORY"), InventoryEntrySchema, inv);
}

let warnedNoCrit = false;

/**
 * Files of an image directory that crit cannot decode (pages files are raw and
 * skipped). Without crit installed this check is skipped with a warning, except
 * under CI, where crit must be there (.ci/run installs it).
 */
export function critFailures(dir: string): string[] {
  if (!Bun.which("crit")) {
    if (process.env.CI) throw new Error("crit is not installed, and CI must check images with it");
    if (!warnedNoCrit) console.warn("warning: crit not installed (apt-get install criu); images are not checked with it");
    warnedNoCrit = true;
    return [];
  }
  const failures: string[] = [];
  for (const name of readdirSync(dir, { withFileTypes: true })
    // Not images: raw pages, the `parent` link of an iterative dump, ckpt's own dirty-tracking.json.
    .filter((e) => e.isFile() && !/^pages-\d+\.img$/.test(e.name) && !e.name.endsWith(".json"))
    .map((e) => e.name)) {
    const r = Bun.spawnSync(["crit", "decode", "-i", join(dir, name)], { stdout: "pipe", stderr: "pipe" });
    if (r.exitCode !== 0) failures.push(`${name}: ${r.stderr.toString().trim().split("\n").pop()}`);
  }
  return failures;
}

/** `len` bytes of a live process's memory through /proc/PID/mem. */
export function readMemory(pid: number, addr: bigint, len: number): Uint8Array {
  const fd = openat(AT.FDCWD, `/proc/${pid}/mem`, O.RDONLY | O.CLOEXEC);
  try {
    const buf = new Uint8Array(len);
    let off = 0;
    while (off < len) {
      const n = preadInto(fd, buf.subarray(off), addr + BigInt(off));
      if (n <= 0) throw new Error(`short read of /proc/${pid}/mem at 0x${(addr + BigInt(off)).toString(16)}`);
      off += n;
    }
    return buf;
  } finally {
    close(fd);
  }
}

/** State letter and tracer of a process (or thread) from /proc; undefined once it is gone. */
export function ptraceState(pid: number, tid = pid): { state: string; tracer: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8");
    const state = /^State:\s+(\S)/m.exec(text)?.[1] ?? "?";
    const tracer = Number(/^TracerPid:\s+(\d+)/m.exec(text)?.[1] ?? "0");
    return { state, tracer };
  } catch {
    return undefined;
  }
}

/** Every thread of a process: running or sleeping (not stopped) and not traced. */
export function runsFree(pid: number): boolean {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return tids.every((t) => {
    const s = ptraceState(pid, Number(t));
    return s !== undefined && s.tracer === 0 && !["t", "T"].includes(s.state);
  });
}

/**
 * Every thread asleep in a system call again (state S). After a kill of
 * ckpt, a thread takes a moment to return through its injection frame; a
 * signal sent in that moment finds its call set to restart (README, "If ckpt
 * is killed"), which a `pause()` loop would take for a lost wakeup.
 */
export function asleepAgain(pid: number): boolean {
  try {
    return readdirSync(`/proc/${pid}/task`).every((t) => ptraceState(pid, Number(t))?.state === "S") && allBlocked(pid);
  } catch {
    return false;
  }
}

/** The process is gone (or a zombie waiting for its parent). */
export function isGone(pid: number): boolean {
  const s = ptraceState(pid);
  return s === undefined || s.state === "Z" || s.state === "X";
}

/** A process's pagemap: the pages file it names and its entries. */
export function pagemapOf(dir: string, pid: number): { pagesId: number; entries: PagemapEntry[] } {
  const { head, entries } = splitPagemap(readImageFile(join(dir, `pagemap-${pid}.img`)).entries, `pagemap-${pid}.img`);
  return { pagesId: head.pagesId, entries };
}

/** Pages of one pagemap entry. */
export const entryPages = (e: PagemapEntry): number => Number(e.nrPages ?? 0n) || e.compatNrPages;

/** The page data of one process: pagemap runs and their bytes from pages-N.img. */
export function savedPages(dir: string, pid: number): { vaddr: bigint; nrPages: number; bytes: Uint8Array }[] {
  return savedPagesOf(dir, `pagemap-${pid}.img`);
}

/** The page data a pagemap image names (a process's, or pagemap-shmem-ID.img's: vaddr is then an offset in the object). */
export function savedPagesOf(dir: string, pagemap: string): { vaddr: bigint; nrPages: number; bytes: Uint8Array }[] {
  const img = readImageFile(join(dir, pagemap));
  const [head, ...rest] = img.entries;
  const pagesId = (head?.message as unknown as { pagesId: number }).pagesId;
  const data = readFileSync(join(dir, `pages-${pagesId}.img`));
  let off = 0;
  return rest.map((e) => {
    const m = e.message as unknown as { vaddr: bigint; nrPages: bigint; compatNrPages: number };
    if (BigInt(m.compatNrPages) !== m.nrPages) throw new Error("pagemap entry: old and new page counts differ");
    const len = Number(m.nrPages) * 4096;
    const bytes = new Uint8Array(data.buffer, data.byteOffset + off, len);
    off += len;
    return { vaddr: m.vaddr, nrPages: Number(m.nrPages), bytes };
  });
}

/** Every thread of the process sits blocked in a system call (its /proc syscall file names one). */
export function allBlocked(pid: number): boolean {
  try {
    return readdirSync(`/proc/${pid}/task`).every((t) => /^\d+ /.test(readFileSync(`/proc/${pid}/task/${t}/syscall`, "utf8")));
  } catch {
    return false;
  }
}
