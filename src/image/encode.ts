/** Encode entries into an image file's bytes: magic words, then u32-framed messages. */
import { toBinary, type DescMessage, type Message, type MessageShape } from "@bufbuild/protobuf";
import { entrySchema, MAGIC_COMMON, MAGIC_SERVICE, type ImageKind } from "./magic";

/**
 * Builds one image in memory. Entries are appended in order; the first must be
 * of `kind.first` where the kind has one (pagemap's head).
 */
export class ImageEncoder {
  private readonly chunks: Uint8Array[] = [];
  private size = 0;
  private count = 0;

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
   * not read back.
   */
  add<D extends DescMessage>(schema: D, message: MessageShape<D>, payload?: Uint8Array): this {
    const where = `${this.kind.name} image: entry ${this.count}`;
    const want = entrySchema(this.kind, this.count);
    if (schema.typeName !== want.typeName) throw new Error(`${where} must be ${want.typeName}, got ${schema.typeName}`);
    const payloadSize = this.kind.payloadSize && schema === this.kind.entry ? this.kind.payloadSize(message as unknown as Record<string, unknown>) : undefined;
    if (payloadSize === undefined && payload) throw new Error(`${where}: this kind of entry carries no payload`);
    if (payloadSize !== undefined && (payload?.length ?? 0) !== payloadSize) {
      throw new Error(`${where}: entry says ${payloadSize} payload bytes, ${payload?.length ?? 0} given`);
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
