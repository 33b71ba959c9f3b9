/** Encode entries into an image file's bytes: magic words, then u32-framed messages. */
import { toBinary, type DescMessage, type Message, type MessageShape } from "@bufbuild/protobuf";
import { MAGIC_COMMON, MAGIC_SERVICE, type ImageKind } from "./magic";

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

  /** The message type the next entry must have. */
  private nextSchema(): DescMessage {
    return this.count === 0 && this.kind.first ? this.kind.first : this.kind.entry;
  }

  /** Append one entry, with its raw payload where the image kind carries one. */
  add<D extends DescMessage>(schema: D, message: MessageShape<D>, payload?: Uint8Array): this {
    const want = this.nextSchema();
    if (schema.typeName !== want.typeName) {
      throw new Error(`${this.kind.name} image: entry ${this.count} must be ${want.typeName}, got ${schema.typeName}`);
    }
    if (payload && !this.kind.payloadSize) throw new Error(`${this.kind.name} image entries carry no payload`);
    let body: Uint8Array;
    try {
      body = toBinary(schema, message as Message as MessageShape<D>);
    } catch (e) {
      // Typically a proto2 required field left unset: CRIU's decoder would refuse it too.
      throw new Error(`${this.kind.name} image: entry ${this.count}: ${(e as Error).message}`);
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
