/**
 * Migration benchmark: a 2 GiB process rewriting 16 MiB per second moved
 * across a veth pair between two network namespaces (test/helpers/hosts.ts),
 * with the compiled ckpt (dist/ckpt):
 *   (a) final dump through `ckpt page-server`, images copied, restore;
 *   (b) the same after two pre-dump rounds through page servers, and with
 *       the restore started before the final dump (--wait-images); each
 *       also with a lazy restore, whose `ckpt lazy-pages` reads the
 *       anonymous memory from the destination's images after the tree runs;
 *       and with a lazy final dump, whose daemon reads the rounds sent at
 *       the destination and fetches only what was written since;
 *   (c) dump --lazy-pages, images copied, restore --lazy-pages (memory
 *       arrives after the restore, through `ckpt lazy-pages`); and (c) with
 *       the destination's daemon and restore started before the dump,
 *       waiting for it (--wait-source, --wait-images);
 * and (a) with CRIU 4.2 when CRIU_BIN is set (CRIU cannot pre-dump here: no
 * soft-dirty).
 *
 * Downtime = from the final freeze (every thread stopped, as the dump reports
 * it) to the restored tree running (every task let go, as the restore
 * reports it), less nothing: the copy of the non-memory images between the
 * directories is in it (the bench learns the set is complete from an
 * inotify watch, as a script's inotifywait would). The notes give the
 * restore command's exit too. For CRIU, whose
 * dump does not report when it froze, from the dump's launch (an upper bound).
 * The source tree is restored in a new pid namespace at the destination, so
 * no run waits for the source's pids to be reaped. Bytes are what crossed
 * the network (page server or lazy-pages stream).
 *
 * Run: npm run bench:migrate   (MIB=2048 RATE=16 RUNS=1; CASES=bc for some cases only, MATCH=text for those named so; CKPT=path to use another binary)
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, watch } from "node:fs";
import { join } from "node:path";
import { rewriteTarget } from "../test/helpers/restore-workloads";
import { freshPort, twoHosts, type Host } from "../test/helpers/hosts";
import { startReady, tempDir, waitFor } from "../test/helpers/target";
import { BenchCleanup } from "./cleanup";

const MIB = Number(process.env.MIB ?? 2048);
const RATE = Number(process.env.RATE ?? 16);
const RUNS = Number(process.env.RUNS ?? 1);
const CKPT = process.env.CKPT ?? join(import.meta.dir, "../dist/ckpt");
const CRIU = process.env.CRIU_BIN ?? "";
/** Letters of the cases to run (a, b, c; "criu" for CRIU's), all by default. */
const CASES = process.env.CASES ?? "abccriu";
/** Only the cases whose name holds this text (e.g. MATCH=ahead). */
const MATCH = process.env.MATCH ?? "";
const left = new BenchCleanup("bench/migrate");

if (!existsSync(CKPT)) {
  process.stderr.write(`bench/migrate: ${CKPT} is missing: run npm run build first (npm run bench:migrate does)\n`);
  process.exit(1);
}
const hosts = twoHosts();
process.on("exit", () => hosts.remove());
if (!hosts.separate) process.stderr.write("bench/migrate: no network namespaces here: both ends on 127.0.0.1\n");

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

