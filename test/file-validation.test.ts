/**
 * How a restore knows the files are the ones dumped (CRIU's rules and
 * options): a shared library's ELF build-id is recorded beside its size, so
 * a library rebuilt from the same sources passes while another build of
 * the same size is refused by name (`--file-validation filesize` lets it
 * through); permission bits that changed are refused unless
 * `--skip-file-rwx-check`.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FileEntrySchema } from "../src/image/gen/fdinfo_pb";
import { runCkpt } from "./helpers/cli";
import { entries } from "./helpers/images";
import { alive, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { selfCheck } from "./helpers/workloads";

const cleanup: Target[] = [];
afterEach(() => {
  for (const t of cleanup.splice(0)) t.kill();
});

const LIBRARY = `int bid_answer(void) { return 42; }\n`;
const PROGRAM = `
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int bid_answer(void);
static volatile sig_atomic_t check_requested;
static void on_usr1(int s) { (void)s; check_requested = 1; }
int main(void) {
  signal(SIGUSR1, on_usr1);
  printf("ready %d\\n", getpid()); fflush(stdout);
  for (;;) {
    while (!check_requested) usleep(10000);
    check_requested = 0;
    printf(bid_answer() == 42 ? "ok\\n" : "bad answer\\n"); fflush(stdout);
  }
}
`;

function gcc(args: string[]): void {
  const r = Bun.spawnSync(["gcc", ...args], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`gcc ${args.join(" ")}: ${r.stderr.toString()}`);
}

/** Build the library into `dir` (`buildId`: the linker's --build-id value) by renaming a fresh file over it, as an upgrade does. */
async function buildLibrary(dir: string, buildId = "sha1"): Promise<void> {
  const src = join(dir, "bid.c");
  await Bun.write(src, LIBRARY);
  gcc(["-shared", "-fPIC", "-O1", `-Wl,--build-id=${buildId}`, "-o", join(dir, "libbid.so.new"), src]);
  renameSync(join(dir, "libbid.so.new"), join(dir, "libbid.so"));
}

/** A program linked against dir/libbid.so, started and dumped; returns its pid and output file. */
async function dumped(dir: string, images: string): Promise<{ pid: number; out: string; restore: (extra?: string[]) => { code: number; stderr: string } }> {
  await buildLibrary(dir);
  chmodSync(join(dir, "libbid.so"), 0o755);
  const src = join(dir, "main.c");
  await Bun.write(src, PROGRAM);
  gcc(["-O1", "-o", join(dir, "prog"), src, `-L${dir}`, "-lbid", `-Wl,-rpath,${dir}`]);
  const { target, out } = await startReady([join(dir, "prog")]);
  cleanup.push(target);
  const r = runCkpt(["dump", "-t", String(target.pid), "-D", images]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${target.pid}`), 10000);
  // Its stdout file is one of its files: each restore finds it as it was at the dump.
  const atDump = readFileSync(out);
  const restore = (extra: string[] = []): { code: number; stderr: string } => {
    writeFileSync(out, atDump);
    return runCkpt(["restore", "-D", images, "-d", ...extra]);
  };
  return { pid: target.pid, out, restore };
}

describe("file validation", () => {
  test("build-id: the library rebuilt from the same sources passes; another build of the same size is refused unless --file-validation filesize", async () => {
    const dir = tempDir("bid");
    const images = join(tempDir("bid-img"), "img");
    const { pid, out, restore } = await dumped(dir, images);
    const lib = join(dir, "libbid.so");
    const entry = entries(images, "files.img", FileEntrySchema).find((e) => e.reg?.name === lib);
    expect(entry?.reg?.buildId.length).toBe(5); // a SHA-1 build-id: 20 bytes
    const size = statSync(lib).size;

    // Rebuilt identically (a new inode, the same bytes): restores and runs.
    const inode = statSync(lib).ino;
    await buildLibrary(dir);
    chmodSync(lib, 0o755);
    expect(statSync(lib).ino).not.toBe(inode);
    let r = restore();
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await selfCheck(pid, out)).toBe("ok");
    process.kill(pid, "SIGKILL");
    await waitFor("the restored process to be gone", () => !existsSync(`/proc/${pid}`), 10000);

    // Another build, the same size: refused by name, naming the option.
    await buildLibrary(dir, "0x0123456789abcdef0123456789abcdef01234567");
    chmodSync(lib, 0o755);
    expect(statSync(lib).size).toBe(size);
    r = restore();
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain(`${lib} is another build now (build-id 0123456789abcdef0123456789abcdef01234567)`);
    expect(r.stderr).toContain("--file-validation filesize");
    expect(alive(pid)).toBe(false);

    // The size alone, as asked: restores (the code is the same).
    r = restore(["--file-validation", "filesize"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await selfCheck(pid, out)).toBe("ok");
    process.kill(pid, "SIGKILL");
  });

  test("changed permission bits are refused, naming --skip-file-rwx-check, which lets them pass", async () => {
    const dir = tempDir("rwx");
    const images = join(tempDir("rwx-img"), "img");
    const { pid, out, restore } = await dumped(dir, images);
    const lib = join(dir, "libbid.so");
    chmodSync(lib, 0o700);
    let r = restore();
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${lib} has mode 0700 now but had 0755 when dumped; restore with --skip-file-rwx-check`);
    expect(alive(pid)).toBe(false);
    r = restore(["--skip-file-rwx-check"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await selfCheck(pid, out)).toBe("ok");
    process.kill(pid, "SIGKILL");
  });

  test("a bad --file-validation value is a usage error", () => {
    const r = runCkpt(["restore", "-D", "/nonexistent", "--file-validation", "checksum"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--file-validation must be one of buildid, filesize");
  });
});
