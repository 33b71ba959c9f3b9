/**
 * Rehearsals: the code of a dump, or of a restore, run once on a decoy
 * process (decoy.ts) before the real work, at a moment nothing waits on.
 *
 * Why: ckpt runs on Bun, whose engine runs a function slowly the first times
 * it runs (interpreted, its caches empty, the protobuf codecs not yet
 * compiled). A fresh ckpt is cold exactly where it matters: a dump of a
 * sleeping process is frozen for 27–34 ms on its first run and for 8–15 ms on
 * a second; a restore takes ~60 ms from the images to a running tree on its
 * first run and ~33 on a second (measured here, one process, one thread).
 * The frozen window and a migration's downtime are made of first runs. So:
 *  - `ckpt dump` and `ckpt pre-dump` dump a decoy (into a private temporary
 *    directory, removed after) before freezing the tree, once their page
 *    server is connected or their lazy-pages listener is up (DumpOptions.
 *    beforeFreeze), so that a destination can connect meanwhile;
 *  - `ckpt restore --wait-images`, started ahead of the dump, dumps a decoy
 *    and restores it into a new pid namespace of its own while it waits,
 *    and kills it.
 * A rehearsal costs ~50–120 ms of total time and never fails the command: a
 * problem skips it, and the figures say why (`rehearsal.skipped`).
 */
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dump } from "../dump/dump";
import { restore } from "../restore/restore";
import { statOrNull } from "../sys/file";
import { kill, waitpid } from "../sys/libc";
import { SIG } from "../sys/nr";
import { launchDecoy } from "./decoy";

export interface RehearsalFigures {
  /** What the rehearsal took (not part of the command's other figures). */
  ms: number;
  /** Dumped the decoy; `restored`: restored it too. */
  dumped: boolean;
  restored: boolean;
  /** Why the rehearsal was cut short or not made (it never fails the command). */
  skipped?: string;
}

const DIR_PREFIX = "ckpt-rehearsal-";

/**
 * A private temporary directory for the decoy's images, named for this
 * ckpt's pid. Those of a ckpt that was killed mid-rehearsal (it could not
 * remove its own) are removed first.
 */
function scratchDir(): string {
  const tmp = tmpdir();
  for (const name of readdirSync(tmp)) {
    const owner = new RegExp(`^${DIR_PREFIX}(\\d+)-`).exec(name)?.[1];
    if (owner !== undefined && Number(owner) !== process.pid && statOrNull(`/proc/${owner}`) === null) rmSync(join(tmp, name), { recursive: true, force: true });
  }
  return mkdtempSync(join(tmp, `${DIR_PREFIX}${process.pid}-`));
}

/** Kill a decoy (or a restored decoy's pid namespace init) and reap it if it is ckpt's child. */
function end(pid: number): void {
  try {
    kill(pid, SIG.KILL);
  } catch {
    // Gone already.
  }
  try {
    waitpid(pid, 0);
  } catch {
    // Not ckpt's child (a decoy goes to init when its launcher exits), or reaped.
  }
}

/**
 * Dump a decoy the way the real dump will run (`leaveRunning`: with -R, and
 * its snapshot), then kill it: what the dump's frozen window runs is warm.
 */
export function rehearseDump(leaveRunning: boolean): Promise<RehearsalFigures> {
  return rehearse(leaveRunning, null);
}

/**
 * Dump a decoy and restore it into a new pid namespace, then kill it: what a
 * restore runs is warm. `arrived` says whether the real images are there;
 * once they are the rehearsal stops at its next step, so as to hold up the
 * real restore as little as it can.
 */
export function rehearseRestore(arrived: () => boolean): Promise<RehearsalFigures> {
  return rehearse(false, arrived);
}

/** Dump a decoy, and with `arrived`, restore it unless the real images have arrived; never throws. */
async function rehearse(leaveRunning: boolean, arrived: (() => boolean) | null): Promise<RehearsalFigures> {
  const started = performance.now();
  const figures: RehearsalFigures = { ms: 0, dumped: false, restored: false };
  let dir: string | null = null;
  let decoy = 0;
  let init = 0;
  try {
    dir = scratchDir();
    const images = join(dir, "images");
    decoy = await launchDecoy();
    await dump({ pid: decoy, dir: images, leaveRunning });
    figures.dumped = true;
    if (arrived) {
      if (arrived()) figures.skipped = "the images arrived: the restore of the decoy was left out";
      else {
        const r = await restore({ dir: images, detach: true, newPidNs: true });
        init = r.pidNsInit ?? r.root;
        figures.restored = true;
      }
    }
  } catch (e) {
    figures.skipped = e instanceof Error ? e.message : String(e);
  } finally {
    if (decoy) end(decoy);
    if (init) end(init);
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
  figures.ms = performance.now() - started;
  return figures;
}
