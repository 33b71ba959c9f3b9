/**
 * The network lock of --tcp-established, and the process that holds it.
 *
 * While an established connection is saved (dump) and made again (restore),
 * no packet of it may reach either end: a segment that finds no socket is
 * answered with a reset, and one that finds the dumped socket is taken (and
 * acknowledged) by a socket about to disappear. CRIU drops them with
 * iptables or nftables rules; ckpt does the same with an nftables owner
 * table (sys/nftables.ts), made over netlink.
 *
 * An owner table lives as long as its netlink socket, so the lock is held by
 * a small process of its own, the holder (ckpt re-executed in a hidden mode,
 * comm "ckpt-tcp-lock"), started before the tree is frozen. ckpt hands it,
 * by number, the table's socket and each socket it puts in repair mode; the
 * holder takes them with pidfd_getfd and acknowledges. Then:
 *  - the dump completes and the tree is killed: ckpt says "commit"; the
 *    holder keeps the lock until the restore ends it (SIGKILL, found through
 *    tcp-lock.json in the image set) or its timeout passes;
 *  - the dump fails, is interrupted, or ckpt is killed: the holder reads the
 *    end of its pipe, turns repair mode off on every socket it holds, so the
 *    connections carry on in the tree that runs again, and exits — which
 *    removes the table.
 */
import { pidfdGetfd, pidfdOpen, pipe2 } from "../sys/calls";
import { Errno, SysError } from "../sys/errno";
import { readWholeFile } from "../sys/file";
import { addressOf, close, readInto, syscall, writeAll } from "../sys/libc";
import { O, SYS } from "../sys/nr";
import { IPPROTO, setsockoptInt, TCP_OPT } from "../sys/socket";
import { NftDropTable, type Flow } from "../sys/nftables";
import { readStat } from "../proc/stat";
import type { ProcFs } from "../proc/procfs";
import { LiveHelper, type HelperId } from "../proc/helper-process";

export const TCP_LOCK_COMM = "ckpt-tcp-lock";
/** argv[0] of the hidden mode: the holder. */
export const TCP_LOCK_FLAG = "--internal-tcp-lock-holder";
/** The image set's record of the holder, for the restore to end it. */
export const TCP_LOCK_RECORD = "tcp-lock.json";
/** How long a committed lock waits for its restore by default. */
export const TCP_LOCK_TIMEOUT_SECONDS = 600;
const PR_SET_NAME = 15;

/** The holder, as the image set records it (a reused pid is someone else: another start time). */
export type TcpLockRecord = HelperId;

/** The command that runs this same ckpt, compiled or from source. */
function selfCommand(): string[] {
  if (Bun.main.startsWith("/$bunfs/")) return [process.execPath];
  return [process.execPath, Bun.main];
}

/** Turn repair mode off (the connection carries on as before); false if the socket refused. */
export function repairOff(fd: number): boolean {
  try {
    setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR, 0);
    return true;
  } catch {
    return false;
  }
}

/** ckpt's side of a lock held by a holder process. */
export class TcpLock {
  private table: NftDropTable | null = null;
  private readonly sockets: number[] = [];
  private readonly line = new Uint8Array(64);

  private constructor(public holder: TcpLockRecord, private cmd: number, private ack: number, private readonly tableName: string) {}

  /** Start the holder (before the freeze: it is a process start). */
  static async start(proc: ProcFs, timeoutSeconds = TCP_LOCK_TIMEOUT_SECONDS): Promise<TcpLock> {
    const [cmdRead, cmdWrite] = pipe2(O.CLOEXEC);
    const [ackRead, ackWrite] = pipe2(O.CLOEXEC);
    let pid = 0;
    try {
      const child = Bun.spawn([...selfCommand(), TCP_LOCK_FLAG, String(process.pid), String(timeoutSeconds)], {
        stdio: ["ignore", "ignore", "ignore", cmdRead, ackWrite], detached: true,
      });
      child.unref();
      pid = child.pid;
    } finally {
      close(cmdRead);
      close(ackWrite);
    }
    const lock = new TcpLock({ pid, startTime: "0" }, cmdWrite, ackRead, `ckpt-${process.pid}`);
    try {
      lock.await("ready");
      lock.holder = { pid, startTime: readStat(proc, pid).startTime.toString() };
      return lock;
    } catch (e) {
      lock.abandon();
      throw e;
    }
  }

  private send(msg: string): void {
    writeAll(this.cmd, new TextEncoder().encode(`${msg}\n`));
  }

  private await(what: string): void {
    let got = "";
    while (!got.endsWith("\n")) {
      const n = readInto(this.ack, this.line);
      if (n <= 0) throw new Error(`the network lock's holder (${TCP_LOCK_COMM} ${this.holder.pid}) went away (waiting for "${what}")`);
      got += new TextDecoder().decode(this.line.subarray(0, n));
    }
    if (got.trim() !== what) throw new Error(`the network lock's holder answered ${JSON.stringify(got.trim())} to "${what}"`);
  }

