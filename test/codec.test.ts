import { describe, expect, test } from "bun:test";
import { create, equals, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { readFileSync } from "node:fs";
import { decodeImage, decodeMagic, MAX_ENTRY_SIZE } from "../src/image/decode";
import { ImageEncoder } from "../src/image/encode";
import { ImageError } from "../src/image/errors";
import { readImageFile } from "../src/image/image-file";
import { allKinds, kind, MAGIC_COMMON, MAGIC_SERVICE, payloadSize } from "../src/image/magic";
import { PagemapEntrySchema, PagemapHeadSchema } from "../src/image/gen/pagemap_pb";
import { PipeDataEntrySchema } from "../src/image/gen/pipe_pb";
import { PstreeEntrySchema } from "../src/image/gen/pstree_pb";
import { base64Lines, imageToJson, stringifyJson } from "../src/image/to-json";
import { filledMessage, setPayloadSize } from "./helpers/fill";
import { parseExactJson } from "./helpers/cli";
import { FIXTURES, fixtureImageFiles } from "./helpers/fixtures";


function le32(...words: number[]): Uint8Array {
  const b = new Uint8Array(words.length * 4);
  const v = new DataView(b.buffer);
  words.forEach((w, i) => v.setUint32(i * 4, w >>> 0, true));
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function pstreeImage(): Uint8Array {
  const enc = new ImageEncoder(kind("PSTREE"));
  enc.add(PstreeEntrySchema, create(PstreeEntrySchema, { pid: 10, ppid: 0, pgid: 10, sid: 10, threads: [10, 11] }));
  enc.add(PstreeEntrySchema, create(PstreeEntrySchema, { pid: 12, ppid: 10, pgid: 10, sid: 10, threads: [12] }));
  return enc.bytes();
}

function expectImageError(fn: () => unknown, offset: number, reason: RegExp, code?: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ImageError);
  const ie = err as ImageError;
  expect(ie.file).toBe("test.img");
  expect(ie.offset).toBe(offset);
  expect(ie.reason).toMatch(reason);
  expect(ie.message).toContain(`test.img: at byte ${offset}`);
  if (code) expect(ie.code).toBe(code as never);
}

describe("round trip of every message kind", () => {
  for (const k of allKinds()) {
    const schemas: DescMessage[] = k.first ? [k.first, k.entry] : [k.entry];
    test(`${k.name}: fully populated entries survive encode → decode`, () => {
      const enc = new ImageEncoder(k);
      const originals = [...schemas, k.entry].map((s) => ({ s, m: filledMessage(s) }));
      // Keep payload sizes small: the filler would ask for gigabytes.
      originals.forEach((o, i) => {
        if (o.s === k.entry) setPayloadSize(k, o.m, 100 + i);
      });
      const payloads: (Uint8Array | undefined)[] = [];
      originals.forEach(({ s, m }, index) => {
        // The entry says how many payload bytes follow it (or that the rest of the file does).
        const size = payloadSize(k, index, m as unknown as Record<string, unknown>);
        const payload = size === undefined ? undefined : Uint8Array.from({ length: size === "rest" ? 77 : size }, (_, i) => i & 0xff);
        payloads.push(payload);
        enc.add(s, m as MessageShape<typeof s>, payload);
      });
      const bytes = enc.bytes();
      const head = new DataView(bytes.buffer);
      if (k.head === "none") expect(head.getUint32(0, true)).toBe(k.magic);
      else {
        expect(head.getUint32(0, true)).toBe(k.head === "service" ? MAGIC_SERVICE : MAGIC_COMMON);
        expect(head.getUint32(4, true)).toBe(k.magic);
      }
      const back = decodeImage(bytes, "test.img");
      expect(back.kind.name).toBe(k.name);
      expect(back.entries.length).toBe(originals.length);
      back.entries.forEach((e, i) => {
        const o = originals[i]!;
        expect(equals(o.s, e.message as MessageShape<typeof o.s>, o.m as MessageShape<typeof o.s>)).toBe(true);
        expect(e.payload).toEqual(payloads[i]);
      });
    });
  }
});

describe("corrupt images are rejected with file and offset", () => {
  test("bad magic", () => {
    const bytes = pstreeImage();
    bytes[0] = (bytes[0] ?? 0) ^ 0xff;
    expectImageError(() => decodeImage(bytes, "test.img"), 0, /bad magic/, "bad-magic");
  });

  test("unknown image magic after a valid head", () => {
    expectImageError(() => decodeImage(le32(MAGIC_COMMON, 0x12345678), "test.img"), 4, /unknown image magic 0x12345678/, "unknown-kind");
  });

  test("service head on an ordinary image", () => {
    expectImageError(() => decodeImage(le32(MAGIC_SERVICE, kind("PSTREE").magic), "test.img"), 0, /bad head magic/);
  });

  test("file shorter than a magic", () => {
    expectImageError(() => decodeImage(new Uint8Array(2), "test.img"), 0, /too short/);
  });

  test("truncated length word", () => {
    const whole = pstreeImage();
    expectImageError(() => decodeImage(concat(whole, new Uint8Array([5, 0])), "test.img"), whole.length, /truncated entry length: 2 of 4/, "truncated");
  });

  test("truncated body", () => {
    const whole = pstreeImage();
    const cut = whole.subarray(0, whole.length - 3);
    // The second entry starts after the header and the first entry.
    const firstLen = new DataView(whole.buffer).getUint32(8, true);
    expectImageError(() => decodeImage(cut, "test.img"), 8 + 4 + firstLen, /truncated entry body/);
  });

  test("absurd length", () => {
    const bytes = concat(le32(MAGIC_COMMON, kind("PSTREE").magic, MAX_ENTRY_SIZE + 1), new Uint8Array(16));
    expectImageError(() => decodeImage(bytes, "test.img"), 8, /absurd entry length/, "absurd-length");
  });

  test("0xffffffff length does not allocate or hang", () => {
    const bytes = le32(MAGIC_COMMON, kind("PSTREE").magic, 0xffffffff);
    expectImageError(() => decodeImage(bytes, "test.img"), 8, /absurd entry length 4294967295/);
  });

  test("body that is not protobuf", () => {
    const body = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    const bytes = concat(le32(MAGIC_COMMON, kind("PSTREE").magic, body.length), body);
    expectImageError(() => decodeImage(bytes, "test.img"), 12, /not a valid ckpt.images.PstreeEntry/, "bad-entry");
  });

  test("payload shorter than its entry says", () => {
    const enc = new ImageEncoder(kind("PIPES_DATA"));
    enc.add(PipeDataEntrySchema, create(PipeDataEntrySchema, { pipeId: 1, bytes: 10 }), new Uint8Array(10));
    const whole = enc.bytes();
    expectImageError(() => decodeImage(whole.subarray(0, whole.length - 4), "test.img"), whole.length - 10, /truncated payload/);
  });
});

describe("encoder", () => {
  test("refuses an entry of the wrong type", () => {
    const enc = new ImageEncoder(kind("PAGEMAP"));
    expect(() => enc.add(PagemapEntrySchema, create(PagemapEntrySchema))).toThrow(/must be ckpt.images.PagemapHead/);
    enc.add(PagemapHeadSchema, create(PagemapHeadSchema, { pagesId: 1 }));
    expect(() => enc.add(PagemapHeadSchema, create(PagemapHeadSchema))).toThrow(/must be ckpt.images.PagemapEntry/);
  });

  test("a payload must be as long as its entry says", () => {
    const entry = create(PipeDataEntrySchema, { pipeId: 1, bytes: 10 });
    const enc = new ImageEncoder(kind("PIPES_DATA"));
    expect(() => enc.add(PipeDataEntrySchema, entry, new Uint8Array(3))).toThrow(/entry says 10 payload bytes, 3 given/);
    expect(() => enc.add(PipeDataEntrySchema, entry)).toThrow(/entry says 10 payload bytes, 0 given/);
    expect(() => new ImageEncoder(kind("PSTREE")).add(PstreeEntrySchema, create(PstreeEntrySchema, { pid: 1, ppid: 0, pgid: 0, sid: 0 }), new Uint8Array(1))).toThrow(
      /carries no payload/,
    );
    enc.add(PipeDataEntrySchema, entry, new Uint8Array(10));
    expect(decodeImage(enc.bytes(), "test.img").entries[0]!.payload!.length).toBe(10);
  });

  test("an unset required field is refused, naming the image, entry and field", () => {
    const enc = new ImageEncoder(kind("PSTREE"));
    expect(() => enc.add(PstreeEntrySchema, create(PstreeEntrySchema, { pid: 1 }))).toThrow(
      /PSTREE image: entry 0: .*PstreeEntry.ppid.*required field not set/,
    );
  });

  test("required fields set to zero are written", () => {
    const enc = new ImageEncoder(kind("PSTREE"));
    enc.add(PstreeEntrySchema, create(PstreeEntrySchema, { pid: 1, ppid: 0, pgid: 0, sid: 0 }));
    const json = imageToJson(decodeImage(enc.bytes(), "test.img"));
    expect(json.entries[0]).toEqual({ pid: 1, ppid: 0, pgid: 0, sid: 0 });
  });
});

describe("JSON in crit's shape", () => {
  test("64-bit values print exactly", () => {
    expect(stringifyJson({ a: 18446744073709551615n, b: [1n, -2n], s: "x" })).toBe('{"a":18446744073709551615,"b":[1,-2],"s":"x"}');
    expect(stringifyJson({ a: 1n }, 2)).toBe('{\n  "a": 1\n}');
  });

  test("strings that look like the bigint marker stay strings", () => {
    const tricky = { s: "\u0000big:42", t: "\u0000x:1" };
    expect(JSON.parse(stringifyJson(tricky))).toEqual(tricky);
  });

  test("bytes wrap like Python's base64.encodebytes", () => {
    const b = new Uint8Array(60).fill(0xab);
    const text = base64Lines(b);
    const lines = text.split("\n");
    expect(lines[0]!.length).toBe(76);
    expect(text.endsWith("\n")).toBe(true);
    expect(Buffer.from(text.replace(/\n/g, ""), "base64")).toEqual(Buffer.from(b));
    expect(base64Lines(new Uint8Array())).toBe("");
  });
});

describe("CRIU 4.2 fixture images", () => {
  const files = fixtureImageFiles();

  test("the fixture set is there", () => {
    expect(files.length).toBeGreaterThan(10);
  });

  /**
   * Compare our JSON with crit 4.2's pretty output beside the fixture: the same
   * keys everywhere and the same values, where pretty printing writes some
   * numbers as hex strings ("0x1f") and flag or state numbers as names.
   */
  function samePretty(theirs: unknown, ours: unknown, path: string): void {
    if (Array.isArray(theirs)) {
      if (!Array.isArray(ours) || ours.length !== theirs.length) throw new Error(`${path}: list differs`);
      theirs.forEach((t, i) => samePretty(t, ours[i], `${path}[${i}]`));
      return;
    }
    if (theirs !== null && typeof theirs === "object") {
      const o = ours as Record<string, unknown>;
      const keys = Object.keys(theirs);
      expect(Object.keys(o).sort()).toEqual(keys.sort());
      for (const k of keys) samePretty((theirs as Record<string, unknown>)[k], o[k], `${path}.${k}`);
      return;
    }
    if (typeof theirs === "string" && (typeof ours === "number" || typeof ours === "bigint")) {
      if (/^0x[0-9a-f]+$/i.test(theirs) || /^-?\d+$/.test(theirs)) {
        if (BigInt(theirs) !== BigInt(ours)) throw new Error(`${path}: crit 4.2 says ${theirs}, we say ${ours}`);
      }
      // Otherwise a flag or state name: a formatting choice of pretty output.
      return;
    }
    if (typeof ours === "bigint") {
      if (BigInt(theirs as number) !== ours) throw new Error(`${path}: crit 4.2 says ${theirs}, we say ${ours}`);
      return;
    }
    if (theirs !== ours) throw new Error(`${path}: crit 4.2 says ${JSON.stringify(theirs)}, we say ${JSON.stringify(ours)}`);
  }

  for (const f of files) {
    test(`${f} decodes to the values crit 4.2 printed`, () => {
      const json = imageToJson(readImageFile(`${FIXTURES}/${f}`));
      const theirs = parseExactJson(readFileSync(`${FIXTURES}/json/${f}.json`, "utf8")) as { magic: string; entries: unknown[] };
      expect(json.magic).toBe(theirs.magic);
      samePretty(theirs.entries, json.entries, f);
    });
  }

  test("the pretty comparison catches a wrong value", () => {
    expect(() => samePretty({ a: "0x10" }, { a: 17n }, "T")).toThrow(/T.a: crit 4.2 says 0x10/);
    expect(() => samePretty({ a: 1 }, { a: 1, b: 2 }, "T")).toThrow();
  });

  test("decodeMagic names the kind of every fixture file", () => {
    const names = files.map((f) => decodeMagic(readFileSync(`${FIXTURES}/${f}`), f).kind.name);
    expect(names).toContain("INVENTORY");
    expect(names).toContain("STATS");
    expect(names).toContain("PAGEMAP");
  });
});

describe("damaged copies of real images", () => {
  // A small deterministic generator, so a failure reproduces.
  let seed = 0x2545f491;
  const rand = (n: number): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const files = fixtureImageFiles();

  test("flipped bytes and cuts give a decoded image or an ImageError, nothing else", () => {
    let errors = 0;
    for (const f of files) {
      const good = new Uint8Array(readFileSync(`${FIXTURES}/${f}`));
      for (let i = 0; i < 200; i++) {
        const bad = i % 2 ? good.slice(0, rand(good.length)) : good.slice();
        if (i % 2 === 0) for (let k = 0; k <= rand(4); k++) bad[rand(bad.length)] = rand(256);
        try {
          imageToJson(decodeImage(bad, f));
        } catch (e) {
          if (!(e instanceof ImageError)) throw new Error(`${f} variant ${i}: ${(e as Error).stack}`);
          errors++;
        }
      }
    }
    // Most damage is caught (some flips land in values and still decode).
    expect(errors).toBeGreaterThan(files.length * 100);
  });
});
