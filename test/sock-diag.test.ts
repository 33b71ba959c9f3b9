import { afterAll, afterEach, describe, expect, test } from "bun:test";
import net from "node:net";
import { readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ALL_STATES, INET_DIAG_MSG_OFF, INET_DIAG_MSG_SIZE, INET_DIAG_REQ_V2_OFF, INET_DIAG_REQ_V2_SIZE, INET_DIAG_SOCKID_OFF, INET_DIAG_SOCKID_SIZE, inetSockets, SocketTable, stateMask, UNIX_DIAG_MSG_OFF, UNIX_DIAG_MSG_SIZE, UNIX_DIAG_REQ_OFF, UNIX_DIAG_REQ_SIZE, unixSocket, unixSockets, type InetDiag, type UnixDiag } from "../src/proc/sock-diag";
import { SysError } from "../src/sys/errno";
import { close, fstat, openat } from "../src/sys/libc";
import { NLMSGHDR_OFF, NLMSGHDR_SIZE } from "../src/sys/netlink";
import { AT, O } from "../src/sys/nr";
import * as S from "../src/sys/socket";
import { encodeKernelDev } from "../src/sys/structs";
import { buildC, startReady, tempDir, type Target } from "./helpers/target";

const te = new TextEncoder();
const td = new TextDecoder();

// Every fd a test opens goes here and is closed after the test, pass or fail.
const fds: number[] = [];
function track(x: number): number;
function track<T extends number[]>(x: T): T;
function track(x: number | number[]): number | number[] {
  if (typeof x === "number") fds.push(x);
  else fds.push(...x);
  return x;
}
afterEach(() => {
  for (const fd of fds.splice(0)) {
    try {
      close(fd);
    } catch {
      // already closed by the test
    }
  }
});

