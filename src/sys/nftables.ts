/**
 * A packet-dropping nftables table, made over netlink (NETLINK_NETFILTER,
 * the nf_tables subsystem) without the nft tool: one table of the inet
 * family, an input and an output chain, one rule per flow that drops its
 * packets. This is the network lock of --tcp-established: while a connection
 * is being saved and brought back, neither end may see a packet of it (a
 * segment reaching no socket is answered with a reset).
 *
 * The table is an owner table (NFT_TABLE_F_OWNER): the kernel removes it when
 * the netlink socket that made it closes. Whoever holds that socket holds the
 * lock, and a holder that dies — killed, crashed — unlocks by dying.
 *
 * Layouts: nlmsghdr, then struct nfgenmsg { u8 family; u8 version; be16
 * res_id; }, then attributes; nf_tables integers are big-endian. Messages go
 * in one batch (NFNL_MSG_BATCH_BEGIN ... END), every one acknowledged.
 */
import { Errno, SysError } from "./errno";
import { close } from "./libc";
import { encodeNlRequest, forEachNlMessage, NLM_F, NLMSG } from "./netlink";
import { AF, IPPROTO, MSG, recvmsg, SOCK, sendto, socket, sockaddrNl } from "./socket";

const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_NFTABLES = 10;
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
const MSG_NEWTABLE = 0;
const MSG_NEWCHAIN = 3;
const MSG_NEWRULE = 6;
const NLM_F_CREATE = 0x400;
const NLM_F_EXCL = 0x200;
const NLM_F_APPEND = 0x800;
const NLA_F_NESTED = 0x8000;
const NFPROTO_INET = 1;
const NFPROTO_IPV4 = 2;
const NFPROTO_IPV6 = 10;
const NF_INET_LOCAL_IN = 1;
const NF_INET_LOCAL_OUT = 3;
const NF_ACCEPT = 1;
const NF_DROP = 0;
const NFT_TABLE_F_OWNER = 0x2;
const NFT_REG_VERDICT = 0;
const NFT_REG_1 = 1;
const NFT_META_NFPROTO = 15;
const NFT_META_L4PROTO = 16;
const NFT_CMP_EQ = 0;
const NFT_PAYLOAD_NETWORK_HEADER = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER = 2;

/** One direction of a TCP flow: addresses as raw bytes (4 or 16), ports in host order. */
export interface Flow {
  family: typeof AF.INET | typeof AF.INET6;
  src: Uint8Array;
  sport: number;
  dst: Uint8Array;
  dport: number;
}

// ------------------------------------------------------------ attribute encoding

type Attr = { type: number; data: Uint8Array } | { type: number; nested: Attr[] };

const be32 = (n: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0, false);
  return b;
};
const str = (s: string): Uint8Array => new TextEncoder().encode(`${s}\0`);
const attr = (type: number, data: Uint8Array): Attr => ({ type, data });
const nest = (type: number, ...nested: Attr[]): Attr => ({ type, nested });

