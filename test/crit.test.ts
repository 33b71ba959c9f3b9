/**
 * Outside check of our format: crit (CRIU's own image decoder, from Debian's
 * criu package) must read every image we write, with the same values that
 * `ckpt show` prints.
 */
import { describe, expect, test } from "bun:test";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { ImageEncoder } from "../src/image/encode";
import { writeEncodedImage } from "../src/image/image-file";
import { allKinds, payloadSize, type ImageKind } from "../src/image/magic";
import { parseExactJson, runCkpt } from "./helpers/cli";
import { filledMessage, setPayloadSize } from "./helpers/fill";
import { tempDir } from "./helpers/target";
import { FIXTURES, fixtureImageFiles } from "./helpers/fixtures";

const CRIT = Bun.which("crit");

/**
 * crit 4.2, when CRIU_BIN names a CRIU 4.2 binary built by
 * ../shared/tools/build-criu42.sh: OUT_DIR/criu/criu, with OUT_DIR/crit.sh
 * running that tree's crit.
 */
const CRIT_42 = ((): string | null => {
  const criu = process.env.CRIU_BIN;
  if (!criu) return null;
  const sh = join(dirname(dirname(criu)), "crit.sh");
  if (existsSync(sh)) return sh;
  console.warn(`crit.test: CRIU_BIN is set but ${sh} is missing; crit 4.2 is not compared`);
  return null;
})();

/** ckpt's own extensions, which no crit knows (field numbers far from CRIU's; its parsers skip them). */
const CKPT_ONLY = [
  "INVENTORY.ckpt_digests",
  "STATS.dump.ckpt_snapshot_copy_time", "STATS.dump.ckpt_snapshot_pages_frozen", "STATS.dump.ckpt_snapshot_pages_running", "STATS.dump.ckpt_snapshot_pages_on_fault",
];

/**
 * Fields ckpt defines that Debian's crit (CRIU 3.17) does not know yet: they are
 * newer than its tables, so crit leaves them out of its output.
 */
const NEWER_THAN_CRIT = new Set([
  "INVENTORY.dump_criu_run_id",
  "INVENTORY.plugins_entry",
  "INVENTORY.allow_uprobes",
  "PAGEMAP.nr_pages",
  "CORE.thread_core.cg_set",
  "CORE.tc.stop_signo",
  "CORE.tc.membarrier_registration_mask",
  "FILES.isk.tcp_opts",
  "CORE.thread_core.creds.cap_amb",
  "CORE.thread_info.fpregs.xsave.cet",
  "MEMFD_INODE.mode",
  ...CKPT_ONLY,
]);

/**
 * Fields that CRIU 4.2 renamed: Debian's crit still calls pagemap's field 2
 * "nr_pages", the name CRIU 4.2 (and ckpt) gave to the new field 5.
 */
const OLD_CRIT_NAMES: Record<string, string> = { "PAGEMAP.nr_pages": "compat_nr_pages" };

/** File name crit recognises for each kind (it picks the pagemap head by name). */
const FILE_NAME: Record<string, string> = {
  INVENTORY: "inventory.img", PSTREE: "pstree.img", CORE: "core-1.img", IDS: "ids-1.img", MM: "mm-1.img",
  PAGEMAP: "pagemap-1.img", FDINFO: "fdinfo-2.img", FILES: "files.img", FS: "fs-1.img",
  PIPES_DATA: "pipes-data.img", SECCOMP: "seccomp.img", TIMENS: "timens-0.img",
  INOTIFY_FILE: "inotify.img", INOTIFY_WD: "inotify-wd.img", FANOTIFY_FILE: "fanotify.img",
  FANOTIFY_MARK: "fanotify-mark.img", STATS: "stats-dump", IRMAP_CACHE: "irmap-cache",
  FIFO_DATA: "fifo-data.img", SK_QUEUES: "sk-queues.img", TCP_STREAM: "tcp-stream-1a.img", REMAP_FPATH: "remap-fpath.img", GHOST_FILE: "ghost-file-1a.img",
  TTY_INFO: "tty-info.img", MEMFD_INODE: "memfd.img", FILE_LOCKS: "filelocks.img",
};

/**
 * Everything crit printed must be in ours with the same value; ours may hold
 * more only where NEWER_THAN_CRIT says crit cannot know the field.
 */
