/**
 * Two "hosts" on one machine for migration tests: two network namespaces
 * joined by a veth pair, 10.77.0.1 (source) and 10.77.0.2 (destination).
 * Commands run in one with `nsenter --net` (not `ip netns exec`, whose mount
 * namespace of its own would be one more thing for CRIU to dump). Where namespaces cannot be made
 * (a container without them), both hosts are this one on 127.0.0.1, with a
 * warning: the protocol is the same, only the network is shorter.
 */
import { randomBytes } from "node:crypto";

const MAIN = `${import.meta.dir}/../../src/cli/main.ts`;

export interface Host {
  /** The network namespace's name; "" for this host's own. */
  netns: string;
  address: string;
  /** argv run inside this host. */
  argv(cmd: readonly string[]): string[];
}

export interface TwoHosts {
  source: Host;
  dest: Host;
  /** Whether the hosts are separate network namespaces. */
  separate: boolean;
  remove(): void;
}

function ip(args: string[]): { ok: boolean; err: string } {
  const r = Bun.spawnSync(["ip", ...args], { stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, err: r.stderr.toString().trim() };
}

function host(netns: string, address: string): Host {
  return { netns, address, argv: (cmd) => (netns ? ["nsenter", `--net=/run/netns/${netns}`, "--", ...cmd] : [...cmd]) };
}

export function twoHosts(): TwoHosts {
  const tag = randomBytes(3).toString("hex");
  const [a, b] = [`ckpt-src-${tag}`, `ckpt-dst-${tag}`];
  const [va, vb] = [`cks${tag}`, `ckd${tag}`];
  const steps: string[][] = [
    ["netns", "add", a], ["netns", "add", b],
    ["link", "add", va, "type", "veth", "peer", "name", vb],
    ["link", "set", va, "netns", a], ["link", "set", vb, "netns", b],
    ["-n", a, "addr", "add", "10.77.0.1/24", "dev", va], ["-n", b, "addr", "add", "10.77.0.2/24", "dev", vb],
    ["-n", a, "link", "set", va, "up"], ["-n", b, "link", "set", vb, "up"],
    ["-n", a, "link", "set", "lo", "up"], ["-n", b, "link", "set", "lo", "up"],
  ];
  const remove = (): void => {
    ip(["netns", "del", a]);
    ip(["netns", "del", b]);
  };
  for (const s of steps) {
    const r = ip(s);
    if (!r.ok) {
      remove();
      console.warn(`migration tests: cannot make two network namespaces (ip ${s.join(" ")}: ${r.err}); both ends run on 127.0.0.1`);
      return { source: host("", "127.0.0.1"), dest: host("", "127.0.0.1"), separate: false, remove: () => {} };
    }
  }
  return { source: host(a, "10.77.0.1"), dest: host(b, "10.77.0.2"), separate: true, remove };
}

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** ckpt (from source) on a host, to the end. */
export function ckptOn(h: Host, args: readonly string[]): Ran {
  const r = Bun.spawnSync(h.argv([process.execPath, MAIN, ...args]), { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** A `ckpt page-server` running on a host: started, listening, and its end to wait for. */
export interface RunningServer {
  pid: number;
  port: number;
  done: Promise<Ran>;
  kill(signal?: NodeJS.Signals): void;
}

/** Start `ckpt page-server` (or `exe` with `args`) on a host and wait until it listens on `port`. */
export async function startPageServer(h: Host, args: readonly string[], port: number, exe?: readonly string[]): Promise<RunningServer> {
  const argv = h.argv(exe ? [...exe, ...args] : [process.execPath, MAIN, "page-server", ...args]);
  const child = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe" });
  const done = (async (): Promise<Ran> => {
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited.catch(() => -1)]);
    return { code, stdout, stderr };
  })();
  const until = Date.now() + 20000;
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  // Listening when the host's /proc/net/tcp shows the port in state 0A (LISTEN).
  for (;;) {
    const r = Bun.spawnSync(h.argv(["cat", "/proc/net/tcp", "/proc/net/tcp6"]), { stdout: "pipe", stderr: "pipe" });
    if (r.stdout.toString().split("\n").some((l) => l.split(/\s+/)[2]?.endsWith(`:${hex}`) && l.split(/\s+/)[4] === "0A")) break;
    if (child.exitCode !== null || Date.now() > until) {
      child.kill("SIGKILL");
      const r2 = await done;
      throw new Error(`the page server did not start listening on port ${port} (exit ${r2.code}): ${r2.stderr}`);
    }
    await Bun.sleep(10);
  }
  return { pid: child.pid, port, done, kill: (signal = "SIGKILL") => child.kill(signal) };
}

/** A port for one test's server: each test takes its own, so a TIME_WAIT never gets in the next one's way. */
export function freshPort(): number {
  return 20000 + Math.floor(Math.random() * 20000);
}

/** A ckpt command running on a host, to wait for or kill. */
export interface Running {
  pid: number;
  done: Promise<Ran>;
  kill(signal?: NodeJS.Signals): void;
}

/** Start ckpt (from source) with `args` on a host, in the background. */
export function spawnOn(h: Host, args: readonly string[]): Running {
  const child = Bun.spawn(h.argv([process.execPath, MAIN, ...args]), { stdout: "pipe", stderr: "pipe" });
  const done = (async (): Promise<Ran> => {
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited.catch(() => -1)]);
    return { code, stdout, stderr };
  })();
  return { pid: child.pid, done, kill: (signal = "SIGKILL") => child.kill(signal) };
}