function encodeAttrs(attrs: readonly Attr[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const a of attrs) {
    const body = "data" in a ? a.data : encodeAttrs(a.nested);
    const len = 4 + body.length;
    const out = new Uint8Array((len + 3) & ~3);
    const v = new DataView(out.buffer);
    v.setUint16(0, len, true);
    v.setUint16(2, "data" in a ? a.type : a.type | NLA_F_NESTED, true);
    out.set(body, 4);
    parts.push(out);
  }
  const total = parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function nfgen(family: number, resId = 0): Uint8Array {
  const b = new Uint8Array(4);
  b[0] = family;
  new DataView(b.buffer).setUint16(2, resId, false);
  return b;
}

function payloadOf(family: number, attrs: readonly Attr[], resId = 0): Uint8Array {
  const a = encodeAttrs(attrs);
  const out = new Uint8Array(4 + a.length);
  out.set(nfgen(family, resId));
  out.set(a, 4);
  return out;
}

// ------------------------------------------------------------ expressions

const expr = (name: string, ...data: Attr[]): Attr => nest(1 /* NFTA_LIST_ELEM */, attr(1 /* NFTA_EXPR_NAME */, str(name)), nest(2 /* NFTA_EXPR_DATA */, ...data));
const meta = (key: number): Attr => expr("meta", attr(2 /* NFTA_META_KEY */, be32(key)), attr(1 /* NFTA_META_DREG */, be32(NFT_REG_1)));
const cmpEq = (value: Uint8Array): Attr =>
  expr("cmp", attr(1 /* NFTA_CMP_SREG */, be32(NFT_REG_1)), attr(2 /* NFTA_CMP_OP */, be32(NFT_CMP_EQ)), nest(3 /* NFTA_CMP_DATA */, attr(1 /* NFTA_DATA_VALUE */, value)));
const payload = (base: number, offset: number, len: number): Attr =>
  expr("payload", attr(1 /* NFTA_PAYLOAD_DREG */, be32(NFT_REG_1)), attr(2 /* NFTA_PAYLOAD_BASE */, be32(base)), attr(3 /* NFTA_PAYLOAD_OFFSET */, be32(offset)), attr(4 /* NFTA_PAYLOAD_LEN */, be32(len)));
const drop = (): Attr =>
  expr("immediate", attr(1 /* NFTA_IMMEDIATE_DREG */, be32(NFT_REG_VERDICT)), nest(2 /* NFTA_IMMEDIATE_DATA */, nest(2 /* NFTA_DATA_VERDICT */, attr(1 /* NFTA_VERDICT_CODE */, be32(NF_DROP)))));

const port = (p: number): Uint8Array => new Uint8Array([(p >> 8) & 0xff, p & 0xff]);

/** The expressions matching one direction of a flow, then drop. */
function flowRule(f: Flow): Attr[] {
  const v4 = f.family === AF.INET;
  const [srcOff, dstOff, len] = v4 ? [12, 16, 4] : [8, 24, 16];
  return [
    meta(NFT_META_NFPROTO), cmpEq(new Uint8Array([v4 ? NFPROTO_IPV4 : NFPROTO_IPV6])),
    meta(NFT_META_L4PROTO), cmpEq(new Uint8Array([IPPROTO.TCP])),
    payload(NFT_PAYLOAD_NETWORK_HEADER, srcOff, len), cmpEq(f.src),
    payload(NFT_PAYLOAD_NETWORK_HEADER, dstOff, len), cmpEq(f.dst),
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2), cmpEq(port(f.sport)),
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2), cmpEq(port(f.dport)),
    drop(),
  ];
}

// ------------------------------------------------------------ the lock

const nft = (m: number): number => (NFNL_SUBSYS_NFTABLES << 8) | m;

/**
 * Table `name` of the inet family dropping the packets of its flows, owned
 * by a netlink socket of its own: closing `fd` (or the death of every
 * process holding it) removes the table.
 */
export class NftDropTable {
  private seq = 1;

  private constructor(readonly name: string, readonly fd: number) {}

