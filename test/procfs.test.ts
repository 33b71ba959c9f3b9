import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readFdInfo, parseFdInfo } from "../src/proc/fdinfo";
import { parseMaps, readMaps, readSmaps } from "../src/proc/maps";
import { ProcFs } from "../src/proc/procfs";
import { parseStat, readStat } from "../src/proc/stat";
import { readStatus } from "../src/proc/status";
import { describeTask, readAllChildren, readThreads } from "../src/proc/task";
import { addressOf, close, openat, statx, syscall, writeAll } from "../src/sys/libc";
import { encodeKernelDev } from "../src/sys/structs";
import { AT, O } from "../src/sys/nr";
import { buildC, startReady, tempDir, type Target } from "./helpers/target";

// A workload with a known shape: an odd comm, 200 separate anonymous areas,
// a file mapping at a known offset, three extra threads and two children.
const FIXTURE_C = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
static void *idle(void *a) { (void)a; for (;;) pause(); return 0; }
int main(int argc, char **argv) {
  prctl(PR_SET_NAME, "a) (b", 0, 0, 0);
  for (int i = 0; i < 200; i++) {
    char *p = mmap(0, 4096, (i & 1) ? PROT_READ : PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!(i & 1)) p[0] = 1;
  }
  int fd = open(argv[1], O_RDONLY);
  void *file = mmap(0, 4096, PROT_READ, MAP_SHARED, fd, 8192);
  pthread_t t;
  for (int i = 0; i < 3; i++) pthread_create(&t, 0, idle, 0);
  for (int i = 0; i < 2; i++) if (fork() == 0) { for (;;) pause(); }
  printf("ready %lx\\n", (unsigned long)file); fflush(stdout);
  for (;;) pause();
}`;

let target: Target;
let fileMapAddr = 0n;
let mappedFile = "";

beforeAll(async () => {
  const exe = buildC("procfixture", FIXTURE_C);
  const dir = tempDir("procfs");
  mappedFile = join(dir, "mapped");
  writeFileSync(mappedFile, Buffer.alloc(16384, 7));
  const started = await startReady([exe, mappedFile]);
  target = started.target;
  fileMapAddr = BigInt(`0x${started.words[0]}`);
});

afterAll(() => {
  if (!target) return;
  for (const child of readFileSync(`/proc/${target.pid}/task/${target.pid}/children`, "utf8").split(" ").filter(Boolean)) {
    process.kill(Number(child), "SIGKILL");
  }
  target.kill();
});

describe("ProcFs dirfd cache (seed 000)", () => {
  test("pid → self → pid opens each directory once", () => {
    const proc = new ProcFs();
    try {
      proc.readText(target.pid, "stat");
      proc.readText("self", "stat");
      proc.readText(target.pid, "status");
      proc.readText("self", "status");
      proc.readText(target.pid, "maps");
      expect(proc.counters.dirOpens).toBe(2);
      expect(proc.counters.dirCloses).toBe(0);
      expect(proc.counters.fileOpens).toBe(5);
      expect(proc.cachedPid).toBe(target.pid);
    } finally {
      proc.close();
    }
    expect(proc.counters.dirCloses).toBe(2);
  });

  test("switching to another pid closes the old directory, keeps self", () => {
    const proc = new ProcFs();
    try {
      proc.readText(target.pid, "stat");
      proc.readText("self", "stat");
      proc.readText(process.pid, "stat");
      expect(proc.counters.dirOpens).toBe(3);
      expect(proc.counters.dirCloses).toBe(1);
      expect(proc.cachedPid).toBe(process.pid);
      proc.readText("self", "stat");
      expect(proc.counters.dirOpens).toBe(3);
      // The old pid's fd is really closed: no fd of ours points at /proc/<target>.
      const ours = readdirSync("/proc/self/fd").map((fd) => {
        try {
          return require("node:fs").readlinkSync(`/proc/self/fd/${fd}`) as string;
        } catch {
          return "";
        }
      });
      expect(ours).not.toContain(`/proc/${target.pid}`);
      expect(ours).toContain(`/proc/${process.pid}`);
    } finally {
      proc.close();
    }
  });

  test("files are opened relative to the cached dirfd", () => {
    const proc = new ProcFs();
    try {
      const dirfd = proc.dir(target.pid);
      expect(require("node:fs").readlinkSync(`/proc/self/fd/${dirfd}`)).toBe(`/proc/${target.pid}`);
    } finally {
      proc.close();
    }
  });

  test("reads loop until EOF: a 200-area smaps comes back whole", () => {
    const proc = new ProcFs();
    try {
      // Pss (and its Pss_* kin) and the shared/private split of clean pages shift whenever another
      // process maps or drops the same file pages (a libc page is private while only one maps it):
      // compare without them.
      const stable = (smaps: string): string => smaps.replace(/^(Pss[^:]*|Shared_Clean|Private_Clean):.*\n/gm, "");
      const text = proc.readText(target.pid, "smaps");
      expect(text.length).toBeGreaterThan(64 * 1024);
      expect(stable(text)).toBe(stable(readFileSync(`/proc/${target.pid}/smaps`, "utf8")));
      expect(proc.counters.reads).toBeGreaterThan(2);
      const bytes = proc.readBytes(target.pid, "smaps");
      expect(stable(new TextDecoder().decode(bytes))).toBe(stable(text));
    } finally {
      proc.close();
    }
  });

  test("the cached directory pins its task: after the task exits, reads fail with ESRCH", async () => {
    const sleeper = Bun.spawn(["sleep", "100"], { stdin: "ignore", stdout: "ignore" });
    const proc = new ProcFs();
    try {
      expect(proc.readText(sleeper.pid, "stat")).toContain("(sleep)");
      sleeper.kill("SIGKILL");
      await sleeper.exited;
      expect(() => proc.readText(sleeper.pid, "stat")).toThrow(/^openat\(\d+, "stat", .*\): ESRCH/);
    } finally {
      proc.close();
    }
  });

  test("a missing pid is a SysError naming the path", () => {
    const proc = new ProcFs();
    try {
      expect(() => proc.readText(2 ** 22 + 1, "stat")).toThrow(/openat\(AT_FDCWD, "\/proc\/4194305", .*\): ENOENT/);
    } finally {
      proc.close();
    }
  });
});

describe("proc readers", () => {
  test("stat: comm with parentheses and spaces", () => {
    const line = "42 (a) (b) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1000 100 18446744073709551615 1 2 3 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 4 5 6 7 8 9 10 0";
    const st = parseStat(line);
    expect(st.pid).toBe(42);
    expect(st.comm).toBe("a) (b");
    expect(st.state).toBe("S");
    expect(st.ppid).toBe(1);
    expect(st.flags).toBe(4194560);
    expect(st.startTime).toBe(12345n);
    expect(st.startCode).toBe(1n);
    expect(st.endCode).toBe(2n);
    expect(st.startStack).toBe(3n);
    expect(st.startData).toBe(4n);
    expect(st.envEnd).toBe(10n);
  });

  test("stat and status of a real task agree", () => {
    const proc = new ProcFs();
    try {
      const st = readStat(proc, target.pid);
      const status = readStatus(proc, target.pid);
      expect(st.comm).toBe("a) (b");
      expect(status.name).toBe("a) (b");
      expect(st.pid).toBe(target.pid);
      expect(st.ppid).toBe(status.ppid);
      expect(st.numThreads).toBe(4);
      expect(status.uids).toEqual([0, 0, 0, 0].map(() => process.getuid!()) as [number, number, number, number]);
      expect(status.nsPids[0]).toBe(target.pid);
      expect(status.umask).toBeGreaterThanOrEqual(0);
    } finally {
      proc.close();
    }
  });

  test("threads, leader first, and children of every thread", () => {
    const proc = new ProcFs();
    try {
      const tids = readThreads(proc, target.pid);
      expect(tids.length).toBe(4);
      expect(tids[0]).toBe(target.pid);
      expect([...tids].sort()).toEqual(readdirSync(`/proc/${target.pid}/task`).map(Number).sort());
      const kids = readAllChildren(proc, target.pid);
      expect(kids.length).toBe(2);
      for (const k of kids) expect(readStat(proc, k).ppid).toBe(target.pid);
    } finally {
      proc.close();
    }
  });

  test("maps and smaps: the file mapping, the 200 areas", () => {
    const proc = new ProcFs();
    try {
      const maps = readMaps(proc, target.pid);
      const smaps = readSmaps(proc, target.pid);
      expect(smaps.length).toBe(maps.length);
      const fileArea = maps.find((a) => a.start === fileMapAddr)!;
      expect(fileArea.path).toBe(mappedFile);
      expect(fileArea.offset).toBe(8192n);
      expect(fileArea.shared).toBe(true);
      expect(fileArea.read && !fileArea.write).toBe(true);
      expect(fileArea.inode).toBe(statSync(mappedFile, { bigint: true }).ino);
      const sFile = smaps.find((a) => a.start === fileMapAddr)!;
      // A read-only MAP_SHARED file mapping is "may share" (ms) without VM_SHARED (sh).
      expect(sFile.vmFlags).toContain("ms");
      expect(sFile.kb?.Size).toBe(4);
      expect(maps.filter((a) => a.path === "").length).toBeGreaterThanOrEqual(200);
      expect(maps.some((a) => a.path === "[stack]")).toBe(true);
    } finally {
      proc.close();
    }
  });

  test("maps lines with spaces in the path", () => {
    const [a] = parseMaps("7f0000000000-7f0000001000 r--p 00001000 fe:01 1234                       /tmp/a b (deleted)\n");
    expect(a!.path).toBe("/tmp/a b (deleted)");
    expect(a!.devMajor).toBe(0xfe);
    expect(a!.offset).toBe(0x1000n);
  });

  test("fdinfo of a regular file: position and flags", () => {
    const dir = tempDir("fdinfo");
    const fd = openat(AT.FDCWD, join(dir, "f"), O.RDWR | O.CREAT | O.APPEND, 0o600);
    const proc = new ProcFs();
    try {
      writeAll(fd, new Uint8Array(17));
      const info = readFdInfo(proc, "self", fd);
      expect(info.pos).toBe(17n);
      expect(info.flags & O.APPEND).toBe(O.APPEND);
      expect(info.flags & 3).toBe(O.RDWR);
      expect(info.mntId).toBeGreaterThan(0);
      expect(info.ino).toBe(statSync(join(dir, "f"), { bigint: true }).ino);
    } finally {
      close(fd);
      proc.close();
    }
  });

  test("fdinfo of an inotify fd: each watch with its id, inode, device and handle", () => {
    // 20 watches, so ids reach 0x10 and up: the kernel prints them in hex.
    const root = tempDir("inotify");
    const SYS_inotify_init1 = 294;
    const SYS_inotify_add_watch = 254;
    const IN_CREATE = 0x100;
    const fd = Number(syscall("inotify_init1", SYS_inotify_init1, [O.CLOEXEC]));
    const proc = new ProcFs();
    try {
      const watched = new Map<number, string>();
      for (let i = 0; i < 20; i++) {
        const dir = join(root, `d${i}`);
        mkdirSync(dir);
        const path = new TextEncoder().encode(`${dir}\0`);
        watched.set(Number(syscall("inotify_add_watch", SYS_inotify_add_watch, [fd, addressOf(path), IN_CREATE])), dir);
      }
      const info = readFdInfo(proc, "self", fd);
      expect(info.inotify.length).toBe(20);
      expect(new Set(info.inotify.map((w) => w.wd))).toEqual(new Set(watched.keys()));
      for (const w of info.inotify) {
        const st = statx(AT.FDCWD, watched.get(w.wd)!);
        expect(w.ino).toBe(st.ino);
        expect(w.sdev).toBe(encodeKernelDev(st.devMajor, st.devMinor));
        expect(w.mask & IN_CREATE).toBe(IN_CREATE);
        expect(w.fhandle.length).toBe(w.fhandleBytes);
      }
    } finally {
      close(fd);
      proc.close();
    }
  });

  test("fdinfo text with extra lines keeps them", () => {
    const info = parseFdInfo("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t99\neventfd-count:\t5\n");
    expect(info.fields.get("eventfd-count")).toBe("5");
    expect(info.flags).toBe(2);
    expect(info.ino).toBe(99n);
  });
});

describe("describeTask", () => {
  test("a zombie is named as one, with the parent that has not reaped it", async () => {
    // The shell starts a short sleep, then becomes a long one that never waits for it.
    const parent = Bun.spawn(["sh", "-c", "sleep 0.05 & echo $!; exec sleep 10"], { stdout: "pipe" });
    try {
      const reader = parent.stdout.getReader();
      const child = Number(new TextDecoder().decode((await reader.read()).value).trim());
      reader.releaseLock();
      const proc = new ProcFs();
      try {
        for (let i = 0; i < 200 && !/^State:\s*Z/m.test(readFileSync(`/proc/${child}/status`, "utf8")); i++) await Bun.sleep(10);
        expect(describeTask(proc, child)).toBe(`process ${child} ([sleep]), which has exited and waits for its parent (pid ${parent.pid}) to reap it (a zombie: the pid is free once it does)`);
        expect(describeTask(proc, parent.pid)).toBe(`process ${parent.pid} (sleep 10)`);
      } finally {
        proc.close();
      }
    } finally {
      parent.kill();
      await parent.exited;
    }
  });
});
