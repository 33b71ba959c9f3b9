/**
 * Build a message with every field set to a distinctive non-default value, so a
 * round trip or an outside decoder has something to get wrong in each field.
 */
import { create, ScalarType, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import type { ImageKind } from "../../src/image/magic";

function scalarValue(type: ScalarType, n: number): unknown {
  switch (type) {
    case ScalarType.BOOL:
      return true;
    case ScalarType.STRING:
      return `s${n}-ü`;
    case ScalarType.BYTES:
      // Long enough to make Python's base64 wrap its lines.
      return Uint8Array.from({ length: 70 + n }, (_, i) => (i * 7 + n) & 0xff);
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return -(1000 + n);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return 0x8000_0000 + n;
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return -(2n ** 40n) - BigInt(n);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      // Above 2^53 so a lossy JSON path would show.
      return 2n ** 63n + BigInt(n);
    default:
      return n + 0.5;
  }
}

function fillInto(r: ReflectMessage, depth: number): void {
  for (const field of r.sortedFields) fillField(r, field, depth);
}

function fillField(r: ReflectMessage, field: DescField, depth: number): void {
  const n = field.number;
  switch (field.fieldKind) {
    case "scalar":
      r.set(field, scalarValue(field.scalar, n) as never);
      return;
    case "enum":
      r.set(field, field.enum.values[field.enum.values.length - 1]?.number as never);
      return;
    case "message": {
      if (depth > 4) return;
      const sub = reflect(field.message);
      fillInto(sub, depth + 1);
      r.set(field, sub as never);
      return;
    }
    case "list": {
      const list = r.get(field);
      for (let i = 0; i < 2; i++) {
        if (field.listKind === "message") {
          if (depth > 4) return;
          const sub = reflect(field.message);
          fillInto(sub, depth + 1);
          list.add(sub as never);
        } else if (field.listKind === "enum") {
          list.add(field.enum.values[i % field.enum.values.length]?.number as never);
        } else {
          list.add(scalarValue(field.scalar, n + i) as never);
        }
      }
      return;
    }
    case "map":
      throw new Error("image messages have no map fields");
  }
}

/** A message of `schema` with every field (recursively) set. */
export function filledMessage<D extends DescMessage>(schema: D): Message {
  const r = reflect(schema, create(schema));
  fillInto(r, 0);
  return r.message;
}

/**
 * Set the field of an entry of kind `k` that counts the raw bytes after it
 * (pipe data's `bytes`, a queued packet's `length`, a ghost chunk's `len`)
 * to `n`: a filled message would otherwise ask for gigabytes.
 */
export function setPayloadSize(k: ImageKind, m: Message, n: number): void {
  const fields = m as unknown as Record<string, unknown>;
  // A TCP stream's payload is its two queues: all of it in the receive queue.
  if (k.name === "TCP_STREAM") {
    fields.inqLen = n;
    fields.outqLen = 0;
    return;
  }
  if (k.payloadSizeField === undefined) return;
  fields[k.payloadSizeField] = typeof fields[k.payloadSizeField] === "bigint" ? BigInt(n) : n;
}
