/**
 * Process shapes real programs have, each dumped, restored and shown to carry
 * on: a pre-forking server whose workers share anonymous, /dev/zero, memfd
 * and moved memory; a Python multiprocessing pool (shared Value, Array,
 * mmap(-1), and semaphores in unlinked /dev/shm files); a tree with zombies,
 * a daemon in its own session and a job in its own group; a shell loop
 * spawning short children, dumped at random moments.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { CoreEntrySchema } from "../src/image/gen/core_pb";
import { GhostChunkEntrySchema, GhostFileEntrySchema } from "../src/image/gen/ghost-file_pb";
import { readImageFile } from "../src/image/image-file";
import { PstreeEntrySchema } from "../src/image/gen/pstree_pb";
import * as ptrace from "../src/sys/ptrace";
import { runCkpt } from "./helpers/cli";
import { critFailures, entries, savedPagesOf } from "./helpers/images";
import { jobParentTarget, multiprocessingScript, netlinkTarget, preforkTarget, sparseGhostTarget, udpTarget, zombieTreeTarget } from "./helpers/shape-workloads";
import { alive, killablePid, startDetached, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { selfCheck } from "./helpers/workloads";

const cleanup: Target[] = [];
afterEach(() => {
  for (const t of cleanup.splice(0)) t.kill();
});

/** The pids of a dump's tree, threads included. */
function dumpedPids(dir: string): number[] {
  return entries(dir, "pstree.img", PstreeEntrySchema).flatMap((e) => [e.pid, ...e.threads]);
}

