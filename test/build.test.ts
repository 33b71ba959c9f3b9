/** The shipped artefact: dist/ckpt works on its own, from any directory. */
import { describe, expect, test } from "bun:test";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { runCkpt } from "./helpers/cli";
import { tempDir } from "./helpers/target";
import { FIXTURES } from "./helpers/fixtures";

const ROOT = `${import.meta.dir}/..`;

describe("dist/ckpt", () => {
  test("builds, and runs from a directory with no node_modules", () => {
    const build = Bun.spawnSync([process.execPath, "build.ts"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    expect(build.stderr.toString()).toBe("");
    expect(build.exitCode).toBe(0);

    const dir = tempDir("dist");
    const exe = join(dir, "ckpt");
    copyFileSync(`${ROOT}/dist/ckpt`, exe);
    require("node:fs").chmodSync(exe, 0o755);

    const version = runCkpt(["--version"], { exe, cwd: dir });
    expect(version.code).toBe(0);
    expect(version.stdout.trim()).toBe(require("../package.json").version);

    const fromSource = runCkpt(["show", `${FIXTURES}/core-20177.img`, "--json"]);
    const compiled = runCkpt(["show", `${FIXTURES}/core-20177.img`, "--json"], { exe, cwd: dir });
    expect(compiled.code).toBe(0);
    expect(compiled.stdout).toBe(fromSource.stdout);

    // check re-executes the binary itself as its probe process.
    const check = runCkpt(["check", "--json"], { exe, cwd: dir });
    const out = JSON.parse(check.stdout) as { features: { name: string; ok: boolean }[] };
    if (process.getuid?.() === 0) expect(out.features.find((f) => f.name === "ptrace_seize")?.ok).toBe(true);
  });
});
