import { describe, expect, test } from "bun:test";
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pkg from "../package.json";
import { parseExactJson, runCkpt } from "./helpers/cli";
import { tempDir } from "./helpers/target";
import { FIXTURES } from "./helpers/fixtures";


function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split("\n");
  expect(lines.length).toBe(1);
  expect(lines[0]!.startsWith("ckpt: ")).toBe(true);
  return lines[0]!;
}

describe("exit codes and errors", () => {
  test("--version prints the package version", () => {
    const r = runCkpt(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  test("--help lists the commands", () => {
    const r = runCkpt(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("show");
    expect(r.stdout).toContain("check");
    const sub = runCkpt(["show", "--help"]);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toContain("PATH");
  });

  test("usage errors exit 2 with one line on stderr", () => {
    expect(runCkpt([]).code).toBe(2);
    for (const args of [["frob"], ["show", "--bogus", "x"], ["show"], ["show", "a", "b"], ["check", "--nope"], ["check", "extra"], ["--nope"]]) {
      const r = runCkpt(args);
      expect(r.code).toBe(2);
      oneLine(r.stderr);
    }
  });

  test("a missing file exits 1 naming the call and errno", () => {
    const r = runCkpt(["show", "/nonexistent/x.img"]);
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toContain('"/nonexistent/x.img"');
    expect(r.stderr).toContain("ENOENT");
    expect(r.stdout).toBe("");
  });

  test("a corrupt image exits 1 naming file and offset", () => {
    const dir = tempDir("cli");
    const bad = join(dir, "pstree.img");
    const good = readFileSync(`${FIXTURES}/pstree.img`);
    writeFileSync(bad, good.subarray(0, good.length - 5));
    const r = runCkpt(["show", bad]);
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(new RegExp(`${bad}: at byte \\d+: truncated entry body`));
  });
});

describe("show", () => {
  test("a file prints crit's shape", () => {
    const r = runCkpt(["show", `${FIXTURES}/pstree.img`, "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      magic: "PSTREE",
      entries: [
        { pid: 20177, ppid: 0, pgid: 20177, sid: 20177, threads: [20177] },
        { pid: 20179, ppid: 20177, pgid: 20177, sid: 20177, threads: [20179] },
      ],
    });
  });

  test("a directory prints one object per image file", () => {
    const r = runCkpt(["show", FIXTURES]);
    expect(r.code).toBe(0);
    const all = parseExactJson(r.stdout) as Record<string, { magic: string; pages?: number; bytes?: number }>;
    const files = readdirSync(FIXTURES).filter((f) => f !== "json");
    expect(Object.keys(all).sort()).toEqual(files.sort());
    expect(all["stats-dump"]!.magic).toBe("STATS");
    expect(all["pages-1.img"]).toEqual({ magic: "PAGES", pages: 31, bytes: 126976 });
    expect(all["inventory.img"]!.magic).toBe("INVENTORY");
  });

  test("a directory lists images of kinds ckpt does not define by magic, and fails on damaged ones", () => {
    const dir = tempDir("showdir");
    copyFileSync(`${FIXTURES}/pstree.img`, join(dir, "pstree.img"));
    // A CRIU cgroup image: common head magic, then CGROUP's magic, one empty entry.
    writeFileSync(join(dir, "cgroup.img"), Buffer.from([0x19, 0x43, 0x56, 0x54, 0x30, 0x33, 0x38, 0x59, 0, 0, 0, 0]));
    writeFileSync(join(dir, "notes.txt"), "not an image");
    // Raw files CRIU writes without any magic.
    writeFileSync(join(dir, "tmpfs-dev-63.tar.gz.img"), Buffer.from([0x1f, 0x8b, 8, 0, 0, 0]));
    writeFileSync(join(dir, "route-9.img"), Buffer.from([1, 2]));
    const r = runCkpt(["show", dir, "--json"]);
    expect(r.code).toBe(0);
    const all = JSON.parse(r.stdout);
    expect(Object.keys(all).sort()).toEqual(["cgroup.img", "pstree.img", "route-9.img", "tmpfs-dev-63.tar.gz.img"]);
    expect(all["cgroup.img"]).toEqual({ magic: "0x59383330", decoded: false });
    expect(all["tmpfs-dev-63.tar.gz.img"]).toEqual({ magic: "RAW", bytes: 6 });
    expect(all["route-9.img"]).toEqual({ magic: "RAW", bytes: 2 });
    expect(all["pstree.img"].magic).toBe("PSTREE");

    writeFileSync(join(dir, "core-1.img"), Buffer.from([0x19, 0x43, 0x56, 0x54]));
    const bad = runCkpt(["show", dir]);
    expect(bad.code).toBe(1);
    expect(oneLine(bad.stderr)).toContain("core-1.img: at byte 4: truncated");
    expect(bad.stdout).toBe("");
  });

  test("64-bit register values print exactly", () => {
    const r = runCkpt(["show", `${FIXTURES}/core-20177.img`, "--json"]);
    // ax of a task stopped in a syscall holds -ERESTARTNOHAND... as an unsigned 64-bit value.
    expect(r.stdout).toContain('"ax":18446744073709551612');
  });
});

describe("check", () => {
  test("reports every feature and exits 0 exactly when a dump can work", () => {
    const r = runCkpt(["check", "--json"]);
    const out = JSON.parse(r.stdout) as { dumpCanWork: boolean; dirtyTracking: string | null; features: { name: string; ok: boolean; requiredForDump: boolean; detail: string }[] };
    expect(r.code).toBe(out.dumpCanWork ? 0 : 1);
    const names = out.features.map((f) => f.name);
    for (const n of ["ptrace_seize", "kcmp", "pidfd_getfd", "process_vm_readv", "pagemap_scan", "soft_dirty", "uffd_wp_async", "open_by_handle_at", "cap_checkpoint_restore"]) {
      expect(names).toContain(n);
    }
    expect(out.dumpCanWork).toBe(out.features.every((f) => f.ok || !f.requiredForDump));
    for (const f of out.features) expect(f.detail.length).toBeGreaterThan(0);
    // Independent witness: smaps shows the "sd" VmFlag only on kernels with soft-dirty.
    const softDirty = out.features.find((f) => f.name === "soft_dirty")!;
    expect(softDirty.ok).toBe(/^VmFlags:.*\bsd\b/m.test(readFileSync("/proc/self/smaps", "utf8")));
    // pre-dump prefers soft-dirty and falls back to userfaultfd write-protect.
    const uffd = out.features.find((f) => f.name === "uffd_wp_async")!;
    expect(out.dirtyTracking).toBe(softDirty.ok ? "soft-dirty" : uffd.ok ? "uffd-wp" : null);
    // We run as root here, so seizing a process of our own must work.
    if (process.getuid?.() === 0) expect(out.features.find((f) => f.name === "ptrace_seize")!.ok).toBe(true);
  });

  test("plain output has one line per feature and a verdict", () => {
    const r = runCkpt(["check"]);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines.length).toBe(12);
    expect(lines.at(-2)).toMatch(/^dump can(not)? work/);
    expect(lines.at(-1)).toMatch(/^pre-dump (tracks written pages with (soft-dirty|uffd-wp)|cannot work)/);
  });

  test("leaves no probe process behind", () => {
    const r = Bun.spawnSync([process.execPath, `${import.meta.dir}/../src/cli/main.ts`, "check"], { stdout: "pipe", stderr: "pipe" });
    expect(r.exitCode).toBe(0);
    // Probe targets carry the pid of the ckpt that started them.
    const mark = `--internal-probe-target\0${r.pid}\0`;
    const left = readdirSync("/proc")
      .filter((d) => /^\d+$/.test(d))
      .filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(mark); // empty for zombies
        } catch {
          return false; // exited meanwhile
        }
      });
    expect(left).toEqual([]);
  });
});
