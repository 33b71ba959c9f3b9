/**
 * How this kernel can tell which pages a process wrote since the previous
 * round. Soft-dirty first, where the kernel has it (CONFIG_MEM_SOFT_DIRTY):
 * the bits live in the page tables, so nothing has to be kept alive between
 * runs. Otherwise userfaultfd write-protection in async mode, read back with
 * PAGEMAP_SCAN (Linux 6.7+), kept alive by a tracker process (tracker.ts).
 * Both are probed for real (src/check/features.ts), once per run.
 */
import { probeSoftDirty, probeUffdWpAsync } from "../../check/features";

export type TrackingMethod = "soft-dirty" | "uffd-wp";

export interface TrackingChoice {
  method: TrackingMethod | null;
  /** Why each method is or is not usable, for `ckpt check` and errors. */
  soft: string;
  uffd: string;
}

let cached: TrackingChoice | null = null;

function attempt(probe: () => string): { ok: boolean; detail: string } {
  try {
    return { ok: true, detail: probe() };
  } catch (e) {
    return { ok: false, detail: e instanceof Error ? e.message : String(e) };
  }
}

/** The method to use, given whether each probe worked. */
export function preferredTracking(softDirtyWorks: boolean, uffdWpWorks: boolean): TrackingMethod | null {
  return softDirtyWorks ? "soft-dirty" : uffdWpWorks ? "uffd-wp" : null;
}

export function chooseTracking(): TrackingChoice {
  if (cached) return cached;
  const soft = attempt(probeSoftDirty);
  const uffd = attempt(probeUffdWpAsync);
  cached = { method: preferredTracking(soft.ok, uffd.ok), soft: soft.detail, uffd: uffd.detail };
  return cached;
}
