/**
 * A vDSO from another kernel, made to work on this one.
 *
 * A restored process holds pointers into the vDSO it started with: libc
 * looked its functions up once (through AT_SYSINFO_EHDR) and calls them by
 * address. When this kernel's vvar/vdso layout differs from the image's, its
 * vDSO cannot simply be moved onto the old one's place. Instead the old vDSO
 * comes back from its saved pages, as ordinary code at its old address, and
 * every function it exports is overwritten at its entry with a jump to the
 * function of the same name in this kernel's vDSO, which lives on elsewhere
 * in the process with its own vvar pages. A function this kernel's vDSO
 * lacks becomes the system call it stands for.
 *
 * x86-64 only, as ckpt is. The patches clobber rax (and rcx/r11 through
 * `syscall`), which the calling convention leaves to the callee; none of
 * these functions is variadic.
 */

/** One function a vDSO exports: its offset from the vDSO's first byte, and its length. */
export interface VdsoFunction {
  name: string;
  offset: bigint;
  size: bigint;
}

/** A patch to write into the old vDSO: `bytes` at `offset` from its start. */
export interface VdsoPatch {
  name: string;
  offset: bigint;
  bytes: Uint8Array;
}

const PT_LOAD = 1;
const SHT_DYNSYM = 11;
const STT_FUNC = 2;
const STB_GLOBAL = 1;
const STB_WEAK = 2;
const SYM_SIZE = 24;

/**
 * System calls the vDSO's functions stand for, by name without the
 * __vdso_ prefix: the fallback when this kernel's vDSO has no such function.
 */
const SYSCALL_OF: Readonly<Record<string, number>> = {
  gettimeofday: 96,
  time: 201,
  clock_gettime: 228,
  clock_getres: 229,
  getcpu: 309,
  getrandom: 318,
};

/** `movabs $target, %rax; jmp *%rax`. */
function jumpTo(target: bigint): Uint8Array {
  const code = new Uint8Array(12);
  code.set([0x48, 0xb8], 0);
  new DataView(code.buffer).setBigUint64(2, target, true);
  code.set([0xff, 0xe0], 10);
  return code;
}

/** `mov $nr, %eax; mov %rcx, %r10; syscall; ret`: the call made by hand (arg 4 moves to r10). */
function syscallOf(nr: number): Uint8Array {
  const code = new Uint8Array(11);
  code[0] = 0xb8;
  new DataView(code.buffer).setUint32(1, nr, true);
  code.set([0x49, 0x89, 0xca, 0x0f, 0x05, 0xc3], 5);
  return code;
}

