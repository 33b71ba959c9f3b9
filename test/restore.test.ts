/**
 * dump → kill → restore on real workloads that check themselves afterwards:
 * memory, threads blocked in system calls, fds with positions and sharing,
 * signal actions and queued signals; a 3-process tree with its pids, links
 * and a shared file; pids that are taken; failures that leave nothing behind.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { runCkpt } from "./helpers/cli";
import { CoreEntrySchema, SeccompMode, TaskKobjIdsEntrySchema, type CoreEntry, type TaskKobjIdsEntry } from "../src/image/gen/core_pb";
import { PosixTimerEntrySchema } from "../src/image/gen/timer_pb";
import { create } from "@bufbuild/protobuf";
import { readImageFile, writeImageFile } from "../src/image/image-file";
import { kind } from "../src/image/magic";
import { kcmp } from "../src/sys/calls";
import { KCMP } from "../src/sys/nr";
import { FD, fdTarget } from "./helpers/fd-workloads";
import { credTarget, kernelStateTarget, lockTarget, restoreTarget, sharedTreeTarget } from "./helpers/restore-workloads";
import { dropDigests, entries } from "./helpers/images";
import { FileLockEntrySchema } from "../src/image/gen/file-lock_pb";
import { alive, killablePid, startReady, tempDir, waitFor, type Target } from "./helpers/target";
import { memTarget, selfCheck } from "./helpers/workloads";

const cleanup: Target[] = [];
afterEach(() => {
  for (const t of cleanup.splice(0)) t.kill();
});


function statFields(pid: number): { ppid: number; pgid: number; sid: number } {
  const rest = (readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ");
  return { ppid: Number(rest[1]), pgid: Number(rest[2]), sid: Number(rest[3]) };
}

/** The "flags:" line of every fd's fdinfo, by fd number. */
function fdFlags(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const fd of readdirSync(`/proc/${pid}/fd`)) out[fd] = /^flags:\s*(\S+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8"))?.[1] ?? "";
  return out;
}

