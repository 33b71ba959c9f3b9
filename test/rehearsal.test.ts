/**
 * Rehearsals (src/rehearsal/): `ckpt dump` and `ckpt pre-dump` dump a decoy
 * process of ckpt's own before freezing the tree; `ckpt restore
 * --wait-images` dumps and restores one while it waits. Each must run the
 * real code on a real decoy, leave nothing behind (no decoy, no temporary
 * directory, also of a ckpt killed mid-rehearsal), never fail the command,
 * and stay out of the real figures.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ckptArgv, runCkpt } from "./helpers/cli";
import { alive, killablePid, processesWhere, restoreSeeds, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { memTarget, selfCheck } from "./helpers/workloads";

const cleanup: Target[] = [];
afterAll(() => {
  for (const t of cleanup) t.kill();
});

interface Rehearsal {
  ms: number;
  dumped: boolean;
  restored: boolean;
  skipped?: string;
}

/** Processes named ckpt-decoy now (a rehearsal's decoy, or one restored from it). */
function decoys(): number[] {
  return processesWhere((pid) => readFileSync(`/proc/${pid}/comm`, "utf8").trim() === "ckpt-decoy" && alive(pid));
}

describe("rehearsal", () => {
  test("ckpt dump dumps a decoy first: it and its images are gone after, the tree's set restores and verifies itself", async () => {
    const { target, out } = await startReady([memTarget(), "8", "1"]);
    cleanup.push(target);
    const tmp = tempDir("rehearsal-tmp");
    const images = join(tempDir("rehearsal-img"), "img");
    // Left by a ckpt killed mid-rehearsal (no such pid), and one of a ckpt that runs (this test's pid stands in).
    mkdirSync(join(tmp, "ckpt-rehearsal-2147483646-abcdef"));
    const live = `ckpt-rehearsal-${process.pid}-abcdef`;
    mkdirSync(join(tmp, live));
    const before = decoys();
    const r = runCkpt(["dump", "-t", String(target.pid), "-D", images, "--json"], { env: { TMPDIR: tmp } });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as { rehearsal: Rehearsal; syscalls: Record<string, number>; figures: { frozenMs: number; totalMs: number } };
    expect(j.rehearsal.skipped).toBeUndefined();
    expect(j.rehearsal.dumped).toBe(true);
    expect(j.rehearsal.ms).toBeGreaterThan(0);
    // The rehearsal's calls are not the dump's: it launched the decoy from a memfd, the dump makes none.
    expect(j.syscalls.memfd_create ?? 0).toBe(0);
    expect(readdirSync(tmp)).toEqual([live]);
    expect(decoys().filter((p) => !before.includes(p))).toEqual([]);

    const restored = runCkpt(["restore", "-D", images, "-d", "--json"]);
    expect(restored.stderr).toBe("");
    expect(restored.code).toBe(0);
    expect(await selfCheck(target.pid, out)).toBe("ok");
  });

  test("--no-rehearsal dumps no decoy; a rehearsal that cannot run is skipped, says why, and the dump goes on", async () => {
    const { target } = await startReady([memTarget(), "4", "1"]);
    cleanup.push(target);
    const plain = runCkpt(["dump", "-t", String(target.pid), "-D", join(tempDir("rehearsal-no"), "img"), "-R", "--no-rehearsal", "--json"]);
    expect(plain.code).toBe(0);
    expect((JSON.parse(plain.stdout) as { rehearsal?: Rehearsal }).rehearsal).toBeUndefined();

    const images = join(tempDir("rehearsal-skip"), "img");
    const r = runCkpt(["pre-dump", "-t", String(target.pid), "-D", images, "--json"], { env: { TMPDIR: "/nonexistent/tmp" } });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as { rehearsal: Rehearsal };
    expect(j.rehearsal.dumped).toBe(false);
    expect(j.rehearsal.skipped).toContain("/nonexistent/tmp");
    expect(existsSync(join(images, "inventory.img"))).toBe(true);
    expect(alive(target.pid)).toBe(true);
  });

  test("restore --wait-images restores a decoy while it waits, then the tree: no decoy is left, the tree verifies itself", async () => {
    const { target, out } = await startReady([memTarget(), "8", "1"]);
    cleanup.push(target);
    const src = join(tempDir("rehearsal-src"), "img");
    const dst = join(tempDir("rehearsal-dst"), "img");
    mkdirSync(dst, { mode: 0o700 });
    const tmp = tempDir("rehearsal-tmp");
    const before = decoys();
    const proc = Bun.spawn(ckptArgv(["restore", "-D", dst, "-d", "--wait-images", "60", "--json"]), { stdout: "pipe", stderr: "pipe", env: { ...process.env, TMPDIR: tmp } });
    const done = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    // The rehearsal is over once the restore holds the seed it waits with:
    // a ckpt-seed that lives on (the rehearsal's own restore has one for a few ms).
    const seen = new Map<number, number>();
    await waitFor("the restore's seed, after its rehearsal", () => {
      for (const p of restoreSeeds()) if (!seen.has(p)) seen.set(p, Date.now());
      return [...seen].some(([p, at]) => Date.now() - at > 500 && alive(p));
    }, 30000);

    const dumped = runCkpt(["dump", "-t", String(target.pid), "-D", src, "--no-rehearsal"]);
    expect(dumped.code).toBe(0);
    for (const name of readdirSync(src).filter((n) => n !== "inventory.img")) copyFileSync(join(src, name), join(dst, name));
    copyFileSync(join(src, "inventory.img"), join(dst, "inventory.img"));
    const [stdout, stderr, code] = await done;
    expect(stderr).toBe("");
    expect(code).toBe(0);
    const j = JSON.parse(stdout) as { root: number; rehearsal: Rehearsal; syscalls: Record<string, number>; figures: { waitedMs: number } };
    cleanup.push(killablePid(j.root));
    expect(j.rehearsal).toMatchObject({ dumped: true, restored: true });
    expect(j.rehearsal.skipped).toBeUndefined();
    // The rehearsal is part of the wait, and its calls are not the restore's:
    // two tiny programs of its own (the seed and the guard), where the rehearsal launched five.
    expect(j.figures.waitedMs).toBeGreaterThan(j.rehearsal.ms);
    expect(j.syscalls.memfd_create).toBe(2);
    expect(readdirSync(tmp)).toEqual([]);
    expect(decoys().filter((p) => !before.includes(p))).toEqual([]);
    expect(await selfCheck(target.pid, out)).toBe("ok");
  });

  test("restore --wait-images with the set already there restores at once, without a rehearsal", async () => {
    const { target, out } = await startReady([memTarget(), "4", "1"]);
    cleanup.push(target);
    const images = join(tempDir("rehearsal-here"), "img");
    expect(runCkpt(["dump", "-t", String(target.pid), "-D", images, "--no-rehearsal"]).code).toBe(0);
    const r = runCkpt(["restore", "-D", images, "-d", "--wait-images", "10", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as { rehearsal?: Rehearsal }).rehearsal).toBeUndefined();
    expect(await selfCheck(target.pid, out)).toBe("ok");
  });
});
