/**
 * Images to JSON in crit's shape: `{"magic": NAME, "entries": [...]}`, protobuf
 * field names, only the fields that are set, enums by value name, 64-bit
 * integers as exact JSON numbers and bytes as base64 in Python's
 * encodebytes layout (a newline after every 76 characters and at the end),
 * except where crit prints a bytes field as quoted-printable, so that
 * `ckpt show` and `crit decode` print the same values.
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

/**
 * bytes fields that crit prints as quoted-printable text (Python's
 * quopri.encodestring) instead of base64: unix socket addresses.
 */
const QUOTED_PRINTABLE_FIELDS = new Set(["ckpt.images.UnixSkEntry.name"]);

const QP_LINE = 76;
const hexByte = (b: number): string => b.toString(16).toUpperCase().padStart(2, "0");

/**
 * Quoted-printable as Python's binascii.b2a_qp writes it in text mode:
 * "=XX" for bytes outside printable ASCII, for "=", for a lone "." line and
 * for a space or tab at the end of a line or of the data; line ends kept (as
 * CRLF throughout if the first one is CRLF); "=" soft breaks keep lines
 * under 76 characters.
 */
export function quotedPrintable(data: Uint8Array): string {
  const NL = 0x0a, CR = 0x0d, TAB = 0x09, SP = 0x20, DOT = 0x2e, EQ = 0x3d;
  const firstNl = data.indexOf(NL);
  const eol = firstNl > 0 && data[firstNl - 1] === CR ? "\r\n" : "\n";
  const out: string[] = [];
  let line = 0;
  let i = 0;
  while (i < data.length) {
    const c = data[i]!;
    const last = i + 1 === data.length;
    const next = last ? -1 : data[i + 1]!;
    const escape =
      c > 126 ||
      c === EQ ||
      (c === DOT && line === 0 && (last || next === NL || next === CR || next === 0)) ||
      ((c === TAB || c === SP) && last) ||
      (c < 33 && c !== CR && c !== NL && c !== TAB && c !== SP);
    if (escape) {
      if (line + 3 >= QP_LINE) {
        out.push(`=${eol}`);
        line = 0;
      }
      out.push(`=${hexByte(c)}`);
      line += 3;
      i++;
    } else if (c === NL || (c === CR && next === NL)) {
      // Whitespace just before a line end is escaped so it survives transport.
      const prev = out.at(-1);
      if (prev === " " || prev === "\t") out[out.length - 1] = `=${hexByte(prev.charCodeAt(0))}`;
      out.push(eol);
      line = 0;
      i += c === CR ? 2 : 1;
    } else {
      if (!last && next !== NL && line + 1 >= QP_LINE) {
        out.push(`=${eol}`);
        line = 0;
      }
      out.push(String.fromCharCode(c));
      line++;
      i++;
    }
  }
  return out.join("");
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
        out[field.name] = QUOTED_PRINTABLE_FIELDS.has(`${field.parent.typeName}.${field.name}`)
          ? quotedPrintable(r.get(field) as Uint8Array)
          : scalarJson(field.scalar, r.get(field));
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
    if (e.payload) {
      // crit splits a TCP stream's payload into its two queues.
      if (image.kind.name === "TCP_STREAM") {
        const inq = Number((e.message as unknown as { inqLen: number }).inqLen);
        obj.extra = { inq: base64Lines(e.payload.subarray(0, inq)), outq: base64Lines(e.payload.subarray(inq)) };
      } else obj.extra = base64Lines(e.payload);
    }
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
