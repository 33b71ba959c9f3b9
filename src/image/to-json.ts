/**
 * Images to JSON in crit's shape: `{"magic": NAME, "entries": [...]}`, protobuf
 * field names, only the fields that are set, enums by value name, 64-bit
 * integers as exact JSON numbers and bytes as base64 in Python's
 * encodebytes layout (a newline after every 76 characters and at the end), so
 * that `ckpt show` and `crit decode` print the same values.
 */
import { ScalarType, type DescEnum, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
import { reflect, type ReflectList, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import type { DecodedImage } from "./decode";
import { entrySchema } from "./magic";

export type JsonValue = null | boolean | number | string | bigint | JsonValue[] | { [key: string]: JsonValue };

/** base64 as Python's base64.encodebytes writes it. */
export function base64Lines(bytes: Uint8Array): string {
  const b64 = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let out = "";
  for (let i = 0; i < b64.length; i += 76) out += `${b64.slice(i, i + 76)}\n`;
  return out;
}

function enumName(desc: DescEnum, value: number): JsonValue {
  return desc.values.find((v) => v.number === value)?.name ?? value;
}

function scalarJson(type: ScalarType, value: unknown): JsonValue {
  switch (type) {
    case ScalarType.BYTES:
      return base64Lines(value as Uint8Array);
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return BigInt(value as bigint | string | number);
    default:
      return value as JsonValue;
  }
}

function listJson(field: DescField & { fieldKind: "list" }, list: ReflectList): JsonValue[] {
  const out: JsonValue[] = [];
  for (let i = 0; i < list.size; i++) {
    const item = list.get(i);
    if (field.listKind === "message") out.push(reflectedJson(item as ReflectMessage));
    else if (field.listKind === "enum") out.push(enumName(field.enum, item as number));
    else out.push(scalarJson(field.scalar, item));
  }
  return out;
}

function reflectedJson(r: ReflectMessage): { [key: string]: JsonValue } {
  const out: { [key: string]: JsonValue } = {};
  for (const field of r.sortedFields) {
    if (!r.isSet(field)) continue;
    switch (field.fieldKind) {
      case "scalar":
        out[field.name] = scalarJson(field.scalar, r.get(field));
        break;
      case "enum":
        out[field.name] = enumName(field.enum, r.get(field) as number);
        break;
      case "message":
        out[field.name] = reflectedJson(r.get(field) as ReflectMessage);
        break;
      case "list":
        out[field.name] = listJson(field, r.get(field) as ReflectList);
        break;
      case "map":
        throw new Error(`map field ${field.name}: image messages have none`);
    }
  }
  return out;
}

/** One message as a crit-shaped JSON object. */
export function messageToJson(schema: DescMessage, message: Message): { [key: string]: JsonValue } {
  return reflectedJson(reflect(schema, message));
}

/** A decoded image as crit's `{"magic", "entries"}` object; payloads go to an `extra` key. */
export function imageToJson(image: DecodedImage): { magic: string; entries: JsonValue[] } {
  const entries = image.entries.map((e, i) => {
    const obj = messageToJson(entrySchema(image.kind, i), e.message);
    if (e.payload) obj.extra = base64Lines(e.payload);
    return obj;
  });
  return { magic: image.kind.name, entries };
}

/** JSON text in which bigints are written as plain integer literals. */
export function stringifyJson(value: unknown, indent?: number): string {
  // Bigints travel through JSON.stringify as marked strings and are unquoted
  // afterwards; the marker is random per call so no real string can match it.
  const tag = crypto.randomUUID();
  const text = JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? `\u0000${tag}:${v}` : v), indent);
  return text.replace(new RegExp(`"\\\\u0000${tag}:(-?\\d+)"`, "g"), "$1");
}