  /** The table with its input and output chains, no flow yet. */
  static create(name: string): NftDropTable {
    const fd = socket(AF.NETLINK, SOCK.RAW | SOCK.CLOEXEC, NETLINK_NETFILTER);
    const t = new NftDropTable(name, fd);
    try {
      t.batch((add) => {
        add(nft(MSG_NEWTABLE), NLM_F_CREATE | NLM_F_EXCL, payloadOf(NFPROTO_INET, [attr(1 /* NFTA_TABLE_NAME */, str(name)), attr(2 /* NFTA_TABLE_FLAGS */, be32(NFT_TABLE_F_OWNER))]));
        for (const [chain, hook] of [["input", NF_INET_LOCAL_IN], ["output", NF_INET_LOCAL_OUT]] as const) {
          add(nft(MSG_NEWCHAIN), NLM_F_CREATE, payloadOf(NFPROTO_INET, [
            attr(1 /* NFTA_CHAIN_TABLE */, str(name)), attr(3 /* NFTA_CHAIN_NAME */, str(chain)),
            nest(4 /* NFTA_CHAIN_HOOK */, attr(1 /* NFTA_HOOK_HOOKNUM */, be32(hook)), attr(2 /* NFTA_HOOK_PRIORITY */, be32(-150))),
            attr(5 /* NFTA_CHAIN_POLICY */, be32(NF_ACCEPT)), attr(7 /* NFTA_CHAIN_TYPE */, str("filter")),
          ]));
        }
      });
    } catch (e) {
      close(fd);
      if (e instanceof SysError && (e.errno === Errno.EPROTONOSUPPORT || e.errno === Errno.ENOENT || e.errno === Errno.EOPNOTSUPP || e.errno === Errno.EINVAL)) {
        throw new Error(`cannot lock the network with nftables here (${e.message}): the kernel has no nf_tables, or no owner tables (Linux 5.12+)`, { cause: e });
      }
      throw e;
    }
    return t;
  }

  /** Drop every packet of `flows` (each as its local end sees it, local → peer; the reverse direction too). */
  add(flows: readonly Flow[]): void {
    this.batch((add) => {
      for (const f of flows) {
        const reverse: Flow = { family: f.family, src: f.dst, sport: f.dport, dst: f.src, dport: f.sport };
        for (const [chain, flow] of [["output", f], ["input", reverse]] as const) {
          add(nft(MSG_NEWRULE), NLM_F_CREATE | NLM_F_APPEND, payloadOf(NFPROTO_INET, [
            attr(1 /* NFTA_RULE_TABLE */, str(this.name)), attr(2 /* NFTA_RULE_CHAIN */, str(chain)),
            nest(4 /* NFTA_RULE_EXPRESSIONS */, ...flowRule(flow)),
          ]));
        }
      }
    });
  }

  /** Remove the table (if no other process holds the socket). */
  close(): void {
    close(this.fd);
  }

  /** Send messages as one batch, every one acknowledged; the first error throws. */
  private batch(fill: (add: (type: number, flags: number, body: Uint8Array) => void) => void): void {
    const msgs: Uint8Array[] = [];
    const waiting = new Set<number>();
    const push = (type: number, flags: number, body: Uint8Array, ack: boolean): void => {
      const s = this.seq++;
      if (ack) waiting.add(s);
      msgs.push(encodeNlRequest(type, NLM_F.REQUEST | (ack ? NLM_F.ACK : 0) | flags, s, body));
    };
    push(NFNL_MSG_BATCH_BEGIN, 0, nfgen(0, NFNL_SUBSYS_NFTABLES), false);
    fill((type, flags, body) => push(type, flags, body, true));
    push(NFNL_MSG_BATCH_END, 0, nfgen(0, NFNL_SUBSYS_NFTABLES), false);
    const batch = new Uint8Array(msgs.reduce((n, m) => n + m.length, 0));
    let off = 0;
    for (const m of msgs) {
      batch.set(m, off);
      off += m.length;
    }
    sendto(this.fd, batch, 0, sockaddrNl(0));
    const buf = new Uint8Array(16384);
    while (waiting.size > 0) {
      const r = recvmsg(this.fd, buf, 0);
      if (r.flags & MSG.TRUNC) throw new Error("nftables: a netlink reply was truncated");
      forEachNlMessage(buf, r.bytes, (m) => {
        if (m.type !== NLMSG.ERROR) return;
        const code = new DataView(m.payload.buffer, m.payload.byteOffset, 4).getInt32(0, true);
        if (code < 0) throw new SysError("nftables", [`table inet ${this.name}`, `message ${m.seq}`], -code);
        waiting.delete(m.seq);
      });
    }
  }
}
