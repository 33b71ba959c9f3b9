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
 * holder takes them with pidfd_getfd and acknowledges. The tree runs with
 * its sockets out of repair mode at every moment it can run (dump/files/
 * tcp-stream.ts turns it on only for the read). Then:
 *  - the images are whole: ckpt says "commit" with the tree's pids, kills the
 *    tree (at once, or once a lazy dump's pages have gone) and says "killed".
 *    The holder waits until every process of the tree has exited, turns
 *    repair mode on and closes its sockets (silently: no FIN, no reset; the
 *    last reference, since the tree's are gone), answers "closed", and keeps
 *    the lock until the restore ends it (SIGKILL, found through tcp-lock.json
 *    in the image set) or its timeout passes. A ckpt killed after the commit
 *    ends the pipe instead: the holder does the same if the tree exits within
 *    a grace time (ckpt had killed it), and else gives everything back as
 *    below (the kernel let the tree go on);
 *  - the dump fails, is interrupted, or ckpt is killed before the commit: ckpt
 *    says "release", or the holder reads the end of its pipe; it turns repair
 *    mode off on every socket it holds (it is off already unless ckpt died in
 *    the middle of a read), so the connections carry on in the tree that runs
 *    again, and exits — which removes the table.
 */
import { pidfdGetfd, pidfdOpen, pipe2, poll } from "../sys/calls";
import { Errno, SysError } from "../sys/errno";
import { readWholeFile } from "../sys/file";
import { addressOf, close, readInto, syscall, writeAll } from "../sys/libc";
import { O, SYS } from "../sys/nr";
import { IPPROTO, setsockoptInt, TCP_OPT, TCP_REPAIR_MODE } from "../sys/socket";
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
/** How long a holder whose ckpt ended after the commit waits for the tree to exit before deciding it was let go instead. */
const TREE_EXIT_GRACE_MS = 5000;
const POLLIN = 1;

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
    setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR, TCP_REPAIR_MODE.OFF);
    return true;
  } catch {
    return false;
  }
}

/** ckpt's side of a lock held by a holder process. */
export class TcpLock {
  private table: NftDropTable | null = null;
  private committed = false;
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
      lock.close();
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

  /**
   * The images are whole and the tree `pids` is about to be killed: from
   * then on, a ckpt that ends without saying "release" leaves the lock held
   * if the tree is gone (see handOff).
   */
  commit(pids: readonly number[]): void {
    this.send(`commit ${pids.join(" ")}`);
    this.await("committed");
    this.committed = true;
  }

  /**
   * The tree was killed: the holder closes the dumped sockets once it has
   * exited, and the lock is its alone. Returns a problem to report, or null
   * (the images are whole whatever happens here). Nothing to do without a
   * commit (no connection was locked: the holder is gone already).
   */
  handOff(): string | null {
    if (!this.committed) return null;
    try {
      this.send("killed");
      this.await("closed");
      return null;
    } catch (e) {
      return `the network lock's holder did not close the dumped connections: ${e instanceof Error ? e.message : String(e)}`;
    } finally {
      this.closePipes();
    }
  }

  /**
   * The connections go on here (dump -R, or a failed dump, also after the
   * commit): repair mode off on every socket, and the holder ends, which
   * removes the table.
   */
  release(): void {
    for (const fd of this.sockets) repairOff(fd);
    if (this.cmd >= 0) {
      try {
        this.send("release");
      } catch {
        // The holder is gone already, or reads the end of its pipe below: the same outcome.
      }
    }
    this.close();
  }

  private closePipes(): void {
    if (this.cmd >= 0) close(this.cmd);
    if (this.ack >= 0) close(this.ack);
    this.cmd = -1;
    this.ack = -1;
  }

  /** ckpt's own copies go (the holder has its own): at the end of the dump, and after a release or a failed start. */
  close(): void {
    this.closePipes();
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
  let tree: number[] | null = null;
  let handedOver = false;
  const giveBack = (): never => {
    // The connections go on in the tree: out of repair mode; the table goes with this process.
    for (const fd of sockets) repairOff(fd);
    process.exit(0);
  };
  reading: for (;;) {
    let n: number;
    try {
      n = readInto(cmd, buf);
    } catch {
      n = 0;
    }
    if (n <= 0) break;
    pending += new TextDecoder().decode(buf.subarray(0, n));
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const [verb = "", ...args] = pending.slice(0, nl).split(" ");
      pending = pending.slice(nl + 1);
      if (verb === "release") giveBack();
      if (verb === "commit") {
        tree = args.map((p) => openTreePidfd(Number(p)));
        reply("committed");
        continue;
      }
      if (verb === "killed") {
        if (tree === null || !treeExits(tree, TREE_EXIT_GRACE_MS)) {
          reply("the tree still runs");
          giveBack();
        }
        closeSilently(sockets);
        reply("closed");
        handedOver = true;
        break reading;
      }
      const fd = pidfdGetfd(pidfd, Number(args[0]));
      (verb === "socket" ? sockets : held).push(fd);
      reply(`took ${args[0]}`);
    }
  }
  // ckpt has handed over, or ended. Without a commit the dump did not
  // complete; after one, it did only if the tree is gone (killed by ckpt, not
  // let go by its death).
  if (!handedOver) {
    if (tree === null || !treeExits(tree, TREE_EXIT_GRACE_MS)) giveBack();
    closeSilently(sockets);
  }
  close(cmd);
  close(ack);
  close(pidfd);
  // The lock is what this process holds; it goes with it.
  await Bun.sleep(timeoutSeconds * 1000);
  process.exit(0);
}

/**
 * Close the dumped sockets of a tree that is gone, in repair mode: no FIN
 * or reset goes out, and the restore can make the same connection.
 */
function closeSilently(sockets: number[]): void {
  for (const fd of sockets.splice(0)) {
    try {
      setsockoptInt(fd, IPPROTO.TCP, TCP_OPT.REPAIR, TCP_REPAIR_MODE.ON);
    } catch {
      // Not a socket in a state repair mode takes: it closes as it would have with the tree.
    }
    close(fd);
  }
}

/** A pidfd of a dumped process; -1 if it has gone already (it counts as exited). */
function openTreePidfd(pid: number): number {
  try {
    return pidfdOpen(pid);
  } catch (e) {
    if (e instanceof SysError && e.errno === Errno.ESRCH) return -1;
    throw e;
  }
}

/** Whether every process behind `pidfds` exits within `ms` (a pidfd reads ready once its process has). */
function treeExits(pidfds: readonly number[], ms: number): boolean {
  const until = performance.now() + ms;
  let running = pidfds.filter((fd) => fd >= 0);
  while (running.length > 0) {
    const left = Math.ceil(until - performance.now());
    if (left <= 0) return false;
    const ready = poll(running.map((fd) => ({ fd, events: POLLIN })), left);
    running = running.filter((_, k) => ready[k] === 0);
  }
  return true;
}
