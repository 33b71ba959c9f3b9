/** Encode entries into an image file's bytes: magic words, then u32-framed messages. */
import { toBinary, type DescMessage, type Message, type MessageShape } from "@bufbuild/protobuf";
import { entrySchema, MAGIC_COMMON, MAGIC_SERVICE, payloadSize, type ImageKind } from "./magic";

/**
 * Builds one image in memory. Entries are appended in order; the first must be
 * of `kind.first` where the kind has one (pagemap's head).
 */
export class ImageEncoder {
  private readonly chunks: Uint8Array[] = [];
  private size = 0;
  private count = 0;
  /** Set once an entry's payload ran to the end of the file: nothing may follow. */
  private ended = false;

  constructor(readonly kind: ImageKind) {
    const head = new Uint8Array(kind.head === "none" ? 4 : 8);
    const v = new DataView(head.buffer);
    if (kind.head === "none") {
      v.setUint32(0, kind.magic, true);
    } else {
      v.setUint32(0, kind.head === "service" ? MAGIC_SERVICE : MAGIC_COMMON, true);
      v.setUint32(4, kind.magic, true);
    }
    this.push(head);
  }

  private push(b: Uint8Array): void {
    this.chunks.push(b);
    this.size += b.length;
  }

  /**
   * Append one entry, with its raw payload where the image kind carries one.
   * The payload must be exactly as long as the entry says, or the image would
   * not read back; a payload that runs to the end of the file (a small ghost
   * file's contents) may have any length, and ends the image.
   */
  add<D extends DescMessage>(schema: D, message: MessageShape<D>, payload?: Uint8Array): this {
    const where = `${this.kind.name} image: entry ${this.count}`;
    if (this.ended) throw new Error(`${where}: the previous entry's payload runs to the end of the image`);
    const want = entrySchema(this.kind, this.count);
    if (schema.typeName !== want.typeName) throw new Error(`${where} must be ${want.typeName}, got ${schema.typeName}`);
    const size = payloadSize(this.kind, this.count, message as unknown as Record<string, unknown>);
    if (size === undefined && payload) throw new Error(`${where}: this kind of entry carries no payload`);
    if (typeof size === "number" && (payload?.length ?? 0) !== size) {
      throw new Error(`${where}: entry says ${size} payload bytes, ${payload?.length ?? 0} given`);
    }
    let body: Uint8Array;
    try {
      body = toBinary(schema, message as Message as MessageShape<D>);
    } catch (e) {
      // Typically a proto2 required field left unset: CRIU's decoder would refuse it too.
      throw new Error(`${where}: ${(e as Error).message}`);
    }
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, body.length, true);
    this.push(len);
    this.push(body);
    if (payload) this.push(payload);
    if (size === "rest") this.ended = true;
    this.count++;
    return this;
  }

  /** The whole image. */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    let off = 0;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}
