/**
 * The GNU build-id of an ELF file (its NT_GNU_BUILD_ID note), which the
 * linker derives from the file's contents: two builds of the same sources
 * with the same tools share it, any other change gives another. Only the
 * ELF header, the program headers and the note segments are read, each
 * with one pread, and only within the first MiB (where CRIU looks too).
 */
import { preadFull } from "./libc";

/** Where a build-id may be, as CRIU bounds it. */
const SEARCH_LIMIT = 1 << 20;
const PT_NOTE = 4;
const NT_GNU_BUILD_ID = 3;
/** A build-id is 16 to 20 bytes in practice; CRIU takes up to 512. */
const MAX_BUILD_ID = 512;
const MAX_PHDRS = 256;

const align4 = (n: number): number => (n + 3) & ~3;

/** `length` bytes of `fd` at `offset` (fewer at end of file), none past the search limit. */
function readAt(fd: number, offset: number, length: number): Uint8Array {
  if (offset >= SEARCH_LIMIT) return new Uint8Array(0);
  const buf = new Uint8Array(Math.min(length, SEARCH_LIMIT - offset));
  return buf.subarray(0, preadFull(fd, buf, BigInt(offset)));
}

/** The build-id of the ELF file open as `fd`, or undefined for a file that is not ELF or has none. */
export function readBuildId(fd: number): Uint8Array | undefined {
  const head = readAt(fd, 0, 64);
  if (head.length < 52 || head[0] !== 0x7f || head[1] !== 0x45 || head[2] !== 0x4c || head[3] !== 0x46) return undefined;
  const is64 = head[4] === 2;
  const little = head[5] !== 2;
  const h = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (is64 && head.length < 64) return undefined;
  const phoff = is64 ? Number(h.getBigUint64(32, little)) : h.getUint32(28, little);
  const phentsize = h.getUint16(is64 ? 54 : 42, little);
  const phnum = Math.min(h.getUint16(is64 ? 56 : 44, little), MAX_PHDRS);
  if (phnum === 0 || phentsize < (is64 ? 56 : 32)) return undefined;
  const phdrs = readAt(fd, phoff, phnum * phentsize);
  const p = new DataView(phdrs.buffer, phdrs.byteOffset, phdrs.byteLength);
  for (let i = 0; (i + 1) * phentsize <= phdrs.length; i++) {
    const at = i * phentsize;
    if (p.getUint32(at, little) !== PT_NOTE) continue;
    const offset = is64 ? Number(p.getBigUint64(at + 8, little)) : p.getUint32(at + 4, little);
    const size = is64 ? Number(p.getBigUint64(at + 32, little)) : p.getUint32(at + 16, little);
    const notes = readAt(fd, offset, Math.min(size, SEARCH_LIMIT));
    const n = new DataView(notes.buffer, notes.byteOffset, notes.byteLength);
    for (let off = 0; off + 12 <= notes.length; ) {
      const namesz = n.getUint32(off, little);
      const descsz = n.getUint32(off + 4, little);
      const type = n.getUint32(off + 8, little);
      const desc = off + 12 + align4(namesz);
      if (desc + descsz > notes.length) break;
      if (type === NT_GNU_BUILD_ID) return descsz > 0 && descsz <= MAX_BUILD_ID ? notes.slice(desc, desc + descsz) : undefined;
      off = desc + align4(descsz);
    }
  }
  return undefined;
}

/** A build-id as CRIU's reg_file_entry keeps it: little-endian u32 words, the last one padded with zeros. */
export function buildIdWords(id: Uint8Array): number[] {
  const padded = new Uint8Array(align4(id.length));
  padded.set(id);
  const v = new DataView(padded.buffer);
  return Array.from({ length: padded.length / 4 }, (_, i) => v.getUint32(i * 4, true));
}

export function buildIdHex(id: Uint8Array): string {
  return Array.from(id, (b) => b.toString(16).padStart(2, "0")).join("");
}