function expectSameValues(theirs: unknown, ours: unknown, path: string, newer: ReadonlySet<string> = NEWER_THAN_CRIT): void {
  if (Array.isArray(theirs)) {
    expect(Array.isArray(ours)).toBe(true);
    expect((ours as unknown[]).length).toBe(theirs.length);
    theirs.forEach((t, i) => expectSameValues(t, (ours as unknown[])[i], path, newer));
    return;
  }
  if (theirs !== null && typeof theirs === "object") {
    const o = ours as Record<string, unknown>;
    const oldCrit = !("compat_nr_pages" in theirs);
    const matched = new Set<string>();
    for (const [k, v] of Object.entries(theirs)) {
      const mine = (oldCrit && OLD_CRIT_NAMES[`${path}.${k}`]) || k;
      if (!(mine in o)) throw new Error(`${path}.${k}: crit printed it, ckpt show did not`);
      expectSameValues(v, o[mine], `${path}.${k}`, newer);
      matched.add(mine);
    }
    for (const k of Object.keys(o)) {
      if (!matched.has(k) && !newer.has(`${path}.${k}`)) {
        throw new Error(`${path}.${k}: ckpt show printed it, crit did not`);
      }
    }
    return;
  }
  if (theirs !== ours) throw new Error(`${path}: crit says ${JSON.stringify(theirs)}, ckpt show says ${JSON.stringify(ours)}`);
}

/** Strip the entry level so paths read KIND.field.sub. */
function compareImage(kindName: string, theirs: { magic: string; entries: unknown[] }, ours: { magic: string; entries: unknown[] }, newer: ReadonlySet<string>): void {
  expect(ours.magic).toBe(theirs.magic);
  expect(ours.entries.length).toBe(theirs.entries.length);
  theirs.entries.forEach((t, i) => expectSameValues(t, ours.entries[i], kindName, newer));
}

function critDecode(crit: string, file: string): { magic: string; entries: unknown[] } {
  const r = Bun.spawnSync([crit, "decode", "-i", file], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`crit decode ${file} failed: ${r.stderr.toString()}`);
  return parseExactJson(r.stdout.toString()) as { magic: string; entries: unknown[] };
}

function writeFilledImage(dir: string, k: ImageKind): string {
  const enc = new ImageEncoder(k);
  const schemas: DescMessage[] = k.first ? [k.first, k.entry, k.entry] : [k.entry, k.entry];
  schemas.forEach((s, index) => {
    const m = filledMessage(s);
    if (s === k.entry) setPayloadSize(k, m, 300);
    const size = payloadSize(k, index, m as unknown as Record<string, unknown>);
    const payload = size === undefined ? undefined : Uint8Array.from({ length: size === "rest" ? 300 : size }, (_, i) => (i * 13) & 0xff);
    enc.add(s, m as MessageShape<typeof s>, payload);
  });
  const file = join(dir, FILE_NAME[k.name]!);
  writeEncodedImage(file, enc);
  return file;
}

// Without crit the comparison cannot run. In CI it must (.ci/run installs criu);
// elsewhere the suite says so loudly and skips these tests.
if (!CRIT && process.env.CI) throw new Error("crit is not installed: `apt-get install -y criu` (CI must run the crit tests)");
if (!CRIT) console.warn("crit not found: skipping the crit comparison tests (apt-get install -y criu)");

/** Each crit at hand: Debian's (CRIU 3.17, in CI) and, with CRIU_BIN, CRIU 4.2's, which knows every field ckpt writes. */
const CRITS = [
  { label: "Debian's crit", bin: CRIT, newer: NEWER_THAN_CRIT },
  { label: "crit 4.2", bin: CRIT_42, newer: new Set<string>(CKPT_ONLY) },
];

for (const crit of CRITS) {
  describe.skipIf(!crit.bin)(`${crit.label} reads what ckpt writes`, () => {
    test("every image kind, every field set", () => {
      const dir = tempDir("crit");
      for (const k of allKinds()) writeFilledImage(dir, k);
      const shown = parseExactJson(runCkpt(["show", dir, "--json"]).stdout) as Record<string, { magic: string; entries: unknown[] }>;
      for (const k of allKinds()) {
        const name = FILE_NAME[k.name]!;
        const theirs = critDecode(crit.bin!, join(dir, name));
        const ours = shown[name];
        if (!ours) throw new Error(`ckpt show left out ${name}`);
        compareImage(k.name, theirs, ours, crit.newer);
      }
      expect(Object.keys(shown).length).toBe(allKinds().length);
    });

    test("CRIU 4.2's own fixture images: crit and ckpt show agree", () => {
      const files = fixtureImageFiles();
      const shown = parseExactJson(runCkpt(["show", FIXTURES, "--json"]).stdout) as Record<string, { magic: string; entries: unknown[] }>;
      for (const f of files) compareImage(shown[f]!.magic, critDecode(crit.bin!, join(FIXTURES, f)), shown[f]!, crit.newer);
    });
  });
}

describe.skipIf(!CRIT)("the crit comparison", () => {
  test("the comparison itself catches a wrong value", () => {
    expect(() => expectSameValues({ a: 1, b: { c: "x" } }, { a: 1, b: { c: "y" } }, "T")).toThrow(/T.b.c: crit says "x"/);
    expect(() => expectSameValues({ a: 1 }, { a: 1, z: 2 }, "T")).toThrow(/T.z: ckpt show printed it/);
    expect(() => expectSameValues({ a: [1, 2] }, { a: [1] }, "T")).toThrow();
  });
});