function run(h: Host, argv: string[]): Ran {
  const r = Bun.spawnSync(h.argv(argv), { stdout: "pipe", stderr: "pipe" });
  const out = { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
  if (out.code !== 0) throw new Error(`${argv.slice(0, 2).join(" ")} exited ${out.code}: ${out.stderr.trim()}`);
  return out;
}

function spawn(h: Host, argv: string[]): { done: Promise<Ran> } {
  const child = Bun.spawn(h.argv(argv), { stdout: "pipe", stderr: "pipe" });
  return {
    done: (async () => {
      const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
      return { code, stdout, stderr };
    })(),
  };
}

/** Start a page server on the destination and wait until it listens. */
async function pageServer(argv: string[], port: number): Promise<{ done: Promise<Ran> }> {
  const s = spawn(hosts.dest, argv);
  const hex = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  await waitFor("the page server", () => {
    const r = Bun.spawnSync(hosts.dest.argv(["cat", "/proc/net/tcp"]), { stdout: "pipe" });
    return r.stdout.toString().split("\n").some((l) => l.split(/\s+/)[2]?.endsWith(hex) && l.split(/\s+/)[4] === "0A");
  }, 20000);
  return s;
}

/**
 * Resolve once `dir/name` exists, told by an inotify watch (fs.watch) the
 * moment it lands, as a script's inotifywait would be: a poll's latency is
 * no part of ckpt's downtime.
 */
async function landed(dir: string, name: string, ms: number): Promise<void> {
  const path = join(dir, name);
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  const watcher = watch(dir, () => {
    if (existsSync(path)) resolve();
  });
  const timer = setTimeout(() => reject(new Error(`timed out waiting for ${path}`)), ms);
  if (existsSync(path)) resolve();
  try {
    await promise;
  } finally {
    clearTimeout(timer);
    watcher.close();
  }
}

/** Copy a set as a careful script would: inventory.img, which makes it complete, last. */
function copyImages(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  const names = readdirSync(from).filter((n) => n !== "parent" && n !== "inventory.img");
  for (const name of [...names, "inventory.img"]) if (existsSync(join(from, name))) copyFileSync(join(from, name), join(to, name));
}

async function workload(): Promise<number> {
  const { target } = await startReady(hosts.source.argv(["setsid", rewriteTarget(), String(MIB), "1", String(RATE)]));
  left.targets.push(target);
  return target.pid;
}

interface Outcome {
  downtimeMs: number;
  bytes: number;
  rounds: string;
}

/** The restore's own account of its time (--json), to set against the time its command took. */
let lastRestore = "";
/** When the last restore let its tree go (ms since the epoch, its --json). */
let lastRunning = 0;

/** A restore that exited 0: its root goes on the kill list, its own figures (--json, less the wait) into lastRestore after `how`. */
function restoredBy(stdout: string, pidfile: string, how: string): void {
  const f = (JSON.parse(stdout) as { figures: Record<string, number> }).figures;
  lastRestore = `${how}: ${Object.entries(f).filter(([k]) => k !== "waitedMs" && k !== "runningSinceEpochMs").map(([k, v]) => `${k.replace(/Ms$/, "")} ${v.toFixed(0)}`).join(", ")}`;
  lastRunning = f.runningSinceEpochMs ?? 0;
  const pid = Number(readFileSync(pidfile, "utf8").trim());
  left.targets.push({ pid, kill: () => { try { process.kill(pid, "SIGKILL"); } catch { /* gone */ } } });
}

function restoreAt(dir: string, extra: string[] = []): number {
  const pidfile = join(dir, "..", "restored.pid");
  const started = Date.now();
  const r = run(hosts.dest, [CKPT, "restore", "-D", dir, "-d", "--restore-in-new-pidns", "--pidfile", pidfile, "--json", ...extra]);
  const end = Date.now();
  restoredBy(r.stdout, pidfile, `restore command ${end - started} ms, of it inside`);
  return end;
}

/**
 * A restore started ahead on the destination, waiting (--wait-images) for a
 * complete set in `dir`; `finish` resolves with the moment it exited.
 */
function restoreAhead(dir: string, extra: string[] = []): { finish: () => Promise<number> } {
  const pidfile = join(dir, "..", "restored.pid");
  const waiting = spawn(hosts.dest, [CKPT, "restore", "-D", dir, "-d", "--restore-in-new-pidns", "--pidfile", pidfile, "--json", "--wait-images", "120", ...extra]);
  return {
    finish: async () => {
      const r = await waiting.done;
      const end = Date.now();
      if (r.code !== 0) throw new Error(`restore --wait-images exited ${r.code}: ${r.stderr.trim()}`);
      restoredBy(r.stdout, pidfile, "started ahead, inside after the set arrived");
      return end;
    },
  };
}

/**
 * Pre-dump rounds (`preRounds` of them) and a final dump, each through a
 * page server of its own; then restore (`ahead`: started before the final
 * dump, waiting for its set). `lazyRestore`: the restore leaves anonymous
 * memory to a `ckpt lazy-pages` of the destination's images, started (and
 * waiting) before the final dump.
 */
async function viaPageServer(preRounds: number, ahead = false, lazyRestore = false): Promise<Outcome> {
  const pid = await workload();
  const [src, dst] = [tempDir("bench-mig-src"), tempDir("bench-mig-dst")];
  left.dirs.push(src, dst);
  const sent: number[] = [];
  let frozenSince = 0;
  let waiting: { finish: () => Promise<number> } | null = null;
  let daemon: { done: Promise<Ran> } | null = null;
  let lastDump = "";
  const last = String(preRounds + 1);
  const restoreArgs = lazyRestore ? ["--lazy-pages"] : [];
  for (let round = 1; round <= preRounds + 1; round++) {
    const prev = round === 1 ? [] : ["--prev-images-dir", `../${round - 1}`];
    const port = freshPort();
    const server = await pageServer([CKPT, "page-server", "-D", join(dst, String(round)), "--address", hosts.dest.address, "--port", String(port), ...prev], port);
    const verb = round === preRounds + 1 ? "dump" : "pre-dump";
    if (lazyRestore && verb === "dump") {
      mkdirSync(join(dst, last), { recursive: true, mode: 0o700 });
      daemon = spawn(hosts.dest, [CKPT, "lazy-pages", "-D", join(dst, last), "--json"]);
      await waitFor("the lazy-pages socket", () => existsSync(join(dst, last, "lazy-pages.socket")), 20000);
    }

    const r = run(hosts.source, [CKPT, verb, "-t", String(pid), "-D", join(src, String(round)), ...prev, "--page-server", "--address", hosts.dest.address, "--port", String(port), "--json"]);
    const j = JSON.parse(r.stdout) as { figures: { frozenSinceEpochMs?: number; frozenMs: number; totalMs: number; frozenPhases?: Record<string, number> }; pageServer: { bytesSent: number } };
    sent.push(j.pageServer.bytesSent);
    frozenSince = j.figures.frozenSinceEpochMs ?? 0;
    const phases = Object.entries(j.figures.frozenPhases ?? {}).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ");
    lastDump = `frozen ${j.figures.frozenMs.toFixed(0)} ms (${phases}), dump total ${j.figures.totalMs.toFixed(0)} ms`;
    const s = await server.done;
    if (s.code !== 0) throw new Error(`page server: ${s.stderr}`);
    if (round <= preRounds) {
      // Started in the pause before the final dump (the same pause as without it): waiting before the source freezes.
      if (ahead && round === preRounds) waiting = restoreAhead(join(dst, last), restoreArgs);
      await Bun.sleep(1000);
    }
  }
  const dumped = Date.now();
  copyImages(join(src, last), join(dst, last));
  const copied = Date.now();
  const end = waiting ? await waiting.finish() : restoreAt(join(dst, last), restoreArgs);
  let filled = "";
  if (daemon) {
    const l = await daemon.done;
    if (l.code !== 0) throw new Error(`lazy-pages exited ${l.code}: ${l.stderr.trim()}`);
    const lj = JSON.parse(l.stdout) as { pagesOnFault: number; pagesInBackground: number; pagesFromImages: number; ms: number };
    filled = `; lazy: ${lj.pagesOnFault} pages on fault, ${lj.pagesInBackground} in the background (${lj.pagesFromImages} from the images), all in ${lj.ms.toFixed(0)} ms`;
  }
  return {
    downtimeMs: lastRunning - frozenSince, bytes: sent.reduce((a, b) => a + b, 0),
    rounds: `${sent.map((b) => `${(b / 2 ** 20).toFixed(1)}`).join(" + ")}; freeze→dump exit ${dumped - frozenSince} ms (${lastDump}), copy ${copied - dumped} ms, restore exit ${end - copied} ms, tree running ${(lastRunning - copied).toFixed(0)} ms (${lastRestore})${filled}`,
  };
}

/**
 * Pre-dump rounds through page servers, then a lazy final dump
 * (--prev-images-dir): the destination's daemon reads what the rounds sent
 * from its own images and fetches from the source only what was written
 * since. Daemon and restore are started ahead, waiting for the dump.
 */
async function lazyAfterRounds(preRounds: number): Promise<Outcome> {
  const pid = await workload();
  const [src, dst] = [tempDir("bench-hybrid-src"), tempDir("bench-hybrid-dst")];
  left.dirs.push(src, dst);
  const sent: number[] = [];
  for (let round = 1; round <= preRounds; round++) {
    const prev = round === 1 ? [] : ["--prev-images-dir", `../${round - 1}`];
    const port = freshPort();
    const server = await pageServer([CKPT, "page-server", "-D", join(dst, String(round)), "--address", hosts.dest.address, "--port", String(port), ...prev], port);
    const r = run(hosts.source, [CKPT, "pre-dump", "-t", String(pid), "-D", join(src, String(round)), ...prev, "--page-server", "--address", hosts.dest.address, "--port", String(port), "--json"]);
    sent.push((JSON.parse(r.stdout) as { pageServer: { bytesSent: number } }).pageServer.bytesSent);
    const s = await server.done;
    if (s.code !== 0) throw new Error(`page server: ${s.stderr}`);
    if (round === preRounds) break;
    await Bun.sleep(1000);
  }
  const last = String(preRounds + 1);
  const [from, to] = [join(src, last), join(dst, last)];
  mkdirSync(to, { mode: 0o700 });
  const port = freshPort();
  const daemon = spawn(hosts.dest, [CKPT, "lazy-pages", "-D", to, "--page-server", "--address", hosts.source.address, "--port", String(port), "--wait-source", "60", "--json"]);
  const waiting = restoreAhead(to, ["--lazy-pages"]);
  // Both started and waiting in the pause before the final dump.
  await Bun.sleep(1000);
  // Made ahead, so that its inventory can be watched for.
  mkdirSync(from, { mode: 0o700 });
  const dump = spawn(hosts.source, [CKPT, "dump", "-t", String(pid), "-D", from, "--prev-images-dir", `../${preRounds}`, "--lazy-pages", "--address", hosts.source.address, "--port", String(port), "--json"]);
  await landed(from, "inventory.img", 60000);
  const seen = Date.now();
  // As cp -a would: the parent link goes along, and names the page server's round there.
  symlinkSync(readlinkSync(join(from, "parent")), join(to, "parent"));
  copyImages(from, to);
  const copied = Date.now();
  const end = await waiting.finish();
  const [d, l] = await Promise.all([dump.done, daemon.done]);
  if (d.code !== 0 || l.code !== 0) throw new Error(`lazy after rounds: dump ${d.code} ${d.stderr} / lazy-pages ${l.code} ${l.stderr}`);
  const dj = JSON.parse(d.stdout) as { figures: { frozenSinceEpochMs: number; frozenPhases: Record<string, number> }; lazy: { bytesSent: number } };
  const phases = Object.entries(dj.figures.frozenPhases).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ");
  const lj = JSON.parse(l.stdout) as { pagesOnFault: number; pagesInBackground: number; pagesFromImages: number; ms: number };
  const f = dj.figures.frozenSinceEpochMs;
  sent.push(dj.lazy.bytesSent);
  return {
    downtimeMs: lastRunning - f, bytes: sent.reduce((a, b) => a + b, 0),
    rounds: `${sent.map((b) => `${(b / 2 ** 20).toFixed(1)}`).join(" + ")}; freeze→images ${(seen - f).toFixed(0)} ms (frozen phases: ${phases}), copy ${copied - seen} ms, restore exit ${end - copied} ms, tree running ${(lastRunning - copied).toFixed(0)} ms (${lastRestore}); lazy: ${lj.pagesOnFault} pages on fault, ${lj.pagesInBackground} in the background (${lj.pagesFromImages} from the images), all in ${lj.ms.toFixed(0)} ms`,
  };
}

/**
 * `ahead`: the destination's lazy-pages daemon and restore are started
 * before the dump and wait for it (--wait-source, --wait-images), so their
 * own start-up is not downtime.
 */
async function lazy(ahead: boolean): Promise<Outcome> {
  const pid = await workload();
  const [src, dst] = [join(tempDir("bench-lazy-src"), "img"), join(tempDir("bench-lazy-dst"), "img")];
  left.dirs.push(src, dst);
  mkdirSync(dst);
  // Made ahead, so that the dump's inventory can be watched for.
  mkdirSync(src, { mode: 0o700 });
  const port = freshPort();
  const daemonArgv = [CKPT, "lazy-pages", "-D", dst, "--page-server", "--address", hosts.source.address, "--port", String(port), "--json"];
  let waiting: { finish: () => Promise<number> } | null = null;
  let daemon: { done: Promise<Ran> };
  if (ahead) {
    daemon = spawn(hosts.dest, [...daemonArgv, "--wait-source", "60"]);
    waiting = restoreAhead(dst, ["--lazy-pages"]);
    // Both started and waiting before the source freezes anything.
    await Bun.sleep(1000);
  }
  const dump = spawn(hosts.source, [CKPT, "dump", "-t", String(pid), "-D", src, "--lazy-pages", "--address", hosts.source.address, "--port", String(port), "--json"]);
  if (!ahead) {
    await Bun.sleep(50);
    daemon = spawn(hosts.dest, daemonArgv);
  }
  await landed(src, "inventory.img", 60000);
  const seen = Date.now();
  copyImages(src, dst);
  const copied = Date.now();
  const end = waiting ? await waiting.finish() : restoreAt(dst, ["--lazy-pages"]);
  const [d, l] = await Promise.all([dump.done, daemon!.done]);
  if (d.code !== 0 || l.code !== 0) throw new Error(`lazy: dump ${d.code} ${d.stderr} / lazy-pages ${l.code} ${l.stderr}`);
  const dj = JSON.parse(d.stdout) as { figures: { frozenSinceEpochMs: number; frozenPhases: Record<string, number> }; lazy: { bytesSent: number } };
  const phases = Object.entries(dj.figures.frozenPhases).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ");
  const lj = JSON.parse(l.stdout) as { pagesOnFault: number; pagesInBackground: number; ms: number };
  const f = dj.figures.frozenSinceEpochMs;
  return {
    downtimeMs: lastRunning - f, bytes: dj.lazy.bytesSent,
    rounds: `freeze→images ${(seen - f).toFixed(0)} ms (frozen phases: ${phases}), copy ${copied - seen} ms, restore exit ${end - copied} ms, tree running ${(lastRunning - copied).toFixed(0)} ms (${lastRestore}); lazy: ${lj.pagesOnFault} pages on fault, ${lj.pagesInBackground} in the background, all in ${lj.ms.toFixed(0)} ms`,
  };
}

async function criuViaPageServer(): Promise<Outcome> {
  const pid = await workload();
  const [src, dst] = [tempDir("bench-criu-src"), tempDir("bench-criu-dst")];
  left.dirs.push(src, dst);
  const port = freshPort();
  const server = await pageServer([CRIU, "page-server", "-D", dst, "--address", hosts.dest.address, "--port", String(port)], port);
  const started = Date.now();
  run(hosts.source, [CRIU, "dump", "-t", String(pid), "-D", src, "--page-server", "--address", hosts.dest.address, "--port", String(port)]);
  const dumpMs = Date.now() - started;
  await server.done;
  const t = Date.now();
  copyImages(src, dst);
  const copyMs = Date.now() - t;
  await waitFor("the source's pids to be free for CRIU's restore", () => !existsSync(`/proc/${pid}`), 20000);
  const r0 = Date.now();
  run(hosts.dest, [CRIU, "restore", "-D", dst, "-d"]);
  const restoreMs = Date.now() - r0;
  left.targets.push({ pid, kill: () => { try { process.kill(pid, "SIGKILL"); } catch { /* gone */ } } });
  const bytes = readdirSync(dst).filter((n) => n.startsWith("pages-")).reduce((s, n) => s + Bun.file(join(dst, n)).size, 0);
  return { downtimeMs: dumpMs + copyMs + restoreMs, bytes, rounds: "(downtime: dump launch to exit + copy + restore, not the wait for its pids)" };
}

const cases: [string, () => Promise<Outcome>][] = [];
if (CASES.includes("a")) cases.push(["(a) dump + page server + restore", () => viaPageServer(0)]);
if (CASES.includes("b")) {
  cases.push(["(b) 2 pre-dumps + dump via page servers", () => viaPageServer(2)]);
  cases.push(["(b) same, restore started ahead", () => viaPageServer(2, true)]);
  cases.push(["(b) same, lazy restore from the images", () => viaPageServer(2, false, true)]);
  cases.push(["(b) same, lazy restore started ahead", () => viaPageServer(2, true, true)]);
  cases.push(["(b) 2 pre-dumps + lazy dump, started ahead", () => lazyAfterRounds(2)]);
}
if (CASES.includes("c")) {
  cases.push(["(c) dump --lazy-pages + lazy restore", () => lazy(false)]);
  cases.push(["(c) same, destination started ahead", () => lazy(true)]);
}
if (!CASES.includes("criu")) {
  // Not asked for.
} else if (CRIU && existsSync(CRIU)) cases.push(["CRIU 4.2 (a) dump + page server + restore", criuViaPageServer]);
else process.stderr.write("bench/migrate: CRIU_BIN not set: no CRIU figures\n");

process.stdout.write(`migration of a ${MIB} MiB process rewriting ${RATE} MiB/s across ${hosts.separate ? "a veth pair" : "loopback"}, ${RUNS} run(s) each\n`);
process.stdout.write(`${"case".padEnd(44)} ${"downtime ms".padStart(12)} ${"MiB sent".padStart(10)}  rounds (MiB) / notes\n`);
for (const [name, fn] of cases.filter(([name]) => name.includes(MATCH))) {
  for (let i = 0; i < RUNS; i++) {
    try {
      const o = await fn();
      process.stdout.write(`${name.padEnd(44)} ${o.downtimeMs.toFixed(0).padStart(12)} ${(o.bytes / 2 ** 20).toFixed(1).padStart(10)}  ${o.rounds}\n`);
    } catch (e) {
      process.stdout.write(`${name.padEnd(44)} failed: ${(e as Error).message.split("\n")[0]}\n`);
    } finally {
      left.killAll();
    }
  }
}