async function dumpAndKill(pids: number[], dir: string): Promise<void> {
  const root = pids[0] ?? 0;
  const r = runCkpt(["dump", "-t", String(root), "-D", dir]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  // Gone for good: a zombie still holds its pid.
  await waitFor("the dumped tree to be gone", () => pids.every((p) => !existsSync(`/proc/${p}`)), 10000);
}

function restoreDetached(dir: string, extra: string[] = []): { code: number; stderr: string; json: Record<string, unknown> } {
  const r = runCkpt(["restore", "-D", dir, "-d", "--json", ...extra]);
  return { code: r.code, stderr: r.stderr, json: r.code === 0 ? (JSON.parse(r.stdout) as Record<string, unknown>) : {} };
}

describe("ckpt restore", () => {
  test("a dumped and killed process comes back whole and verifies itself", async () => {
    const work = tempDir("restore-work");
    const images = join(tempDir("restore-img"), "img");
    const { target, words, out } = await startReady([restoreTarget(), work]);
    cleanup.push(target);
    const [pid, reader, sleeper] = words.map(Number) as [number, number, number];
    const flagsBefore = fdFlags(pid);
    await dumpAndKill([pid], images);

    const r = restoreDetached(images);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.json.root).toBe(pid);
    expect(r.json.threads).toBe(3);
    expect(alive(pid)).toBe(true);
    // The same tids, and the threads are back where they were: in read() and nanosleep().
    for (const tid of [reader, sleeper]) expect(existsSync(`/proc/${pid}/task/${tid}`)).toBe(true);
    expect(readFileSync(`/proc/${pid}/task/${reader}/syscall`, "utf8").split(" ")[0]).toBe("0");
    expect(readFileSync(`/proc/${pid}/task/${sleeper}/syscall`, "utf8").split(" ")[0]).toBe("230"); // clock_nanosleep
    expect(readFileSync(`/proc/${pid}/comm`, "utf8").trim()).toStartWith("restoretarget");
    expect(readlinkSync(`/proc/${pid}/exe`)).toBe(restoreTarget());
    expect(await selfCheck(pid, out)).toBe("ok");
    // Nothing of restore's is left in the task: no tracer, no extra mapping or fd.
    expect(readFileSync(`/proc/${pid}/status`, "utf8")).toContain("TracerPid:\t0");
    const fds = (await Array.fromAsync(new Bun.Glob("*").scan({ cwd: `/proc/${pid}/fd`, onlyFiles: false }))).map(Number).sort((a, b) => a - b);
    expect(fds).toEqual([0, 1, 2, 3, 4, 10, 11, 12, 13, 20, 21]);
    // Every fd's status flags as F_GETFL shows them: nothing of ckpt's own (O_NOFOLLOW ...) left in.
    expect(fdFlags(pid)).toEqual(flagsBefore);
  });

  test("a 3-process tree comes back with its pids, links, groups and one shared file", async () => {
    const work = tempDir("restore-tree");
    const images = join(tempDir("restore-img"), "img");
    // setsid: the tree has its own session and group, which restore gives back.
    const { words, out } = await startReady(["setsid", sharedTreeTarget(), work]);
    const pids = words.map(Number) as [number, number, number];
    cleanup.push(...pids.map(killablePid));
    const before = pids.map(statFields);
    expect(before[0]?.sid).toBe(pids[0]);
    await dumpAndKill(pids, images);

    const r = restoreDetached(images);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const after = pids.map(statFields);
    expect(after[1]?.ppid).toBe(pids[0]);
    expect(after[2]?.ppid).toBe(pids[1]);
    after.forEach((a, i) => {
      expect(a.sid).toBe(before[i]?.sid ?? -1);
      expect(a.pgid).toBe(before[i]?.pgid ?? -1);
    });
    expect(await selfCheck(pids[0], out)).toBe("ok");
    expect(readFileSync(join(work, "shared"), "utf8")).toBe("startRCG");
  });

  test("a second restore fails while the pids are taken, leaves nothing, and works once they are free", async () => {
    const work = tempDir("restore-twice");
    const images = join(tempDir("restore-img"), "img");
    const { words, out } = await startReady([sharedTreeTarget(), work]);
    const pids = words.map(Number) as [number, number, number];
    cleanup.push(...pids.map(killablePid));
    await dumpAndKill(pids, images);
    const dumpedOut = readFileSync(out);
    expect(restoreDetached(images).code).toBe(0);

    const again = runCkpt(["restore", "-D", images, "-d"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`pid ${pids[0]}`);
    // Naming who holds it: the first restore's root, with its command line.
    expect(again.stderr).toContain(`is taken on this host by process ${pids[0]} (${sharedTreeTarget()} ${work})`);
    expect(again.stderr.trim().split("\n")).toHaveLength(1);
    // The first tree is untouched.
    expect(pids.every(alive)).toBe(true);
    expect(await selfCheck(pids[0], out)).toBe("ok");

    for (const p of pids) killablePid(p).kill();
    await waitFor("the first tree to exit", () => pids.every((p) => !existsSync(`/proc/${p}`)), 10000);
    // The check wrote to the shared file and to stdout; put both back as the dump saw them.
    writeFileSync(join(work, "shared"), "start");
    writeFileSync(out, dumpedOut);
    const third = restoreDetached(images);
    expect(third.stderr).toBe("");
    expect(third.code).toBe(0);
    expect(await selfCheck(pids[0], out)).toBe("ok");
  });

  test("the same after a pre-dump, with 96 MiB besides: the tracked dump scans the areas maps names while smaps is read, and scans again on smaps' areas", async () => {
    const base = tempDir("restore-kstate-chain");
    const { target, out } = await startReady([kernelStateTarget(), "96"]);
    cleanup.push(target);
    const pid = target.pid;
    const pre = runCkpt(["pre-dump", "-t", String(pid), "-D", join(base, "1")]);
    expect(pre.stderr).toBe("");
    expect(pre.code).toBe(0);
    const r0 = runCkpt(["dump", "-t", String(pid), "-D", join(base, "2"), "--prev-images-dir", "../1", "--json"]);
    expect(r0.stderr).toBe("");
    expect(r0.code).toBe(0);
    const tracking = (JSON.parse(r0.stdout) as { tracking: { wholeProcesses: unknown[] } }).tracking;
    expect(tracking.wholeProcesses).toEqual([]);
    await waitFor("the dumped tree to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    const r = restoreDetached(join(base, "2"));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a restore right after the dump waits for the killed tree's pids, held by a zombie its parent reaps a moment later", async () => {
    // The workload's parent reaps it only after 3 s, long after the dump killed it.
    const reaper = "import os, sys, time\npid = os.fork()\nif pid == 0: os.execv(sys.argv[1], sys.argv[1:])\ntime.sleep(3)\nos.waitpid(pid, 0)";
    const { target, out } = await startReady(["python3", "-c", reaper, memTarget(), "16", "1"]);
    cleanup.push(target);
    const pid = Number(readFileSync(`/proc/${target.pid}/task/${target.pid}/children`, "utf8").trim());
    cleanup.push(killablePid(pid));
    const images = join(tempDir("restore-zombie"), "img");
    const dumped = runCkpt(["dump", "-t", String(pid), "-D", images]);
    expect(dumped.stderr).toBe("");
    expect(dumped.code).toBe(0);
    const r = restoreDetached(images);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a restore that fails half-way kills every task it made and says what failed", async () => {
    const work = tempDir("restore-fail");
    const images = join(tempDir("restore-img"), "img");
    const { words } = await startReady([sharedTreeTarget(), work]);
    const pids = words.map(Number) as [number, number, number];
    cleanup.push(...pids.map(killablePid));
    await dumpAndKill(pids, images);
    // The shared file changes size after the dump: its fds cannot be restored faithfully.
    writeFileSync(join(work, "shared"), "start and more");
    const r = runCkpt(["restore", "-D", images, "-d"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(join(work, "shared"));
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    for (const p of pids) expect(alive(p)).toBe(false);
  });

  test("what the kernel keeps per area and per process comes back: MAP_LOCKED, madvise, MAP_DROPPABLE, membarrier, loginuid, bounding set", async () => {
    const images = join(tempDir("restore-img"), "img");
    const { target, words, out } = await startReady([kernelStateTarget()]);
    cleanup.push(target);
    const pid = target.pid;
    await dumpAndKill([pid], images);
    const core = readImageFile(join(images, `core-${pid}.img`)).entries[0]?.message as CoreEntry;
    expect(core.tc?.membarrierRegistrationMask).toBe(1 << 4);
    expect(String(core.tc?.loginuid)).toBe(words[1] ?? "");
    const r = restoreDetached(images);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("file locks: refused without --file-locks; with it, POSIX, flock and OFD locks are held again after restore", async () => {
    const work = tempDir("restore-locks");
    const images = join(tempDir("restore-img"), "img");
    const { target, out } = await startReady([lockTarget(), work]);
    cleanup.push(target);
    const pid = target.pid;
    const inodes = ["posix", "flock", "ofd"].map((f) => statSync(join(work, f)).ino);
    /** /proc/locks lines on the three files, without their ordinal. */
    const locksOnFiles = (): string[] =>
      readFileSync("/proc/locks", "utf8").split("\n").filter((l) => inodes.some((ino) => l.includes(`:${ino} `))).map((l) => l.replace(/^\d+:\s*/, "")).sort();
    const before = locksOnFiles();
    expect(before).toHaveLength(4);

    const refused = runCkpt(["dump", "-t", String(pid), "-D", images]);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(refused.stderr).toContain("--file-locks");
    expect(existsSync(images)).toBe(false);
    expect(locksOnFiles()).toEqual(before);

    const r = runCkpt(["dump", "-t", String(pid), "-D", images, "--file-locks"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    await waitFor("the dumped process to be gone", () => !existsSync(`/proc/${pid}`), 10000);
    expect(locksOnFiles()).toEqual([]);
    const saved = entries(images, "filelocks.img", FileLockEntrySchema).map((l) => `${l.flag} ${l.type} ${l.pid} ${l.start} ${l.len}`).sort();
    expect(saved).toEqual([`1 0 ${pid} 1000 0`, `1 1 ${pid} 100 100`, `2 1 ${pid} 0 0`, `4 1 ${pid} 0 10`]);

    const restored = restoreDetached(images, ["--file-locks"]);
    expect(restored.stderr).toBe("");
    expect(restored.code).toBe(0);
    expect(locksOnFiles()).toEqual(before);
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("what a CRIU image may hold that ckpt cannot restore yet (POSIX timers, seccomp) is refused by image and field, before anything is made", async () => {
    const images = join(tempDir("restore-img"), "img");
    const { target } = await startReady([kernelStateTarget()]);
    cleanup.push(target);
    const pid = target.pid;
    await dumpAndKill([pid], images);
    dropDigests(images);
    const file = join(images, `core-${pid}.img`);
    const original = readImageFile(file).entries[0]?.message as CoreEntry;
    const refusal = (edit: (c: CoreEntry) => void): string => {
      const core = structuredClone(original);
      edit(core);
      writeImageFile(file, kind("CORE"), CoreEntrySchema, [core]);
      const r = runCkpt(["restore", "-D", images, "-d"]);
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(alive(pid)).toBe(false);
      return r.stderr;
    };
    expect(refusal((c) => c.tc!.timers!.posix.push(create(PosixTimerEntrySchema, { itId: 0, clockId: 1, siSigno: 14, itSigevNotify: 0, sivalPtr: 0n, overrun: 0, isec: 5n, insec: 0n, vsec: 0n, vnsec: 0n })))).toContain(`core-${pid}.img: tc.timers.posix holds 1 POSIX timer(s)`);
    expect(refusal((c) => { c.threadCore!.seccompMode = SeccompMode.filter; })).toContain(`core-${pid}.img: thread_core.seccomp_mode is filter`);
    writeImageFile(file, kind("CORE"), CoreEntrySchema, [original]);
    const r = restoreDetached(images);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });

  test("processes that share an fd table (files_id in ids-PID.img) are refused by name before anything is made", async () => {
    const work = tempDir("restore-kids");
    const images = join(tempDir("restore-img"), "img");
    const { words } = await startReady([sharedTreeTarget(), work]);
    const pids = words.map(Number) as [number, number, number];
    cleanup.push(...pids.map(killablePid));
    await dumpAndKill(pids, images);
    dropDigests(images);
    // As CRIU writes a child made with CLONE_FILES: its files_id is its parent's.
    const rootIds = readImageFile(join(images, `ids-${pids[0]}.img`)).entries[0]?.message as TaskKobjIdsEntry;
    const file = join(images, `ids-${pids[1]}.img`);
    const child = readImageFile(file).entries[0]?.message as TaskKobjIdsEntry;
    child.filesId = rootIds.filesId;
    writeImageFile(file, kind("IDS"), TaskKobjIdsEntrySchema, [child]);
    const r = runCkpt(["restore", "-D", images, "-d"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain(`ids-${pids[1]}.img: files_id ${rootIds.filesId} is also process ${pids[0]}'s`);
    expect(r.stderr).toContain("CLONE_FILES");
    for (const p of pids) expect(alive(p)).toBe(false);
  });

  test("without -d ckpt waits for the restored root and exits with its status", async () => {
    const work = tempDir("restore-fg");
    const images = join(tempDir("restore-img"), "img");
    const { words, out } = await startReady([restoreTarget(), work]);
    const pid = Number(words[0]);
    cleanup.push(killablePid(pid));
    await dumpAndKill([pid], images);
    const ckpt = Bun.spawn([process.execPath, `${import.meta.dir}/../src/cli/main.ts`, "restore", "-D", images], { stdout: "pipe", stderr: "pipe" });
    // Every thread let go, not just the leader: a process-directed SIGUSR1 sent
    // while the others are still held may be taken by a thread that is not in
    // the workload's pause(), and its self-check then never starts.
    const untraced = (): boolean => readdirSync(`/proc/${pid}/task`).every((t) => readFileSync(`/proc/${pid}/task/${t}/status`, "utf8").includes("TracerPid:\t0"));
    await waitFor("the restored process", () => alive(pid) && untraced(), 20000);
    expect(statFields(pid).ppid).toBe(ckpt.pid);
    expect(await selfCheck(pid, out)).toBe("ok");
    process.kill(pid, "SIGTERM");
    expect(await ckpt.exited).toBe(128 + 15);
  });

  test("every fd kind the dump saves comes back: the fd workload finds its data, queues and positions", async () => {
    const work = tempDir("restore-fds");
    const images = join(tempDir("restore-img"), "img");
    const { words, out } = await startReady([fdTarget(), work]);
    const pids = words.slice(0, 2).map(Number) as [number, number];
    const port = Number(words[2]);
    cleanup.push(...pids.map(killablePid));
    await dumpAndKill(pids, images);
    const r = restoreDetached(images);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.json.processes).toBe(2);
    expect(await selfCheck(pids[0], out)).toBe("ok");
    // fds shared between the two processes are one open file again (kcmp says so).
    for (const fd of [FD.FILE_A, FD.PIPE_R, FD.STREAM_A, FD.MEMFD, FD.EPOLL]) {
      expect(kcmp(pids[0], pids[1], KCMP.FILE, fd, fd)).toBe("equal");
    }
    expect(kcmp(pids[0], pids[0], KCMP.FILE, FD.FILE_A, FD.FILE_A_DUP)).toBe("equal");
    expect(kcmp(pids[0], pids[0], KCMP.FILE, FD.FILE_A, FD.FILE_A_AGAIN)).not.toBe("equal");
    // The listening TCP socket is back on its port.
    const sock = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
    sock.end();
  });

  test("a process that dropped root comes back with its ids, groups, empty capabilities and limits", async () => {
    const images = join(tempDir("restore-img"), "img");
    const { words, out } = await startReady([credTarget()]);
    const pid = Number(words[0]);
    cleanup.push(killablePid(pid));
    await dumpAndKill([pid], images);
    const r = restoreDetached(images);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(readFileSync(`/proc/${pid}/status`, "utf8")).toContain("Uid:\t1000\t1001\t1002\t1001");
    expect(await selfCheck(pid, out)).toBe("ok");
  });

  test("a failure after the threads exist kills them all and ckpt still exits with the error", async () => {
    const work = tempDir("restore-fail-threads");
    const images = join(tempDir("restore-img"), "img");
    const { words } = await startReady([restoreTarget(), work]);
    const [pid, , sleeper] = words.map(Number) as [number, number, number];
    cleanup.push(killablePid(pid));
    await dumpAndKill([pid], images);
    dropDigests(images);
    // A scheduling policy no kernel has: the restore fails while setting up that thread.
    const file = join(images, `core-${sleeper}.img`);
    const core = readImageFile(file).entries[0]?.message as CoreEntry;
    core.threadCore!.schedPolicy = 77;
    writeImageFile(file, kind("CORE"), CoreEntrySchema, [core]);
    const r = Bun.spawnSync([process.execPath, `${import.meta.dir}/../src/cli/main.ts`, "restore", "-D", images, "-d"], { stdout: "pipe", stderr: "pipe", timeout: 30000 });
    expect(r.exitCode).toBe(1);
    expect(r.stderr.toString()).toContain(`sched_setscheduler(${sleeper}, 77`);
    // Killed: init reaps the root (its parent) soon after.
    await waitFor("the half-restored process to be gone", () => !existsSync(`/proc/${pid}`), 5000);
  });

  test("bad input: no image set, a directory without inventory", () => {
    const empty = tempDir("restore-empty");
    const r = runCkpt(["restore", "-D", empty, "-d"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("inventory.img");
    const missing = runCkpt(["restore", "-D", join(empty, "nope"), "-d"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("does not exist");
    expect(runCkpt(["restore", "-d"]).code).toBe(2);
  });
});
