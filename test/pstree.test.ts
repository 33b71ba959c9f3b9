import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { inventoryEntry, uptimeMicros } from "../src/dump/inventory";
import { collectTree, pstreeEntries } from "../src/dump/pstree";
import { decodeImage } from "../src/image/decode";
import { ImageEncoder } from "../src/image/encode";
import { InventoryEntrySchema } from "../src/image/gen/inventory_pb";
import { PstreeEntrySchema } from "../src/image/gen/pstree_pb";
import { kind } from "../src/image/magic";
import { imageToJson } from "../src/image/to-json";
import { ProcFs } from "../src/proc/procfs";
import { buildC, startReady, type Target } from "./helpers/target";

// Root (two threads) → child → grandchild. The child is forked by the second
// thread, so only task/TID/children of that thread names it.
const TREE_C = `
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *forker(void *a) {
  (void)a;
  if (fork() == 0) {
    if (fork() == 0) { for (;;) pause(); }
    for (;;) pause();
  }
  for (;;) pause();
  return 0;
}
int main(void) {
  pthread_t t; pthread_create(&t, 0, forker, 0);
  sleep(1);
  puts("ready"); fflush(stdout);
  for (;;) pause();
}`;

let root: Target;
const pids: number[] = [];

function statFields(pid: number): string[] {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  return s.slice(s.lastIndexOf(")") + 2).split(" ");
}

beforeAll(async () => {
  root = (await startReady([buildC("tree", TREE_C)])).target;
});

afterAll(() => {
  for (const pid of [...pids].reverse()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  root?.kill();
});

describe("collectTree", () => {
  test("finds the whole tree, parents first, with threads, groups and sessions", () => {
    const proc = new ProcFs();
    try {
      const tree = collectTree(proc, root.pid);
      pids.push(...tree.map((t) => t.pid));
      expect(tree.length).toBe(3);
      const [r, child, grandchild] = tree as [typeof tree[0], typeof tree[0], typeof tree[0]];
      expect(r.pid).toBe(root.pid);
      expect(r.ppid).toBe(0);
      expect(r.threads.length).toBe(2);
      expect(r.threads[0]).toBe(root.pid);
      expect(child.ppid).toBe(root.pid);
      expect(grandchild.ppid).toBe(child.pid);
      for (const t of tree) {
        const f = statFields(t.pid);
        expect(t.pgid).toBe(Number(f[2]));
        expect(t.sid).toBe(Number(f[3]));
      }
      const entries = pstreeEntries(tree);
      const enc = new ImageEncoder(kind("PSTREE"));
      for (const e of entries) enc.add(PstreeEntrySchema, e);
      const back = imageToJson(decodeImage(enc.bytes(), "pstree.img"));
      expect(back.entries).toEqual(tree.map((t) => ({ pid: t.pid, ppid: t.ppid, pgid: t.pgid, sid: t.sid, threads: t.threads })));
    } finally {
      proc.close();
    }
  });
});

describe("inventoryEntry", () => {
  test("version 2, fdinfo and namespaces per id, dump uptime from /proc/uptime", () => {
    const proc = new ProcFs();
    try {
      const uptime = uptimeMicros(proc);
      const secs = Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]);
      expect(Math.abs(Number(uptime) / 1e6 - secs)).toBeLessThan(5);
      const inv = inventoryEntry("run-1", uptime);
      expect(inv.dumpUptime).toBe(uptime);
      const enc = new ImageEncoder(kind("INVENTORY")).add(InventoryEntrySchema, inv);
      const back = imageToJson(decodeImage(enc.bytes(), "inventory.img")).entries[0] as Record<string, unknown>;
      expect(back.img_version).toBe(2);
      expect(back.fdinfo_per_id).toBe(true);
      expect(back.ns_per_id).toBe(true);
      expect(back.lsmtype).toBe("NO_LSM");
      expect(back.dump_criu_run_id).toBe("run-1");
    } finally {
      proc.close();
    }
  });
});
