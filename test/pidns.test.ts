/**
 * --restore-in-new-pidns: a tree restored into a pid namespace of its own,
 * under an init of ckpt's, keeps every dumped pid there while the same pids
 * are held on the host by live processes (here: the dumped tree itself,
 * left running by dump -R and stopped).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { runCkpt } from "./helpers/cli";
import { sharedTreeTarget } from "./helpers/restore-workloads";
import { alive, killablePid, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { selfCheck } from "./helpers/workloads";

const cleanup: Target[] = [];
afterAll(() => {
  for (const t of cleanup) t.kill();
});

function status(pid: number): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
    const at = line.indexOf(":");
    if (at > 0) fields[line.slice(0, at)] = line.slice(at + 1).trim();
  }
  return fields;
}

/** The pid a process has in its own (innermost) pid namespace. */
const innerPid = (pid: number): number => Number(status(pid).NSpid!.split(/\s+/).at(-1));
const childrenOf = (pid: number): number[] =>
  readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);

describe("restore into a new pid namespace", () => {
  test("while the dumped pids are taken on the host, the tree comes back with them inside its namespace and verifies itself", async () => {
    const work = tempDir("pidns-work");
    const { words, out } = await startReady([sharedTreeTarget(), work]);
    const pids = words.map(Number) as [number, number, number];
    cleanup.push(...pids.map(killablePid));
    expect(await selfCheck(pids[0], out)).toBe("ok");
    const images = join(tempDir("pidns-img"), "img");
    const d = runCkpt(["dump", "-t", String(pids[0]), "-D", images, "-R"]);
    expect(d.stderr).toBe("");
    // The originals hold their pids, quietly.
    for (const p of pids) process.kill(p, "SIGSTOP");

    const taken = runCkpt(["restore", "-D", images, "-d"]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toContain(`pid ${pids[0]} (process ${pids[0]}) is taken on this host by process ${pids[0]}`);

    const pidfile = join(tempDir("pidns-pid"), "root.pid");
    const r = runCkpt(["restore", "-D", images, "-d", "--restore-in-new-pidns", "--pidfile", pidfile]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const root = Number(readFileSync(pidfile, "utf8"));
    expect(root).not.toBe(pids[0]);
    expect(r.stdout).toContain(`as tree ${root} in a new pid namespace`);
    const init = Number(status(root).PPid);
    cleanup.push(killablePid(init));
    expect(status(init).Name).toBe("ckpt-pidns-init");
    expect(innerPid(init)).toBe(1);
    // Inside, each has its dumped pid, under the parent it had.
    expect(innerPid(root)).toBe(pids[0]);
    const [child] = childrenOf(root);
    expect(innerPid(child!)).toBe(pids[1]);
    const [grandchild] = childrenOf(child!);
    expect(innerPid(grandchild!)).toBe(pids[2]);
    for (const p of [root, child!, grandchild!]) expect(status(p).TracerPid).toBe("0");
    // Each signals the next by the pid it knows, which only the namespace makes right.
    expect(await selfCheck(root, out)).toBe("ok");
    expect(await selfCheck(root, out)).toBe("ok");

    // The namespace ends with its init; the originals were never touched.
    process.kill(init, "SIGKILL");
    await waitFor("the namespace to empty", () => [init, root, child!, grandchild!].every((p) => !existsSync(`/proc/${p}`)), 10000);
    for (const p of pids) {
      expect(alive(p)).toBe(true);
      expect(status(p).TracerPid).toBe("0");
    }
  });

  test("without -d ckpt waits for the namespace to empty and exits as the root did", async () => {
    const work = tempDir("pidns-wait-work");
    const { words } = await startReady([sharedTreeTarget(), work]);
    const pids = words.map(Number) as [number, number, number];
    cleanup.push(...pids.map(killablePid));
    const images = join(tempDir("pidns-wait-img"), "img");
    expect(runCkpt(["dump", "-t", String(pids[0]), "-D", images, "-R"]).stderr).toBe("");
    const pidfile = join(tempDir("pidns-wait-pid"), "root.pid");
    const ckpt = Bun.spawn([process.execPath, `${import.meta.dir}/../src/cli/main.ts`, "restore", "-D", images, "--restore-in-new-pidns", "--pidfile", pidfile], {
      stdout: "pipe", stderr: "pipe",
    });
    await waitFor("the restored root", () => existsSync(pidfile) && readFileSync(pidfile, "utf8").endsWith("\n"), 20000);
    const root = Number(readFileSync(pidfile, "utf8"));
    await waitFor("the restored tree", () => existsSync(`/proc/${root}`) && childrenOf(root).length === 1);
    const child = childrenOf(root)[0]!;
    await waitFor("the restored grandchild", () => childrenOf(child).length === 1);
    const grandchild = childrenOf(child)[0]!;
    cleanup.push(...[root, child, grandchild].map(killablePid));
    // The root ends first; its orphans go to the init, which waits for them too.
    process.kill(root, "SIGTERM");
    await Bun.sleep(200);
    expect(alive(child)).toBe(true);
    process.kill(child, "SIGKILL");
    process.kill(grandchild, "SIGKILL");
    expect(await ckpt.exited).toBe(128 + 15);
    expect(await new Response(ckpt.stderr).text()).toBe("");
  });
});
