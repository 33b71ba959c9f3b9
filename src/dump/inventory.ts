/** inventory.img: the image set's version and the facts a later run checks it against. */
import { create } from "@bufbuild/protobuf";
import { InventoryEntrySchema, Lsmtype, PluginsEntrySchema, type InventoryEntry } from "../image/gen/inventory_pb";
import type { ProcFs } from "../proc/procfs";

/** Host uptime in microseconds, from /proc/uptime. */
export function uptimeMicros(proc: ProcFs): bigint {
  const seconds = proc.readGlobalText("uptime").split(" ")[0] ?? "0";
  const [whole = "0", frac = "0"] = seconds.split(".");
  return BigInt(whole) * 1_000_000n + BigInt(frac.padEnd(6, "0").slice(0, 6));
}

/**
 * An inventory in the form CRIU 4.x restores: version 2, fdinfo and
 * namespaces per id. `frozenUptime`: host uptime (µs) when the tasks were
 * frozen — a later round tells reused pids by start times after it.
 */
export function inventoryEntry(runId: string, frozenUptime: bigint): InventoryEntry {
  return create(InventoryEntrySchema, {
    imgVersion: 2,
    fdinfoPerId: true,
    nsPerId: true,
    // The fields CRIU 4.2 always writes. No cgroup.img is written and no
    // task names a cgroup set, so a restore leaves cgroups as they are; the
    // set id must not be 0 all the same. Network locking: iptables (0), not
    // used without --tcp-established. No plugins needed.
    rootCgSet: 1,
    lsmtype: Lsmtype.NO_LSM,
    dumpUptime: frozenUptime,
    networkLockMethod: 0,
    pluginsEntry: create(PluginsEntrySchema, { plugins: [] }),
    dumpCriuRunId: runId,
  });
}
