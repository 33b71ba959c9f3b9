/**
 * The built-in demo (`npm run demo`, after `npm run build`):
 *   1. `ckpt check` on this kernel;
 *   2. start a small process tree (a shell with two children);
 *   3. record the tree's inventory and pstree images with ckpt's engine;
 *   4. `ckpt show` the image directory, then end the workload.
 * It runs the compiled dist/ckpt, as a user would.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { collectTree, pstreeEntries } from "../src/dump/pstree";
import { inventoryEntry } from "../src/dump/inventory";
import { InventoryEntrySchema } from "../src/image/gen/inventory_pb";
import { PstreeEntrySchema } from "../src/image/gen/pstree_pb";
import { writeImageFile } from "../src/image/image-file";
import { kind } from "../src/image/magic";
import { ProcFs } from "../src/proc/procfs";

const CKPT = join(import.meta.dir, "..", "dist", "ckpt");

function step(title: string): void {
  console.log(`\n=== ${title}`);
}

function ckpt(...args: string[]): number {
  console.log(`$ dist/ckpt ${args.join(" ")}`);
  const r = Bun.spawnSync([CKPT, ...args], { stdout: "inherit", stderr: "inherit" });
  return r.exitCode ?? 1;
}

step("1. Which kernel features can ckpt use here?");
const checkCode = ckpt("check");

step("2. Start a workload: a shell with two sleeping children");
const workload = Bun.spawn(["sh", "-c", "sleep 600 & sleep 600 & wait"], { stdin: "ignore", stdout: "ignore", stderr: "inherit" });
workload.exited.catch(() => undefined);
const proc = new ProcFs();
let workloadPids: number[] = [workload.pid];
try {
  // Wait until both children exist.
  let tree = collectTree(proc, workload.pid);
  for (let i = 0; i < 200 && tree.length < 3; i++) {
    await Bun.sleep(10);
    tree = collectTree(proc, workload.pid);
  }
  workloadPids = tree.map((t) => t.pid);
  console.log(`workload root pid ${workload.pid}, ${tree.length} processes`);

  step("3. Record the tree as CRIU-format images");
  const dir = mkdtempSync(join(tmpdir(), "ckpt-demo-"));
  writeImageFile(join(dir, "pstree.img"), kind("PSTREE"), PstreeEntrySchema, pstreeEntries(tree));
  writeImageFile(join(dir, "inventory.img"), kind("INVENTORY"), InventoryEntrySchema, [inventoryEntry(proc, crypto.randomUUID())]);
  console.log(`wrote ${dir}/inventory.img and pstree.img (/proc opens: ${proc.counters.dirOpens} directories, ${proc.counters.fileOpens} files)`);

  step("4. Show the images (crit's JSON shape)");
  const showCode = ckpt("show", dir);
  if (Bun.which("crit")) {
    console.log("\n$ crit decode -i pstree.img   (CRIU's own decoder reads the same file)");
    Bun.spawnSync(["crit", "decode", "-i", join(dir, "pstree.img")], { stdout: "inherit", stderr: "inherit" });
  }
  process.exitCode = checkCode || showCode;
} finally {
  proc.close();
  for (const pid of workloadPids.reverse()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
}
