/**
 * One TCP connection of a migration, over blocking sockets: the page server
 * and the dump each do one thing at a time, so a blocking call is the whole
 * event loop. Sends never raise SIGPIPE (MSG_NOSIGNAL): a peer that went away
 * is an EPIPE error naming the call.
 */
import { Errno, SysError } from "../sys/errno";
import { close } from "../sys/libc";
import {
  AF, IPPROTO, MSG, SO, SOCK, SOL, TCP_OPT,
  accept4, bind, connect, decodeSockaddr, getpeername, getsockname, listen, parseIpv4, parseIpv6, recvfrom, sendto, setsockoptInt, socket, sockaddrIn, sockaddrIn6,
} from "../sys/socket";

/** A peer closed the connection, or it broke, in the middle of a message. */
export class ConnectionLost extends Error {
  override readonly name = "ConnectionLost";
}

export interface Endpoint {
  address: string;
  port: number;
}

/** A sockaddr for an IPv4 or IPv6 literal (host names are not looked up: say the address). */
export function endpointSockaddr(e: Endpoint): Uint8Array {
  if (!Number.isInteger(e.port) || e.port < 0 || e.port > 65535) throw new Error(`port ${e.port} is not a TCP port (0-65535)`);
  try {
    parseIpv4(e.address);
    return sockaddrIn(e.address, e.port);
  } catch {
    // Not IPv4; try IPv6.
  }
  try {
    parseIpv6(e.address);
    return sockaddrIn6(e.address, e.port);
  } catch {
    throw new Error(`address ${JSON.stringify(e.address)} is not an IPv4 or IPv6 address (give the address, not a host name)`);
  }
}

function familyOf(addr: Uint8Array): number {
  return new DataView(addr.buffer, addr.byteOffset).getUint16(0, true);
}

function describe(addr: Uint8Array): string {
  const s = decodeSockaddr(addr);
  if (s.family === AF.INET6 && "addr" in s) return `[${s.addr}]:${s.port}`;
  if (s.family === AF.INET && "addr" in s) return `${s.addr}:${s.port}`;
  return `a socket of family ${s.family}`;
}

/** A listening socket; accept() takes the one connection a page server serves. */
export class Listener {
  private constructor(readonly fd: number, readonly local: string, readonly port: number) {}

  static open(e: Endpoint): Listener {
    const addr = endpointSockaddr(e);
    const fd = socket(familyOf(addr), SOCK.STREAM | SOCK.CLOEXEC, IPPROTO.TCP);
    try {
      // A server restarted for the next round must not wait out the last one's TIME_WAIT.
      setsockoptInt(fd, SOL.SOCKET, SO.REUSEADDR, 1);
      bind(fd, addr);
      listen(fd, 1);
      const local = decodeSockaddr(getsockname(fd));
      const port = "port" in local ? local.port : e.port;
      return new Listener(fd, describe(getsockname(fd)), port);
    } catch (err) {
      close(fd);
      throw err;
    }
  }

  accept(): Connection {
    for (;;) {
      try {
        const fd = accept4(this.fd, SOCK.CLOEXEC);
        return new Connection(fd, describe(getpeername(fd)));
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.EINTR) continue;
        throw e;
      }
    }
  }

  close(): void {
    close(this.fd);
  }
}

export class Connection {
  /** Bytes sent and received, for the summary. */
  sent = 0;
  received = 0;
  private closed = false;

  constructor(readonly fd: number, readonly peer: string) {}

  /**
   * Connect to `e`. `retryMs`: for that long, a peer that refuses (nothing
   * listens there yet: a destination started ahead of its source) is tried
   * again every 5 ms.
   */
  static connect(e: Endpoint, retryMs = 0): Connection {
    const addr = endpointSockaddr(e);
    const deadline = performance.now() + retryMs;
    for (;;) {
      const fd = socket(familyOf(addr), SOCK.STREAM | SOCK.CLOEXEC, IPPROTO.TCP);
      try {
        connect(fd, addr);
        return new Connection(fd, describe(addr));
      } catch (err) {
        close(fd);
        if (err instanceof SysError && err.errno === Errno.ECONNREFUSED && performance.now() < deadline) {
          Bun.sleepSync(5);
          continue;
        }
        throw new Error(`cannot reach the page server at ${describe(addr)}${retryMs > 0 ? ` (tried for ${(retryMs / 1000).toFixed(1)} s)` : ""}: ${(err as Error).message}`, { cause: err });
      }
    }
  }

  /** TCP_NODELAY: small answers (has_parent, status) go out at once. */
  noDelay(on: boolean): void {
    setsockoptInt(this.fd, SOL.TCP, TCP_OPT.NODELAY, on ? 1 : 0);
  }

  /** TCP_CORK: headers and pages leave in full segments; uncorking flushes. */
  cork(on: boolean): void {
    setsockoptInt(this.fd, SOL.TCP, TCP_OPT.CORK, on ? 1 : 0);
  }

  sendAll(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) {
      try {
        off += sendto(this.fd, off === 0 ? bytes : bytes.subarray(off), MSG.NOSIGNAL);
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.EINTR) continue;
        throw new ConnectionLost(`sending to ${this.peer}: ${(e as Error).message}`, { cause: e });
      }
    }
    this.sent += bytes.length;
  }

  /**
   * Fill `buf` (or its first `len` bytes). Returns false when the peer closed
   * cleanly before the first byte and `endOk`; a close or error anywhere else
   * is a ConnectionLost.
   */
  recvExact(buf: Uint8Array, len = buf.length, endOk = false): boolean {
    let off = 0;
    while (off < len) {
      let n: number;
      try {
        n = recvfrom(this.fd, off === 0 ? buf : buf.subarray(off), MSG.WAITALL, len - off);
      } catch (e) {
        if (e instanceof SysError && e.errno === Errno.EINTR) continue;
        throw new ConnectionLost(`receiving from ${this.peer}: ${(e as Error).message}`, { cause: e });
      }
      if (n === 0) {
        if (off === 0 && endOk) return false;
        throw new ConnectionLost(`${this.peer} closed the connection ${off === 0 ? "before" : `${off} bytes into`} a ${len}-byte message`);
      }
      off += n;
    }
    this.received += len;
    return true;
  }

  /** Wait for the peer to close (so the TIME_WAIT stays on its side); false if it sent more instead. */
  awaitClose(): boolean {
    const one = new Uint8Array(1);
    return !this.recvExact(one, 1, true);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    close(this.fd);
  }
}