  /** Hand ckpt's fd `fd` to the holder as a `kind` ("table" or "socket"), and wait until it holds it. */
  private handOver(kind: "table" | "socket", fd: number): void {
    this.send(`${kind} ${fd}`);
    this.await(`took ${fd}`);
  }

  /** Drop every packet of `flows` from now on. */
  lock(flows: readonly Flow[]): void {
    if (!this.table) {
      this.table = NftDropTable.create(this.tableName);
      this.handOver("table", this.table.fd);
    }
    this.table.add(flows);
  }

  /** Whether any connection is locked (else there is nothing to hold past the dump). */
  get active(): boolean {
    return this.table !== null;
  }

  /** A socket about to enter repair mode: the holder turns it off again if the dump does not complete. */
  hold(fd: number): void {
    this.handOver("socket", fd);
    this.sockets.push(fd);
  }

  /** The images are whole and the tree goes: the holder keeps the lock until the restore (or its timeout). */
  commit(): void {
    this.send("commit");
    this.await("committed");
    this.closePipes();
  }

  /**
   * The connections go on here (dump -R, or a failed dump): repair mode off
   * on every socket, and the holder ends, which removes the table.
   */
  release(): void {
    for (const fd of this.sockets) repairOff(fd);
    this.abandon();
  }

  private abandon(): void {
    this.closePipes();
    this.table?.close();
    this.table = null;
    for (const fd of this.sockets.splice(0)) close(fd);
  }

  private closePipes(): void {
    if (this.cmd >= 0) close(this.cmd);
    if (this.ack >= 0) close(this.ack);
    this.cmd = -1;
    this.ack = -1;
  }

  /** After commit: ckpt's own copies go (the holder has its own). */
  close(): void {
    this.table?.close();
    this.table = null;
    for (const fd of this.sockets.splice(0)) close(fd);
  }
}

/** End the holder `r` if it still runs (a restore on the dump's host): the dump's lock goes with it. */
export function endTcpLockHolder(proc: ProcFs, r: TcpLockRecord): boolean {
  const live = LiveHelper.find(proc, r, TCP_LOCK_COMM);
  live?.end();
  return live !== null;
}

/** The holder record an image set carries; null without one. */
export function readTcpLockRecord(dir: string): TcpLockRecord | null {
  let text: string;
  try {
    text = new TextDecoder().decode(readWholeFile(`${dir}/${TCP_LOCK_RECORD}`));
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ENOENT) return null;
    throw e;
  }
  const r = JSON.parse(text) as Partial<TcpLockRecord>;
  if (typeof r.pid !== "number" || typeof r.startTime !== "string") throw new Error(`${dir}/${TCP_LOCK_RECORD} is malformed`);
  return { pid: r.pid, startTime: r.startTime };
}

/**
 * The holder itself (the hidden mode): take what ckpt hands over, then hold
 * the lock after a commit, or give everything back on the end of the pipe.
 */
export async function runTcpLockHolderIfAsked(argv: readonly string[]): Promise<boolean> {
  if (argv[0] !== TCP_LOCK_FLAG) return false;
  const ckptPid = Number(argv[1]);
  const timeoutSeconds = Number(argv[2]);
  const name = new TextEncoder().encode(`${TCP_LOCK_COMM}\0`);
  syscall("prctl", SYS.prctl, [PR_SET_NAME, addressOf(name)], ["PR_SET_NAME", TCP_LOCK_COMM]);
  const [cmd, ack] = [3, 4];
  const reply = (s: string): void => writeAll(ack, new TextEncoder().encode(`${s}\n`));
  const pidfd = pidfdOpen(ckptPid);
  const sockets: number[] = [];
  const held: number[] = [];
  reply("ready");
  const buf = new Uint8Array(256);
  let pending = "";
  for (;;) {
    let n: number;
    try {
      n = readInto(cmd, buf);
    } catch {
      n = 0;
    }
    if (n <= 0) {
      // ckpt ended without a commit: the connections go on in the tree.
      for (const fd of sockets) repairOff(fd);
      process.exit(0);
    }
    pending += new TextDecoder().decode(buf.subarray(0, n));
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const [verb, arg] = pending.slice(0, nl).split(" ");
      pending = pending.slice(nl + 1);
      if (verb === "commit") {
        // The dumped sockets must go with the tree (closed in repair mode: silently), so
        // that the restore can make the same connection: only the table stays held.
        for (const fd of sockets) close(fd);
        reply("committed");
        close(cmd);
        close(ack);
        close(pidfd);
        // The lock is what this process holds; it goes with it.
        await Bun.sleep(timeoutSeconds * 1000);
        process.exit(0);
      }
      const fd = pidfdGetfd(pidfd, Number(arg));
      (verb === "socket" ? sockets : held).push(fd);
      reply(`took ${arg}`);
    }
  }
}