/** Reads of a vDSO image that fail with a message naming `what` instead of a RangeError. */
class ElfView {
  private readonly v: DataView;
  constructor(private readonly bytes: Uint8Array, private readonly what: string) {
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  private check(at: number, len: number, field: string): void {
    if (!Number.isSafeInteger(at) || at < 0 || at + len > this.bytes.length) {
      throw new Error(`${this.what}: ${field} at byte ${at} lies outside its ${this.bytes.length} bytes`);
    }
  }
  u8(at: number, field: string): number {
    this.check(at, 1, field);
    return this.v.getUint8(at);
  }
  u16(at: number, field: string): number {
    this.check(at, 2, field);
    return this.v.getUint16(at, true);
  }
  u32(at: number, field: string): number {
    this.check(at, 4, field);
    return this.v.getUint32(at, true);
  }
  u64(at: number, field: string): bigint {
    this.check(at, 8, field);
    return this.v.getBigUint64(at, true);
  }
  cString(at: number, field: string): string {
    this.check(at, 1, field);
    let end = at;
    while (end < this.bytes.length && this.bytes[end] !== 0) end++;
    return new TextDecoder().decode(this.bytes.subarray(at, end));
  }
}

/**
 * The functions a vDSO image exports (its dynamic symbol table), keyed by
 * name. `what` names the image in errors. The image is the whole mapping,
 * which holds the whole ELF file, section headers included.
 */
export function vdsoFunctions(image: Uint8Array, what: string): Map<string, VdsoFunction> {
  const e = new ElfView(image, what);
  if (image.length < 64 || image[0] !== 0x7f || image[1] !== 0x45 || image[2] !== 0x4c || image[3] !== 0x46) {
    throw new Error(`${what} is not an ELF image (no saved contents, or not a vDSO)`);
  }
  if (image[4] !== 2 || image[5] !== 1) throw new Error(`${what} is not a 64-bit little-endian ELF image`);
  // Symbol values are link-time addresses: relative to the first loaded segment.
  const phoff = Number(e.u64(32, "e_phoff"));
  const phentsize = e.u16(54, "e_phentsize");
  const phnum = e.u16(56, "e_phnum");
  let linkBase: bigint | undefined;
  for (let i = 0; i < phnum && linkBase === undefined; i++) {
    const at = phoff + i * phentsize;
    if (e.u32(at, "p_type") === PT_LOAD) linkBase = e.u64(at + 16, "p_vaddr") - e.u64(at + 8, "p_offset");
  }
  if (linkBase === undefined) throw new Error(`${what} has no loadable segment`);

  const shoff = Number(e.u64(40, "e_shoff"));
  const shentsize = e.u16(58, "e_shentsize");
  const shnum = e.u16(60, "e_shnum");
  const functions = new Map<string, VdsoFunction>();
  let dynsym = false;
  for (let i = 0; i < shnum; i++) {
    const sh = shoff + i * shentsize;
    if (e.u32(sh + 4, "sh_type") !== SHT_DYNSYM) continue;
    dynsym = true;
    const symOff = Number(e.u64(sh + 24, "sh_offset"));
    const count = Math.floor(Number(e.u64(sh + 32, "sh_size")) / SYM_SIZE);
    const strSh = shoff + e.u32(sh + 40, "sh_link") * shentsize;
    const strOff = Number(e.u64(strSh + 24, "sh_offset"));
    for (let s = 1; s < count; s++) {
      const sym = symOff + s * SYM_SIZE;
      const info = e.u8(sym + 4, "st_info");
      const bind = info >> 4;
      const value = e.u64(sym + 8, "st_value");
      if ((info & 0xf) !== STT_FUNC || (bind !== STB_GLOBAL && bind !== STB_WEAK) || value === 0n) continue;
      const name = e.cString(strOff + e.u32(sym, "st_name"), "st_name");
      functions.set(name, { name, offset: value - linkBase, size: e.u64(sym + 16, "st_size") });
    }
  }
  if (!dynsym) throw new Error(`${what} has no dynamic symbol table`);
  return functions;
}

/**
 * The patches that turn `old` (the image's vDSO) into a proxy of `current`
 * (this kernel's, mapped at `currentBase`): each exported entry point jumps
 * to the function of the same name, or makes its system call. Aliases (the
 * same entry under two names) are patched once.
 */
export function proxyPatches(old: Map<string, VdsoFunction>, current: Map<string, VdsoFunction>, currentBase: bigint): VdsoPatch[] {
  const entries = new Map<bigint, VdsoFunction[]>();
  for (const f of old.values()) entries.set(f.offset, [...(entries.get(f.offset) ?? []), f]);
  const patches: VdsoPatch[] = [];
  for (const [offset, names] of entries) {
    const first = names[0]!;
    const target = names.map((f) => current.get(f.name)).find((f) => f !== undefined);
    const nr = names.map((f) => SYSCALL_OF[f.name.replace(/^__vdso_/, "")]).find((n) => n !== undefined);
    let bytes: Uint8Array;
    if (target) bytes = jumpTo(currentBase + target.offset);
    else if (nr !== undefined) bytes = syscallOf(nr);
    else throw new Error(`the image's vDSO exports ${first.name}, which this kernel's vDSO lacks and ckpt cannot stand in for`);
    const size = names.reduce((m, f) => (f.size > m ? f.size : m), 0n);
    if (BigInt(bytes.length) > size) {
      throw new Error(`the image's vDSO function ${first.name} is ${size} bytes long, too short for the ${bytes.length}-byte patch that sends it to this kernel's`);
    }
    patches.push({ name: first.name, offset, bytes });
  }
  return patches;
}