/** Dump (the tree is killed) and wait until every dumped pid is free again. */
async function dumpAndWait(root: number, dir: string): Promise<void> {
  const r = runCkpt(["dump", "-t", String(root), "-D", dir]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  const pids = dumpedPids(dir);
  await waitFor("the dumped tree to be gone", () => pids.every((p) => !existsSync(`/proc/${p}`)), 10000);
}

function restore(dir: string): void {
  const r = runCkpt(["restore", "-D", dir, "-d"]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
}

function statOf(pid: number): { state: string; ppid: number; pgid: number; sid: number } {
  const rest = (readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ");
  return { state: rest[0] ?? "", ppid: Number(rest[1]), pgid: Number(rest[2]), sid: Number(rest[3]) };
}

/** One request to the pre-forking server: its answer "N PID". */
function ask(port: number): Promise<{ n: number; worker: number }> {
  return new Promise((resolve, reject) => {
    let text = "";
    const s = connect(port, "127.0.0.1");
    s.on("data", (d) => (text += d.toString()));
    s.on("error", reject);
    s.on("close", () => {
      const [n, worker] = text.trim().split(" ").map(Number);
      resolve({ n: n ?? NaN, worker: worker ?? NaN });
    });
  });
}

describe("process shapes of real programs", () => {
  test("a pre-forking server: workers share anonymous, /dev/zero, memfd and moved memory, and serve on after restore", async () => {
    const images = join(tempDir("prefork-img"), "img");
    const { words, out } = await startReady([preforkTarget()]);
    const [port, master, ...workers] = words.map(Number) as [number, number, number, number];
    cleanup.push(...[master, ...workers].map(killablePid));
    const before = [await ask(port), await ask(port), await ask(port)];
    expect(before.map((a) => a.n)).toEqual([1, 2, 3]);
    expect(await selfCheck(master, out)).toBe("ok");

    await dumpAndWait(master, images);
    // Each shared object once, however many processes map it: the split
    // anonymous object (pages 0 and 2; page 1 was never there), /dev/zero,
    // the memfd and the moved object, 2 written pages each.
    const shmem = readdirSync(images).filter((f) => /^pagemap-shmem-\d+\.img$/.test(f));
    expect(shmem.length).toBe(4);
    const pages = shmem.map((f) => savedPagesOf(images, f).reduce((n, run) => n + run.nrPages, 0));
    expect(pages).toEqual([2, 2, 2, 2]);
    const offsets = shmem.map((f) => savedPagesOf(images, f).flatMap((run) => Array.from({ length: run.nrPages }, (_, i) => Number(run.vaddr) / 4096 + i)));
    expect(offsets).toContainEqual([0, 2]);
    expect(critFailures(images)).toEqual([]);

    restore(images);
    expect([master, ...workers].every(alive)).toBe(true);
    expect(await selfCheck(master, out)).toBe("ok");
    // The counter in shared memory goes on where it stopped, whichever worker answers.
    const after = [await ask(port), await ask(port), await ask(port), await ask(port)];
    expect(after.map((a) => a.n)).toEqual([4, 5, 6, 7]);
    for (const a of after) expect(workers).toContain(a.worker);
  });

  test("a Python multiprocessing pool: Value, Array, mmap(-1) and Lock are shared again after restore", async () => {
    const images = join(tempDir("mp-img"), "img");
    const { words, out } = await startReady(["python3", multiprocessingScript()]);
    const pids = words.map(Number);
    cleanup.push(...pids.map(killablePid));
    expect(pids.length).toBe(4);
    expect(await selfCheck(pids[0]!, out)).toBe("ok");
    // The Lock and the Value's arena live in unlinked /dev/shm files: ghost files now.
    expect(readFileSync(`/proc/${pids[0]}/maps`, "utf8")).toMatch(/\/dev\/shm\/\S+ \(deleted\)/);

    await dumpAndWait(pids[0]!, images);
    expect(readdirSync(images).some((f) => f.startsWith("ghost-file-"))).toBe(true);
    restore(images);
    expect(pids.every(alive)).toBe(true);
    // A new generation written by the parent after restore reaches every worker,
    // and the workers' increments under the Lock reach the parent.
    expect(await selfCheck(pids[0]!, out)).toBe("ok");
    expect(await selfCheck(pids[0]!, out)).toBe("ok");
  });

  test("a tree with zombies, a daemon in its own session and a job in its own group comes back as it was", async () => {
    const images = join(tempDir("zombie-img"), "img");
    const { words, out } = await startReady(["setsid", zombieTreeTarget()]);
    const [root, exited, signaled, daemon, job] = words.map(Number) as [number, number, number, number, number];
    cleanup.push(...[root, daemon, job].map(killablePid));
    await waitFor("both children to be zombies", () => statOf(exited).state === "Z" && statOf(signaled).state === "Z");
    // The daemon and the job make their session and group themselves, after the ready line may be out.
    await waitFor("the daemon's session and the job's group", () => statOf(daemon).sid === daemon && statOf(job).pgid === job);
    const shape = [root, exited, signaled, daemon, job].map((p) => {
      const { ppid, pgid, sid } = statOf(p);
      return { ppid, pgid, sid };
    });
    expect(shape[3]!.sid).toBe(daemon);
    expect(shape[4]!.pgid).toBe(job);
    expect(shape[4]!.sid).toBe(root);

    await dumpAndWait(root, images);
    // The exit code field holds the wait status, as /proc/PID/stat's last field and CRIU have it.
    for (const [pid, status] of [[exited, 7 << 8], [signaled, 12]] as const) {
      const [core] = entries(images, `core-${pid}.img`, CoreEntrySchema);
      expect(core?.tc?.taskState).toBe(2); // TASK_DEAD
      expect(core?.tc?.exitCode).toBe(status);
    }
    expect(critFailures(images)).toEqual([]);

    restore(images);
    expect([root, exited, signaled, daemon, job].map((p) => statOf(p).state[0] === "Z")).toEqual([false, true, true, false, false]);
    expect([root, exited, signaled, daemon, job].map((p) => {
      const { ppid, pgid, sid } = statOf(p);
      return { ppid, pgid, sid };
    })).toEqual(shape);
    // The parent's waitpid() gets each zombie's status: exit 7, killed by SIGUSR2.
    expect(await selfCheck(root, out)).toBe("ok");
    await waitFor("the reaped zombies to be gone", () => !existsSync(`/proc/${exited}`) && !existsSync(`/proc/${signaled}`));
  });

  test("an unlinked sparse file, open and mapped, and an unlinked FIFO: one ghost each, holes left out, one inode again after restore", async () => {
    const work = tempDir("ghost-work");
    const images = join(tempDir("ghost-img"), "img");
    const { words, out } = await startReady([sparseGhostTarget(), work]);
    const pid = Number(words[0]);
    cleanup.push(killablePid(pid));
    expect(await selfCheck(pid, out)).toBe("ok");

    // --ghost-limit below the file's size refuses it by name, and the process runs on.
    const limited = runCkpt(["dump", "-R", "-t", String(pid), "-D", join(tempDir("ghost-img"), "img"), "--ghost-limit", "1M"]);
    expect(limited.code).toBe(1);
    expect(limited.stderr).toContain("an unlinked file of 67108864 bytes, more than --ghost-limit (1048576)");
    expect(alive(pid)).toBe(true);

    await dumpAndWait(pid, images);
    // Two ghosts: the sparse file's (one for its fd and its mapping) and the FIFO's inode.
    const ghosts = readdirSync(images).filter((f) => f.startsWith("ghost-file-")).map((f) => readImageFile(join(images, f)).entries);
    expect(ghosts.length).toBe(2);
    const fifoGhost = ghosts.find((g) => ((g[0]?.message as unknown as { mode: number }).mode & 0o170000) === 0o010000);
    expect(fifoGhost?.length).toBe(1);
    const [head, ...chunks] = ghosts.find((g) => g !== fifoGhost)!;
    expect((head?.message as { $typeName: string }).$typeName).toBe(GhostFileEntrySchema.typeName);
    // Two pages of data (written at 0 and at 32 MiB), not 64 MiB.
    expect(chunks.map((c) => (c.message as { $typeName: string }).$typeName)).toEqual([GhostChunkEntrySchema.typeName, GhostChunkEntrySchema.typeName]);
    expect(chunks.reduce((n, c) => n + (c.payload?.length ?? 0), 0)).toBe(2 * 4096);
    expect(critFailures(images)).toEqual([]);

    restore(images);
    expect(await selfCheck(pid, out)).toBe("ok");
    expect(await selfCheck(pid, out)).toBe("ok");
    expect(readdirSync(work)).toEqual([]);
  });

  test("a daemon's UDP sockets: bound, connected, free-bound IPv6, unbound; and an unbound TCP socket", async () => {
    const images = join(tempDir("udp-img"), "img");
    const { words, out } = await startReady([udpTarget()]);
    const [pid, port] = words.map(Number) as [number, number];
    cleanup.push(killablePid(pid));
    expect(await selfCheck(pid, out)).toBe("ok");
    await dumpAndWait(pid, images);
    expect(critFailures(images)).toEqual([]);
    restore(images);
    // The server is back on its port, and the client's datagrams reach it from the same address.
    expect(readFileSync("/proc/net/udp", "utf8")).toContain(`0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a daemon's netlink sockets: route (groups past 32 too), uevent, unbound", async () => {
    const images = join(tempDir("nl-img"), "img");
    const { words, out } = await startReady([netlinkTarget()]);
    const pid = Number(words[0]);
    cleanup.push(killablePid(pid));
    expect(await selfCheck(pid, out)).toBe("ok");
    await dumpAndWait(pid, images);
    expect(critFailures(images)).toEqual([]);
    restore(images);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a job stopped by SIGTSTP is stopped by SIGTSTP again after restore", async () => {
    const images = join(tempDir("tstp-img"), "img");
    // Its own group under a parent of the same session: not orphaned, so SIGTSTP stops it.
    const { words } = await startReady(["setsid", jobParentTarget()]);
    const [parent, job] = words.map(Number) as [number, number];
    cleanup.push(killablePid(parent), killablePid(job));
    process.kill(job, "SIGTSTP");
    await waitFor("the job stop", () => statOf(job).state === "T");
    await dumpAndWait(parent, images);
    expect(entries(images, `core-${job}.img`, CoreEntrySchema)[0]?.tc?.stopSigno).toBe(20); // SIGTSTP
    restore(images);
    expect(statOf(job).state).toBe("T");
    // A tracer that seizes a task in a group-stop is told the signal of that stop.
    ptrace.seize(job);
    const status = ptrace.waitTracee(job);
    ptrace.detach(job);
    expect(ptrace.stopSig(status)).toBe(20);
    process.kill(job, "SIGCONT");
    await waitFor("the job to go on", () => statOf(job).state === "S");
  });

  test("a shell loop spawning short children: 20 dumps at random moments, then one restored that loops on", async () => {
    const work = tempDir("loop");
    const counter = join(work, "n");
    const loop = `i=0; while :; do i=$((i+1)); echo $i > ${counter}; /bin/true; (exit 3); sleep 0.00$((RANDOM % 5)); done`;
    const target = await startDetached(["setsid", "bash", "-c", loop]);
    cleanup.push(target);
    await waitFor("the loop to run", () => existsSync(counter) && readFileSync(counter, "utf8").trim() !== "");
    let withChildren = 0;
    let withZombies = 0;
    for (let round = 0; round < 20; round++) {
      await Bun.sleep(Math.random() * 30);
      const images = join(tempDir("loop-img"), "img");
      const r = runCkpt(["dump", "-R", "-t", String(target.pid), "-D", images]);
      expect(`round ${round}: ${r.stderr}`).toBe(`round ${round}: `);
      expect(r.code).toBe(0);
      const tree = entries(images, "pstree.img", PstreeEntrySchema);
      if (tree.length > 1) withChildren++;
      if (tree.some((e) => entries(images, `core-${e.pid}.img`, CoreEntrySchema)[0]?.tc?.taskState === 2)) withZombies++;
    }
    console.log(`shell loop: 20 dumps, ${withChildren} caught a child, ${withZombies} a zombie`);
    expect(alive(target.pid)).toBe(true);

    const images = join(tempDir("loop-img"), "img");
    await dumpAndWait(target.pid, images);
    const stopped = Number(readFileSync(counter, "utf8"));
    restore(images);
    const leftovers = dumpedPids(images).slice(1);
    cleanup.push(...leftovers.map(killablePid));
    await waitFor("the restored loop to count on", () => Number(readFileSync(counter, "utf8")) > stopped + 20, 10000);
    expect(alive(target.pid)).toBe(true);
  });
});