const dirs: string[] = [];
const targets: Target[] = [];
afterAll(() => {
  targets.forEach((t) => t.kill());
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// Sockets open before any test ran; the last test checks nothing was left behind.
const socketsAtStart = mySocketInodes();

function scratch(): string {
  const d = tempDir("sockdiag");
  dirs.push(d);
  return d;
}

/** The inode behind a socket fd of `pid` (default: this process), from its /proc fd link. */
function inoOf(fd: number, pid: number | "self" = "self"): number {
  const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
  if (!m) throw new Error(`fd ${fd} of ${pid} is not a socket`);
  return Number(m[1]);
}

/** Inodes of every socket this process has open. */
function mySocketInodes(): Set<number> {
  const out = new Set<number>();
  for (const f of readdirSync("/proc/self/fd")) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${f}`));
      if (m) out.add(Number(m[1]));
    } catch {
      // the fd of the directory listing itself is gone by now
    }
  }
  return out;
}

function unixOf(map: Map<number, UnixDiag>, fd: number): UnixDiag {
  const d = map.get(inoOf(fd));
  if (!d) throw new Error(`no unix_diag record for fd ${fd}`);
  return d;
}

function inetOf(map: Map<number, InetDiag>, fd: number): InetDiag {
  const d = map.get(inoOf(fd));
  if (!d) throw new Error(`no inet_diag record for fd ${fd}`);
  return d;
}

function pair(type: number): [number, number] {
  return track(S.socketpair(S.AF.UNIX, type | S.SOCK.CLOEXEC));
}

function unixSock(type: number): number {
  return track(S.socket(S.AF.UNIX, type | S.SOCK.CLOEXEC));
}

function portOf(fd: number): number {
  const a = S.decodeSockaddr(S.getsockname(fd));
  if (!("port" in a)) throw new Error("not an inet socket");
  return a.port;
}

async function waitFor(what: string, pred: () => boolean): Promise<void> {
  const until = Date.now() + 2000;
  while (!pred()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

describe("declared layouts match the C headers", () => {
  test("offsets and sizes", () => {
    const exe = buildC("sockdiag-layout", `
      #include <stddef.h>
      #include <stdio.h>
      #include <sys/socket.h>
      #include <sys/time.h>
      #include <sys/un.h>
      #include <netinet/in.h>
      #include <linux/netlink.h>
      #include <linux/unix_diag.h>
      #include <linux/inet_diag.h>
      #define P(name, v) printf("%s %zu\\n", name, (size_t)(v))
      int main(void) {
        P("msghdr", sizeof(struct msghdr));
        P("msghdr.namelen", offsetof(struct msghdr, msg_namelen));
        P("msghdr.iov", offsetof(struct msghdr, msg_iov));
        P("msghdr.iovlen", offsetof(struct msghdr, msg_iovlen));
        P("msghdr.control", offsetof(struct msghdr, msg_control));
        P("msghdr.controllen", offsetof(struct msghdr, msg_controllen));
        P("msghdr.flags", offsetof(struct msghdr, msg_flags));
        P("cmsghdr", sizeof(struct cmsghdr));
        P("cmsg_space_4", CMSG_SPACE(4));
        P("cmsg_space_12", CMSG_SPACE(12));
        P("sun_path", offsetof(struct sockaddr_un, sun_path));
        P("sun_path_size", sizeof(((struct sockaddr_un *)0)->sun_path));
        P("sockaddr_in6", sizeof(struct sockaddr_in6));
        P("timeval", sizeof(struct timeval));
        P("nlmsghdr", sizeof(struct nlmsghdr));
        P("nlmsghdr.seq", offsetof(struct nlmsghdr, nlmsg_seq));
        P("unix_diag_req", sizeof(struct unix_diag_req));
        P("unix_diag_req.states", offsetof(struct unix_diag_req, udiag_states));
        P("unix_diag_req.ino", offsetof(struct unix_diag_req, udiag_ino));
        P("unix_diag_req.show", offsetof(struct unix_diag_req, udiag_show));
        P("unix_diag_req.cookie", offsetof(struct unix_diag_req, udiag_cookie));
        P("unix_diag_msg", sizeof(struct unix_diag_msg));
        P("unix_diag_msg.ino", offsetof(struct unix_diag_msg, udiag_ino));
        P("unix_diag_msg.cookie", offsetof(struct unix_diag_msg, udiag_cookie));
        P("inet_diag_sockid", sizeof(struct inet_diag_sockid));
        P("inet_diag_sockid.src", offsetof(struct inet_diag_sockid, idiag_src));
        P("inet_diag_sockid.dst", offsetof(struct inet_diag_sockid, idiag_dst));
        P("inet_diag_sockid.if", offsetof(struct inet_diag_sockid, idiag_if));
        P("inet_diag_sockid.cookie", offsetof(struct inet_diag_sockid, idiag_cookie));
        P("inet_diag_req_v2", sizeof(struct inet_diag_req_v2));
        P("inet_diag_req_v2.states", offsetof(struct inet_diag_req_v2, idiag_states));
        P("inet_diag_req_v2.id", offsetof(struct inet_diag_req_v2, id));
        P("inet_diag_msg", sizeof(struct inet_diag_msg));
        P("inet_diag_msg.id", offsetof(struct inet_diag_msg, id));
        P("inet_diag_msg.expires", offsetof(struct inet_diag_msg, idiag_expires));
        P("inet_diag_msg.rqueue", offsetof(struct inet_diag_msg, idiag_rqueue));
        P("inet_diag_msg.wqueue", offsetof(struct inet_diag_msg, idiag_wqueue));
        P("inet_diag_msg.uid", offsetof(struct inet_diag_msg, idiag_uid));
        P("inet_diag_msg.inode", offsetof(struct inet_diag_msg, idiag_inode));
        return 0;
      }`);
    const out = Bun.spawnSync([exe]).stdout.toString();
    const c = Object.fromEntries(out.trim().split("\n").map((l) => [l.split(" ")[0], Number(l.split(" ")[1])]));
    expect({
      msghdr: S.MSGHDR_SIZE, "msghdr.namelen": S.MSGHDR_OFF.namelen, "msghdr.iov": S.MSGHDR_OFF.iov,
      "msghdr.iovlen": S.MSGHDR_OFF.iovlen, "msghdr.control": S.MSGHDR_OFF.control,
      "msghdr.controllen": S.MSGHDR_OFF.controllen, "msghdr.flags": S.MSGHDR_OFF.flags,
      cmsghdr: S.CMSGHDR_SIZE, cmsg_space_4: S.cmsgSpace(4), cmsg_space_12: S.cmsgSpace(12),
      sun_path: S.SUN_PATH_OFFSET, sun_path_size: S.SUN_PATH_MAX, sockaddr_in6: S.sockaddrIn6("::", 0).length,
      timeval: S.TIMEVAL_SIZE, nlmsghdr: NLMSGHDR_SIZE, "nlmsghdr.seq": NLMSGHDR_OFF.seq,
      unix_diag_req: UNIX_DIAG_REQ_SIZE, "unix_diag_req.states": UNIX_DIAG_REQ_OFF.states,
      "unix_diag_req.ino": UNIX_DIAG_REQ_OFF.ino, "unix_diag_req.show": UNIX_DIAG_REQ_OFF.show,
      "unix_diag_req.cookie": UNIX_DIAG_REQ_OFF.cookie, unix_diag_msg: UNIX_DIAG_MSG_SIZE,
      "unix_diag_msg.ino": UNIX_DIAG_MSG_OFF.ino, "unix_diag_msg.cookie": UNIX_DIAG_MSG_OFF.cookie,
      inet_diag_sockid: INET_DIAG_SOCKID_SIZE, "inet_diag_sockid.src": INET_DIAG_SOCKID_OFF.src,
      "inet_diag_sockid.dst": INET_DIAG_SOCKID_OFF.dst, "inet_diag_sockid.if": INET_DIAG_SOCKID_OFF.if,
      "inet_diag_sockid.cookie": INET_DIAG_SOCKID_OFF.cookie, inet_diag_req_v2: INET_DIAG_REQ_V2_SIZE,
      "inet_diag_req_v2.states": INET_DIAG_REQ_V2_OFF.states, "inet_diag_req_v2.id": INET_DIAG_REQ_V2_OFF.id,
      inet_diag_msg: INET_DIAG_MSG_SIZE, "inet_diag_msg.id": INET_DIAG_MSG_OFF.id,
      "inet_diag_msg.expires": INET_DIAG_MSG_OFF.expires, "inet_diag_msg.rqueue": INET_DIAG_MSG_OFF.rqueue,
      "inet_diag_msg.wqueue": INET_DIAG_MSG_OFF.wqueue, "inet_diag_msg.uid": INET_DIAG_MSG_OFF.uid,
      "inet_diag_msg.inode": INET_DIAG_MSG_OFF.inode,
    }).toEqual(c);
  });
});

describe("address codecs", () => {
  test("IPv6 text follows RFC 5952 and round-trips", () => {
    const cases: [string, string][] = [
      ["::", "::"], ["::1", "::1"], ["0:0:0:0:0:0:0:1", "::1"], ["FE80::1:2", "fe80::1:2"],
      ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
      ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"], ["1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"],
      ["::ffff:1.2.3.4", "::ffff:1.2.3.4"], ["1::", "1::"],
    ];
    for (const [input, text] of cases) {
      const b = S.parseIpv6(input);
      expect(S.formatIpv6(b)).toBe(text);
      expect(S.parseIpv6(text)).toEqual(b);
    }
    expect(() => S.parseIpv6("1::2::3")).toThrow();
    expect(() => S.parseIpv6("1:2:3")).toThrow();
    expect(() => S.parseIpv4("1.2.3.256")).toThrow();
  });

  test("sockaddr_un: a path gets its NUL, an abstract name is exact, empty is autobind", () => {
    expect(S.sockaddrUn("/a")).toEqual(new Uint8Array([1, 0, 0x2f, 0x61, 0]));
    expect(S.sockaddrUn("\0ab")).toEqual(new Uint8Array([1, 0, 0, 0x61, 0x62]));
    expect(S.sockaddrUn("")).toEqual(new Uint8Array([1, 0]));
    expect(() => S.sockaddrUn("x".repeat(108))).toThrow();
  });

  test("sockaddr_in / sockaddr_in6 decode back to what was encoded", () => {
    expect(S.decodeSockaddr(S.sockaddrIn("10.1.2.3", 8080))).toEqual({ family: S.AF.INET, addr: "10.1.2.3", port: 8080 });
    expect(S.decodeSockaddr(S.sockaddrIn6("fe80::1", 443, 2))).toEqual({ family: S.AF.INET6, addr: "fe80::1", port: 443, flowinfo: 0, scopeId: 2 });
  });
});

describe("socket wrappers", () => {
  test("identity options of a listener", () => {
    const l = track(S.socket(S.AF.INET, S.SOCK.STREAM | S.SOCK.CLOEXEC));
    S.setsockoptInt(l, S.SOL.SOCKET, S.SO.REUSEADDR, 1);
    S.bind(l, S.sockaddrIn("127.0.0.1", 0));
    S.listen(l, 4);
    expect(S.getsockoptInt(l, S.SOL.SOCKET, S.SO.TYPE)).toBe(S.SOCK.STREAM);
    expect(S.getsockoptInt(l, S.SOL.SOCKET, S.SO.DOMAIN)).toBe(S.AF.INET);
    expect(S.getsockoptInt(l, S.SOL.SOCKET, S.SO.PROTOCOL)).toBe(S.IPPROTO.TCP);
    expect(S.getsockoptInt(l, S.SOL.SOCKET, S.SO.ACCEPTCONN)).toBe(1);
    expect(S.getsockoptInt(l, S.SOL.SOCKET, S.SO.REUSEADDR)).toBe(1);
    expect(S.getsockoptInt(l, S.SOL.SOCKET, S.SO.REUSEPORT)).toBe(0);
  });

  test("value options round-trip", () => {
    const s = track(S.socket(S.AF.INET, S.SOCK.STREAM | S.SOCK.CLOEXEC));
    // The kernel doubles SO_SNDBUF/SO_RCVBUF for its bookkeeping.
    S.setsockoptInt(s, S.SOL.SOCKET, S.SO.SNDBUF, 65536);
    expect(S.getsockoptInt(s, S.SOL.SOCKET, S.SO.SNDBUF)).toBe(131072);
    // Timeouts are kept in jiffies: a value that is not a whole number of ticks comes back rounded up.
    S.setsockoptTimeval(s, S.SO.RCVTIMEO, { sec: 3, usec: 500000 });
    expect(S.getsockoptTimeval(s, S.SO.RCVTIMEO)).toEqual({ sec: 3, usec: 500000 });
    expect(S.getsockoptTimeval(s, S.SO.SNDTIMEO)).toEqual({ sec: 0, usec: 0 });
    S.setsockoptLinger(s, { onoff: 1, linger: 7 });
    expect(S.getsockoptLinger(s)).toEqual({ onoff: 1, linger: 7 });
    for (const opt of [S.SO.KEEPALIVE, S.SO.BROADCAST]) {
      S.setsockoptInt(s, S.SOL.SOCKET, opt, 1);
      expect(S.getsockoptInt(s, S.SOL.SOCKET, opt)).toBe(1);
    }
    S.setsockoptInt(s, S.SOL.SOCKET, S.SO.PRIORITY, 5);
    expect(S.getsockoptInt(s, S.SOL.SOCKET, S.SO.PRIORITY)).toBe(5);
    S.setsockoptInt(s, S.SOL.SOCKET, S.SO.MARK, 42);
    expect(S.getsockoptInt(s, S.SOL.SOCKET, S.SO.MARK)).toBe(42);
    S.setsockoptInt(s, S.SOL.SOCKET, S.SO.RCVLOWAT, 9);
    expect(S.getsockoptInt(s, S.SOL.SOCKET, S.SO.RCVLOWAT)).toBe(9);
    S.setsockoptInt(s, S.SOL.TCP, S.TCP_OPT.NODELAY, 1);
    expect(S.getsockoptInt(s, S.SOL.TCP, S.TCP_OPT.NODELAY)).toBe(1);
    S.setsockoptInt(s, S.SOL.TCP, S.TCP_OPT.CORK, 1);
    expect(S.getsockoptInt(s, S.SOL.TCP, S.TCP_OPT.CORK)).toBe(1);
    expect(S.getBoundDevice(s)).toBe("");
    S.setsockoptBytes(s, S.SOL.SOCKET, S.SO.BINDTODEVICE, te.encode("lo"));
    expect(S.getBoundDevice(s)).toBe("lo");

    const u = unixSock(S.SOCK.DGRAM);
    expect(S.getsockoptInt(u, S.SOL.SOCKET, S.SO.PASSCRED)).toBe(0);
    S.setsockoptInt(u, S.SOL.SOCKET, S.SO.PASSCRED, 1);
    expect(S.getsockoptInt(u, S.SOL.SOCKET, S.SO.PASSCRED)).toBe(1);
    expect(S.getsockoptInt(u, S.SOL.SOCKET, S.SO.PASSSEC)).toBe(0);
    expect(S.getsockoptInt(u, S.SOL.SOCKET, S.SO.PEEK_OFF)).toBe(-1);

    const v6 = track(S.socket(S.AF.INET6, S.SOCK.STREAM | S.SOCK.CLOEXEC));
    S.setsockoptInt(v6, S.SOL.IPV6, S.IPV6_OPT.V6ONLY, 1);
    expect(S.getsockoptInt(v6, S.SOL.IPV6, S.IPV6_OPT.V6ONLY)).toBe(1);
  });

  test("failures are SysErrors naming the call", () => {
    const file = join(scratch(), "f");
    writeFileSync(file, "");
    const fd = track(openat(AT.FDCWD, file, O.RDONLY | O.CLOEXEC));
    const err = (() => {
      try {
        S.getsockoptInt(fd, S.SOL.SOCKET, S.SO.TYPE);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(SysError);
    expect((err as SysError).call).toBe("getsockopt");
    expect((err as SysError).code).toBe("ENOTSOCK");
    expect((err as SysError).message).toContain("SO_TYPE");
    expect(() => S.connect(unixSock(S.SOCK.STREAM), S.sockaddrUn(join(scratch(), "none")))).toThrow(/connect\(.*ENOENT/);
  });

  test("getsockname / getpeername return the raw addresses", () => {
    const dir = scratch();
    const path = join(dir, "named");
    const l = unixSock(S.SOCK.STREAM);
    S.bind(l, S.sockaddrUn(path));
    S.listen(l, 1);
    const c = unixSock(S.SOCK.STREAM);
    S.connect(c, S.sockaddrUn(path));
    // A path name comes back with its terminating NUL.
    expect(S.getsockname(l)).toEqual(S.sockaddrUn(path));
    expect(S.getpeername(c)).toEqual(S.sockaddrUn(path));
    expect(S.decodeSockaddr(S.getpeername(c))).toMatchObject({ family: S.AF.UNIX, name: path, abstract: false });
    expect(S.getsockname(c)).toEqual(new Uint8Array([1, 0]));
  });
});

describe("AF_UNIX sock_diag", () => {
  test("socketpairs: type, state and both ends paired by inode", () => {
    const [a, b] = pair(S.SOCK.STREAM);
    const [c, d] = pair(S.SOCK.DGRAM);
    const [e, f] = pair(S.SOCK.SEQPACKET);
    const map = unixSockets();
    for (const [x, y, type] of [[a, b, S.SOCK.STREAM], [c, d, S.SOCK.DGRAM], [e, f, S.SOCK.SEQPACKET]] as const) {
      const dx = unixOf(map, x);
      const dy = unixOf(map, y);
      expect(dx).toMatchObject({ type, state: S.TCP_STATE.ESTABLISHED, peer: inoOf(y), name: null, nameBytes: null, vfs: null, icons: null, shutdown: 0, rqlen: 0 });
      expect(dy).toMatchObject({ type, state: S.TCP_STATE.ESTABLISHED, peer: inoOf(x) });
      expect(dx.uid).toBe(process.getuid!());
      expect(dx.cookie).not.toBe(dy.cookie);
    }
  });

  test("rqlen counts unread bytes for streams, the head datagram for dgram", () => {
    const [a, b] = pair(S.SOCK.STREAM);
    const [c, d] = pair(S.SOCK.DGRAM);
    const [e, f] = pair(S.SOCK.SEQPACKET);
    for (const w of [a, c, e]) {
      S.sendto(w, te.encode("hello"));
      S.sendto(w, te.encode("world!"));
    }
    const map = unixSockets();
    expect(unixOf(map, b).rqlen).toBe(11);
    expect(unixOf(map, d).rqlen).toBe(5);
    expect(unixOf(map, f).rqlen).toBe(11);
    // The writer is charged for the buffers until the reader takes them.
    expect(unixOf(map, a).wqlen).toBeGreaterThan(11);
    expect(unixOf(map, b).wqlen).toBe(0);
    const buf = new Uint8Array(64);
    S.recvfrom(b, buf);
    S.recvfrom(d, buf);
    const after = unixSockets();
    expect(unixOf(after, b).rqlen).toBe(0);
    expect(unixOf(after, d).rqlen).toBe(6);
    expect(unixOf(after, a).wqlen).toBe(0);
  });

  test("shutdown bits, mirrored onto the peer of a stream only", () => {
    const [a, b] = pair(S.SOCK.STREAM);
    const [c, d] = pair(S.SOCK.DGRAM);
    const [e, f] = pair(S.SOCK.SEQPACKET);
    S.shutdown(a, S.SHUT.WR);
    S.shutdown(c, S.SHUT.RD);
    S.shutdown(e, S.SHUT.RDWR);
    const map = unixSockets();
    expect(unixOf(map, a).shutdown).toBe(S.SHUTDOWN.SEND);
    expect(unixOf(map, b).shutdown).toBe(S.SHUTDOWN.RCV);
    expect(unixOf(map, c).shutdown).toBe(S.SHUTDOWN.RCV);
    expect(unixOf(map, d).shutdown).toBe(0);
    expect(unixOf(map, e).shutdown).toBe(S.SHUTDOWN.RCV | S.SHUTDOWN.SEND);
    expect(unixOf(map, f).shutdown).toBe(S.SHUTDOWN.RCV | S.SHUTDOWN.SEND);
  });

  test("a path listener: name, vfs inode, backlog, and icons of an unaccepted connection", () => {
    const path = join(scratch(), "listener");
    const l = unixSock(S.SOCK.STREAM);
    S.bind(l, S.sockaddrUn(path));
    S.listen(l, 5);
    const c = unixSock(S.SOCK.STREAM);
    S.connect(c, S.sockaddrUn(path));

    const st = fstatPath(path);
    let map = unixSockets();
    const dl = unixOf(map, l);
    expect(dl.state).toBe(S.TCP_STATE.LISTEN);
    expect(dl.name).toBe(path);
    expect(dl.abstract).toBe(false);
    expect(dl.nameBytes).toEqual(new Uint8Array([...te.encode(path), 0]));
    expect(dl.vfs).toEqual({ ino: st.ino, dev: encodeKernelDev(st.devMajor, st.devMinor) });
    expect(dl.rqlen).toBe(1);
    expect(dl.wqlen).toBe(5);
    // icons names the connecting socket, not the embryo accept() will return.
    expect(dl.icons).toEqual([inoOf(c)]);
    // The client's peer is that embryo, which has no inode yet.
    expect(unixOf(map, c)).toMatchObject({ state: S.TCP_STATE.ESTABLISHED, peer: 0 });

    const s = track(S.accept4(l));
    map = unixSockets();
    expect(unixOf(map, l)).toMatchObject({ rqlen: 0, icons: [] });
    expect(unixOf(map, s)).toMatchObject({ state: S.TCP_STATE.ESTABLISHED, peer: inoOf(c), type: S.SOCK.STREAM });
    expect(unixOf(map, c).peer).toBe(inoOf(s));
    // An accepted socket shares the listener's name and even its bound file.
    expect(unixOf(map, s).name).toBe(path);
    expect(unixOf(map, s).vfs).toEqual(dl.vfs);
    expect(unixOf(map, c).vfs).toBeNull();
  });

  test("abstract and autobound names; a connected datagram socket names its target", () => {
    const name = `\0ckpt-sockdiag-${process.pid}-${Math.random().toString(36).slice(2)}`;
    const server = unixSock(S.SOCK.DGRAM);
    S.bind(server, S.sockaddrUn(name));
    const auto = unixSock(S.SOCK.DGRAM);
    S.bind(auto, S.sockaddrUn(""));
    const lonely = unixSock(S.SOCK.DGRAM);
    const client = unixSock(S.SOCK.DGRAM);
    S.connect(client, S.sockaddrUn(name));
    S.sendto(client, te.encode("ping"));

    const map = unixSockets();
    const ds = unixOf(map, server);
    expect(ds.name).toBe(name);
    expect(ds.abstract).toBe(true);
    expect(ds.nameBytes).toEqual(te.encode(name));
    expect(ds.vfs).toBeNull();
    expect(ds.peer).toBeNull();
    expect(ds.rqlen).toBe(4);
    // connect() on a datagram socket marks the target ESTABLISHED too.
    expect(ds.state).toBe(S.TCP_STATE.ESTABLISHED);
    expect(unixOf(map, client)).toMatchObject({ peer: inoOf(server), state: S.TCP_STATE.ESTABLISHED, name: null });
    const da = unixOf(map, auto);
    expect(da.abstract).toBe(true);
    expect(da.name).toMatch(/^\0[0-9a-f]{5}$/);
    expect(da.state).toBe(S.TCP_STATE.CLOSE);
    expect(unixOf(map, lonely)).toMatchObject({ state: S.TCP_STATE.CLOSE, name: null, peer: null });
  });

  test("state mask filters the dump; a single-inode request matches the dump", () => {
    const path = join(scratch(), "l");
    const l = unixSock(S.SOCK.STREAM);
    S.bind(l, S.sockaddrUn(path));
    S.listen(l, 3);
    const [a] = pair(S.SOCK.STREAM);
    const listeners = unixSockets(stateMask(S.TCP_STATE.LISTEN));
    expect(listeners.has(inoOf(l))).toBe(true);
    expect(listeners.has(inoOf(a))).toBe(false);
    for (const d of listeners.values()) expect(d.state).toBe(S.TCP_STATE.LISTEN);

    const all = unixSockets(ALL_STATES);
    expect(unixSocket(inoOf(l))).toEqual(all.get(inoOf(l))!);
    expect(unixSocket(inoOf(a))).toEqual(all.get(inoOf(a))!);
    expect(unixSocket(0xfffffffe)).toBeUndefined();
  });

  test("a node:net unix listener", async () => {
    const path = join(scratch(), "node.sock");
    const srv = net.createServer(() => {});
    await new Promise<void>((r) => srv.listen(path, () => r()));
    try {
      const found = [...unixSockets().values()].filter((d) => d.name === path);
      expect(found.length).toBe(1);
      const d = found[0]!;
      expect(d.state).toBe(S.TCP_STATE.LISTEN);
      expect(d.vfs?.ino).toBe(statSync(path).ino);
      expect(d.wqlen).toBeGreaterThan(0);
      expect(mySocketInodes().has(d.ino)).toBe(true);
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });

  test("sockets of another process, found through /proc/PID/fd", async () => {
    const exe = buildC("sockdiag-peer", `
      #include <stdio.h>
      #include <unistd.h>
      #include <sys/socket.h>
      int main(void) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0) return 1;
        dup2(sv[0], 10); dup2(sv[1], 11); close(sv[0]); close(sv[1]);
        write(10, "abc", 3); write(10, "de", 2);
        shutdown(11, SHUT_RD);
        printf("ready\\n"); fflush(stdout);
        for (;;) pause();
      }`);
    const { target } = await startReady([exe]);
    targets.push(target);
    const i10 = inoOf(10, target.pid);
    const i11 = inoOf(11, target.pid);
    const table = new SocketTable();
    const d10 = table.unix(i10)!;
    const d11 = table.unix(i11)!;
    expect(d10).toMatchObject({ type: S.SOCK.SEQPACKET, peer: i11, shutdown: S.SHUTDOWN.SEND });
    expect(d11).toMatchObject({ type: S.SOCK.SEQPACKET, peer: i10, shutdown: S.SHUTDOWN.RCV, rqlen: 5 });
    target.kill();
  });
});

/** stat of a path through statx (ino as a number, device numbers split). */
function fstatPath(path: string): { ino: number; devMajor: number; devMinor: number } {
  const fd = openat(AT.FDCWD, path, O.PATH | O.CLOEXEC);
  try {
    const st = fstat(fd);
    return { ino: Number(st.ino), devMajor: st.devMajor, devMinor: st.devMinor };
  } finally {
    close(fd);
  }
}

describe("peeking at queued data", () => {
  const buf = new Uint8Array(64);
  const text = (r: S.Received | null): string | null => (r ? td.decode(buf.subarray(0, Math.min(r.bytes, buf.length))) : null);

  test("nothing queued: null, not an error", () => {
    const [, b] = pair(S.SOCK.STREAM);
    expect(S.recvPeek(b, buf)).toBeNull();
  });

  test("stream: MSG_PEEK sees everything queued and takes nothing; SO_PEEK_OFF steps through", () => {
    const [a, b] = pair(S.SOCK.STREAM);
    S.sendto(a, te.encode("hello"));
    S.sendto(a, te.encode("world!"));
    // One peek runs across the two writes.
    expect(text(S.recvPeek(b, buf))).toBe("helloworld!");
    expect(text(S.recvPeek(b, buf))).toBe("helloworld!");
    expect(unixSocket(inoOf(b))?.rqlen).toBe(11);

    S.setsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF, 0);
    expect(text(S.recvPeek(b, buf.subarray(0, 3)))).toBe("hel");
    expect(S.getsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF)).toBe(3);
    expect(text(S.recvPeek(b, buf.subarray(0, 3)))).toBe("low");
    expect(text(S.recvPeek(b, buf))).toBe("orld!");
    expect(S.getsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF)).toBe(11);
    // At the end of the queue a peek finds nothing.
    expect(S.recvPeek(b, buf)).toBeNull();

    // A real read moves the offset back by what it consumed.
    S.setsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF, 3);
    expect(S.recvfrom(b, buf, 0, 2)).toBe(2);
    expect(S.getsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF)).toBe(1);
    expect(text(S.recvPeek(b, buf))).toBe("loworld!");

    S.setsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF, -1);
    expect(S.getsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF)).toBe(-1);
    expect(text(S.recvPeek(b, buf))).toBe("lloworld!");
    expect(text(S.recvPeek(b, buf))).toBe("lloworld!");
  });

  test("datagram: a peek returns one datagram; SO_PEEK_OFF is a byte offset across them", () => {
    const [a, b] = pair(S.SOCK.DGRAM);
    S.sendto(a, te.encode("hello"));
    S.sendto(a, te.encode("world!"));
    expect(text(S.recvPeek(b, buf))).toBe("hello");
    const short = S.recvPeek(b, buf.subarray(0, 2), undefined, S.MSG.TRUNC)!;
    expect(short.bytes).toBe(5);
    expect(short.flags & S.MSG.TRUNC).toBe(S.MSG.TRUNC);

    S.setsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF, 0);
    const r = S.recvPeek(b, buf.subarray(0, 3))!;
    expect(text(r)).toBe("hel");
    expect(r.flags & S.MSG.TRUNC).toBe(S.MSG.TRUNC);
    // The next peek continues inside the same datagram, and stops at its end.
    expect(text(S.recvPeek(b, buf))).toBe("lo");
    expect(text(S.recvPeek(b, buf))).toBe("world!");
    expect(S.getsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF)).toBe(11);
    expect(S.recvPeek(b, buf)).toBeNull();
    S.setsockoptInt(b, S.SOL.SOCKET, S.SO.PEEK_OFF, -1);
    expect(text(S.recvPeek(b, buf))).toBe("hello");
    expect(unixSocket(inoOf(b))?.rqlen).toBe(5);
  });

  test("SCM_RIGHTS and SCM_CREDENTIALS show up in the peeked control bytes", () => {
    const [a, b] = pair(S.SOCK.STREAM);
    const file = join(scratch(), "passed");
    writeFileSync(file, "x");
    const passed = track(openat(AT.FDCWD, file, O.RDONLY | O.CLOEXEC));
    S.setsockoptInt(b, S.SOL.SOCKET, S.SO.PASSCRED, 1);
    S.sendmsg(a, te.encode("fd!"), { control: [S.rightsCmsg([passed])] });

    // Without room for control messages the kernel drops the files and says so.
    const bare = S.recvPeek(b, buf)!;
    expect(bare.bytes).toBe(3);
    expect(bare.flags & S.MSG.CTRUNC).toBe(S.MSG.CTRUNC);
    expect(bare.control.length).toBe(0);

    const control = new Uint8Array(S.cmsgSpace(12) + S.cmsgSpace(4 * 4));
    const r = S.recvPeek(b, buf, control)!;
    expect(r.bytes).toBe(3);
    expect(r.flags & S.MSG.CTRUNC).toBe(0);
    const msgs = S.decodeCmsgs(r.control);
    expect(msgs.map((m) => [m.level, m.type]).sort()).toEqual([[S.SOL.SOCKET, S.SCM.RIGHTS], [S.SOL.SOCKET, S.SCM.CREDENTIALS]].sort());
    expect(S.cmsgCredentials(msgs)).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    // Even a peek installs the passed file in this process.
    const got = track(S.cmsgFds(msgs));
    expect(got.length).toBe(1);
    expect(fstat(got[0]!).ino).toBe(fstat(passed).ino);
    // And the message is still queued.
    expect(unixSocket(inoOf(b))?.rqlen).toBe(3);
  });
});

describe("TCP sock_diag", () => {
  test("an IPv4 listener, a pending connection, and both ends once accepted", async () => {
    const l = track(S.socket(S.AF.INET, S.SOCK.STREAM | S.SOCK.CLOEXEC));
    S.bind(l, S.sockaddrIn("127.0.0.1", 0));
    S.listen(l, 7);
    const port = portOf(l);
    let map = inetSockets(S.AF.INET, S.IPPROTO.TCP);
    const dl = inetOf(map, l);
    expect(dl).toMatchObject({ family: S.AF.INET, protocol: S.IPPROTO.TCP, state: S.TCP_STATE.LISTEN, src: "127.0.0.1", srcPort: port, dst: "0.0.0.0", dstPort: 0, rqueue: 0, wqueue: 7, v6only: null, shutdown: 0 });
    expect(dl.srcWords).toEqual([0x0100007f, 0, 0, 0]);
    expect(dl.uid).toBe(process.getuid!());

    const c = track(S.socket(S.AF.INET, S.SOCK.STREAM | S.SOCK.CLOEXEC));
    S.connect(c, S.sockaddrIn("127.0.0.1", port));
    await waitFor("the handshake", () => inetOf(inetSockets(S.AF.INET), l).rqueue === 1);
    map = inetSockets(S.AF.INET);
    expect(inetOf(map, c)).toMatchObject({ state: S.TCP_STATE.ESTABLISHED, dst: "127.0.0.1", dstPort: port, srcPort: portOf(c) });

    const s = track(S.accept4(l));
    S.sendto(c, te.encode("queued"));
    await waitFor("the data", () => inetOf(inetSockets(S.AF.INET), s).rqueue === 6);
    map = inetSockets(S.AF.INET);
    expect(inetOf(map, l).rqueue).toBe(0);
    expect(inetOf(map, s)).toMatchObject({ srcPort: port, dstPort: portOf(c), dstWords: [0x0100007f, 0, 0, 0], rqueue: 6, state: S.TCP_STATE.ESTABLISHED, shutdown: 0 });

    // rqueue is a sequence-number distance: the peer's FIN counts as one more.
    S.shutdown(c, S.SHUT.WR);
    await waitFor("the FIN and its ACK", () => {
      const m = inetSockets(S.AF.INET);
      return inetOf(m, s).state === S.TCP_STATE.CLOSE_WAIT && inetOf(m, c).state === S.TCP_STATE.FIN_WAIT2;
    });
    map = inetSockets(S.AF.INET);
    expect(inetOf(map, s)).toMatchObject({ rqueue: 7, shutdown: S.SHUTDOWN.RCV });
    expect(inetOf(map, c)).toMatchObject({ state: S.TCP_STATE.FIN_WAIT2, shutdown: S.SHUTDOWN.SEND });

    // A state mask picks listeners only.
    const listeners = inetSockets(S.AF.INET, S.IPPROTO.TCP, stateMask(S.TCP_STATE.LISTEN));
    expect(listeners.has(inoOf(l))).toBe(true);
    expect(listeners.has(inoOf(s))).toBe(false);
  });

  test("IPv6 listeners report V6ONLY; a dual-stack one is not in the IPv4 table", () => {
    const only = track(S.socket(S.AF.INET6, S.SOCK.STREAM | S.SOCK.CLOEXEC));
    S.setsockoptInt(only, S.SOL.IPV6, S.IPV6_OPT.V6ONLY, 1);
    S.bind(only, S.sockaddrIn6("::1", 0));
    S.listen(only, 3);
    const dual = track(S.socket(S.AF.INET6, S.SOCK.STREAM | S.SOCK.CLOEXEC));
    S.setsockoptInt(dual, S.SOL.IPV6, S.IPV6_OPT.V6ONLY, 0);
    S.bind(dual, S.sockaddrIn6("::", 0));
    S.listen(dual, 2);
    const v6 = inetSockets(S.AF.INET6);
    expect(inetOf(v6, only)).toMatchObject({ family: S.AF.INET6, state: S.TCP_STATE.LISTEN, src: "::1", srcPort: portOf(only), srcWords: [0, 0, 0, 0x01000000], v6only: true, wqueue: 3 });
    expect(inetOf(v6, dual)).toMatchObject({ src: "::", srcPort: portOf(dual), v6only: false, wqueue: 2 });
    expect(inetSockets(S.AF.INET).has(inoOf(dual))).toBe(false);

    const table = new SocketTable();
    expect(table.find(inoOf(only))).toMatchObject({ kind: "tcp", diag: { family: S.AF.INET6 } });
    expect(table.find(inoOf(only), S.AF.INET)).toBeUndefined();
    expect(table.tcp(S.AF.INET6, inoOf(dual))?.v6only).toBe(false);
  });

  test("a node:net TCP listener", async () => {
    const srv = net.createServer(() => {});
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
    try {
      const port = (srv.address() as net.AddressInfo).port;
      const found = [...inetSockets(S.AF.INET).values()].filter((d) => d.srcPort === port);
      expect(found.length).toBe(1);
      expect(found[0]).toMatchObject({ state: S.TCP_STATE.LISTEN, src: "127.0.0.1", rqueue: 0 });
      expect(found[0]!.wqueue).toBeGreaterThan(0);
      expect(mySocketInodes().has(found[0]!.ino)).toBe(true);
      expect(new SocketTable().find(found[0]!.ino)).toMatchObject({ kind: "tcp" });
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });
});

describe("cleanup", () => {
  test("every socket the tests opened is closed again", () => {
    const left = [...mySocketInodes()].filter((i) => !socketsAtStart.has(i));
    expect(left).toEqual([]);
  });
});
