/**
 * A restore where this kernel's vvar/vdso layout differs from the image's:
 * the image's vDSO comes back from its saved pages and every function it
 * exports jumps into this kernel's vDSO (src/restore/vdso.ts). The "other
 * kernel" is faked by editing a real dump's vvar area to another size, as a
 * kernel with more vvar pages would have recorded it.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, cpSync, existsSync, openSync, readFileSync, readSync, statSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { MmEntrySchema, type MmEntry } from "../src/image/gen/mm_pb";
import { readImageFile, writeImageFile } from "../src/image/image-file";
import { kind } from "../src/image/magic";
import { VMA } from "../src/image/vma-status";
import { proxyPatches, vdsoFunctions, type VdsoFunction } from "../src/restore/vdso";
import { runCkpt } from "./helpers/cli";
import { dropDigests } from "./helpers/images";
import { vdsoTarget } from "./helpers/restore-workloads";
import { killablePid, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { selfCheck } from "./helpers/workloads";

const cleanup: Target[] = [];
afterAll(() => {
  for (const t of cleanup) t.kill();
});

function memoryOf(pid: number | "self", at: bigint, length: number): Uint8Array {
  const fd = openSync(`/proc/${pid}/mem`, "r");
  try {
    const buf = new Uint8Array(length);
    expect(readSync(fd, buf, 0, length, at)).toBe(length);
    return buf;
  } finally {
    closeSync(fd);
  }
}

function vdsoArea(pid: number | "self"): { start: bigint; end: bigint } {
  const line = readFileSync(`/proc/${pid}/maps`, "utf8").split("\n").find((l) => l.endsWith("[vdso]"));
  if (!line) throw new Error(`process ${pid} has no [vdso]`);
  const [start, end] = line.split(" ")[0]!.split("-").map((x) => BigInt(`0x${x}`));
  return { start: start!, end: end! };
}

describe("reading a vDSO and patching it into a proxy", () => {
  const own = vdsoArea("self");
  const image = memoryOf("self", own.start, Number(own.end - own.start));
  const fns = vdsoFunctions(image, "ckpt's own vDSO");

  test("the functions of this kernel's vDSO are found, inside it", () => {
    for (const name of ["__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time", "__vdso_getcpu", "__vdso_clock_getres"]) {
      const f = fns.get(name);
      expect(f).toBeDefined();
      expect(f!.offset + f!.size).toBeLessThanOrEqual(own.end - own.start);
      expect(f!.size).toBeGreaterThanOrEqual(12n);
    }
    // Aliases share their entry.
    expect(fns.get("time")?.offset).toBe(fns.get("__vdso_time")!.offset);
  });

  test("each entry jumps to the same function of the other vDSO, once per entry", () => {
    const base = 0x7f0000000000n;
    const patches = proxyPatches(fns, fns, base);
    expect(patches.length).toBe(new Set([...fns.values()].map((f) => f.offset)).size);
    for (const p of patches) {
      expect([...p.bytes.subarray(0, 2)]).toEqual([0x48, 0xb8]);
      expect(new DataView(p.bytes.buffer).getBigUint64(2, true)).toBe(base + p.offset);
    }
  });

  test("a function the other vDSO lacks becomes its system call; one ckpt cannot stand in for is refused", () => {
    const withoutTime = new Map([...fns].filter(([n]) => n !== "time" && n !== "__vdso_time"));
    const timePatch = proxyPatches(fns, withoutTime, 0n).find((p) => p.offset === fns.get("time")!.offset)!;
    expect(timePatch.bytes[0]).toBe(0xb8);
    expect(new DataView(timePatch.bytes.buffer).getUint32(1, true)).toBe(201);
    const odd: VdsoFunction = { name: "__vdso_frobnicate", offset: 0x10n, size: 64n };
    expect(() => proxyPatches(new Map([["__vdso_frobnicate", odd]]), fns, 0n)).toThrow("__vdso_frobnicate, which this kernel's vDSO lacks");
    const tiny: VdsoFunction = { name: "time", offset: 0x10n, size: 4n };
    expect(() => proxyPatches(new Map([["time", tiny]]), fns, 0n)).toThrow("time is 4 bytes long");
  });

  test("an image that is not a vDSO is named", () => {
    expect(() => vdsoFunctions(new Uint8Array(8192), "the image's vDSO at 0x1000")).toThrow("the image's vDSO at 0x1000 is not an ELF image");
    const cut = image.slice(0, 256);
    expect(() => vdsoFunctions(cut, "a cut vDSO")).toThrow("a cut vDSO");
  });
});

describe("restore with another kernel's vvar/vdso layout", () => {
  test("the image's vDSO comes back as a proxy to this kernel's, and the process's clocks keep working", async () => {
    const { words, out } = await startReady([vdsoTarget()]);
    const pid = Number(words[0]);
    const oldBase = BigInt(`0x${words[1]}`);
    cleanup.push(killablePid(pid));
    expect(await selfCheck(pid, out)).toBe("ok");
    expect(vdsoArea(pid).start).toBe(oldBase);

    const images = join(tempDir("vdso-img"), "img");
    const d = runCkpt(["dump", "-t", String(pid), "-D", images]);
    expect(d.stderr).toBe("");
    await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    const outSize = statSync(out).size;

    // The same set with a vvar area one page shorter, as a kernel with one
    // vvar page fewer would have recorded it (areas are packed tight here:
    // there is no free page around to grow one into).
    const other = join(tempDir("vdso-other"), "img");
    cpSync(images, other, { recursive: true });
    dropDigests(other);
    const mmFile = join(other, `mm-${pid}.img`);
    const mm = readImageFile(mmFile).entries.map((e) => e.message as MmEntry);
    const vvar = mm[0]!.vmas.find((v) => (v.status & VMA.AREA_VVAR) !== 0)!;
    expect(vvar.end - vvar.start).toBeGreaterThan(0x1000n);
    vvar.start += 0x1000n;
    writeImageFile(mmFile, kind("MM"), MmEntrySchema, mm);

    const r = runCkpt(["restore", "-D", other, "-d"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    // This kernel's vDSO lives elsewhere; the old one is back, patched at its entries.
    const now = vdsoArea(pid);
    expect(now.start).not.toBe(oldBase);
    const old = memoryOf(pid, oldBase, 0x2000);
    expect([...old.subarray(0, 4)]).toEqual([0x7f, 0x45, 0x4c, 0x46]);
    const time = vdsoFunctions(old, "the old vDSO").get("__vdso_time")!;
    const entry = memoryOf(pid, oldBase + time.offset, 12);
    expect([...entry.subarray(0, 2)]).toEqual([0x48, 0xb8]);
    const target = new DataView(entry.buffer).getBigUint64(2, true);
    expect(target).toBeGreaterThanOrEqual(now.start);
    expect(target).toBeLessThan(now.end);
    expect(await selfCheck(pid, out)).toBe("ok");
    killablePid(pid).kill();
    await waitFor("the restored process to be gone", () => !existsSync(`/proc/${pid}`), 10000);

    // The unedited set still takes this kernel's vDSO at the old place (its
    // output file cut back to what it was at the dump, as the first restore wrote on).
    truncateSync(out, outSize);
    const same = runCkpt(["restore", "-D", images, "-d"]);
    expect(same.stderr).toBe("");
    expect(vdsoArea(pid).start).toBe(oldBase);
    expect(await selfCheck(pid, out)).toBe("ok");
  });
});
