/**
 * fds the dump cannot save are refused with one line naming the process, the
 * fd and the kind — and the target is left running, untraced, with no image
 * set written. A terminal is saved only with --shell-job.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { FdTypes, FileEntrySchema } from "../src/image/gen/fdinfo_pb";
import { TtyInfoEntrySchema, TtyType } from "../src/image/gen/tty_pb";
import { runCkpt } from "./helpers/cli";
import { critFailures, entries, runsFree } from "./helpers/images";
import { oddFdTarget } from "./helpers/fd-workloads";
import { killablePid, startReady, tempDir, type Target } from "./helpers/target";

const targets: Target[] = [];
afterAll(() => {
  for (const t of targets) t.kill();
});

async function start(mode: string): Promise<number> {
  const r = await startReady([oddFdTarget(), mode]);
  targets.push(r.target);
  const pid = Number(r.words[0]);
  if (pid !== r.target.pid) targets.push(killablePid(pid));
  return pid;
}

/** Own fds of a process, to see that a refused dump left none behind in it. */
function fdCount(pid: number): number {
  return Array.from(new Bun.Glob("*").scanSync({ cwd: `/proc/${pid}/fd`, onlyFiles: false })).length;
}

describe("fds ckpt refuses", () => {
  const cases: [string, RegExp][] = [
    ["fanotify-fs", /fd 3 is a fanotify fd with a filesystem mark \(FAN_MARK_FILESYSTEM\) on device \d+:\d+ \(CRIU's image format has no form for such marks\), which ckpt cannot dump yet/],
    ["tcp-established", /fd \d is an established TCP connection \(127\.0\.0\.1:\d+ → 127\.0\.0\.1:\d+\); dump with --tcp-established to save it/],
    ["pending", /fd 3 is a listening unix socket with 1 connection\(s\) not yet accepted/],
    ["inflight", /file descriptors in flight \(SCM_RIGHTS\)/],
    // Refused, not peeked forever (an empty packet came back at the same offset without end).
    ["empty-datagram", /its queue holds a zero-length packet, which ckpt cannot dump yet/],
    ["tty", /fd 0 is a terminal \(\/dev\/pts\/\d+\); dump with --shell-job to save it/],
  ];
  for (const [mode, message] of cases) {
    test(`${mode}: one clear line; the process runs on, untraced, as it was`, async () => {
      const pid = await start(mode);
      const fds = fdCount(pid);
      const dir = join(tempDir("refuse"), "images");
      const r = runCkpt(["dump", "-t", String(pid), "-D", dir]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split("\n").length).toBe(1);
      expect(r.stderr).toContain(`process ${pid}`);
      expect(r.stderr).toMatch(message);
      expect(existsSync(dir)).toBe(false);
      expect(runsFree(pid)).toBe(true);
      expect(fdCount(pid)).toBe(fds);
    });
  }
});

describe("a process on a terminal, with --shell-job", () => {
  test("its pty is saved: index, window size, session, and stdio sharing one file", async () => {
    const pid = await start("tty");
    const dir = join(tempDir("tty"), "images");
    const r = runCkpt(["dump", "-t", String(pid), "-D", dir, "-R", "--shell-job"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const ttys = entries(dir, "files.img", FileEntrySchema).filter((f) => f.type === FdTypes.TTY);
    expect(ttys.length).toBe(1); // fds 0, 1 and 2 are dups of one open file
    const [info] = entries(dir, "tty-info.img", TtyInfoEntrySchema);
    expect(info?.type).toBe(TtyType.PTY);
    expect(info?.id).toBe(ttys[0]?.tty?.ttyInfoId!);
    expect(info?.sid).toBe(pid);
    expect([info?.winsize?.wsRow, info?.winsize?.wsCol]).toEqual([33, 101]);
    expect(info?.termios?.cCc.length).toBe(19);
    expect(critFailures(dir)).toEqual([]);
    expect(runsFree(pid)).toBe(true);
  });
});
