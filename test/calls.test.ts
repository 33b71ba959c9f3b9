import { afterAll, describe, expect, test } from "bun:test";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { kcmp, pidfdGetfd, pidfdOpen, userfaultfd } from "../src/sys/calls";
import { SysError } from "../src/sys/errno";
import { close, fstat, getpid, openat } from "../src/sys/libc";
import { AT, KCMP, O } from "../src/sys/nr";
import { buildC, startReady, tempDir, type Target } from "./helpers/target";

const targets: Target[] = [];
afterAll(() => targets.forEach((t) => t.kill()));

describe("kcmp", () => {
  test("one open file is equal to itself, two opens of a path are not", () => {
    const me = getpid();
    const a = openat(AT.FDCWD, "/", O.RDONLY);
    const b = openat(AT.FDCWD, "/", O.RDONLY);
    try {
      expect(kcmp(me, me, KCMP.FILE, a, a)).toBe("equal");
      const ab = kcmp(me, me, KCMP.FILE, a, b);
      const ba = kcmp(me, me, KCMP.FILE, b, a);
      expect(ab).not.toBe("equal");
      // The order is consistent both ways, so it can key a sorted tree.
      expect(new Set([ab, ba])).toEqual(new Set(["less", "greater"]));
    } finally {
      close(a);
      close(b);
    }
  });

  test("an fd inherited across fork is the same file in both processes", async () => {
    // The parent opens a file, forks; the child keeps the fd as number 5.
    const exe = buildC("forkfd", `
      #include <fcntl.h>
      #include <stdio.h>
      #include <unistd.h>
      int main(int argc, char **argv) {
        int fd = open(argv[1], O_RDONLY); dup2(fd, 5);
        pid_t c = fork();
        if (c == 0) { for (;;) pause(); }
        printf("ready %d\\n", c); fflush(stdout);
        for (;;) pause();
      }`);
    const dir = tempDir("kcmp");
    const file = join(dir, "f");
    writeFileSync(file, "x");
    const { target: t, words } = await startReady([exe, file]);
    targets.push(t);
    const child = Number(words[0]);
    targets.push({
      pid: child,
      kill: () => {
        try {
          process.kill(child, "SIGKILL");
        } catch {
          // gone already
        }
      },
    });
    expect(kcmp(t.pid, child, KCMP.FILE, 5, 5)).toBe("equal");
    expect(kcmp(t.pid, child, KCMP.VM)).not.toBe("equal");
  });

  test("a bad fd is a SysError naming the call and fds", () => {
    const me = getpid();
    let err: unknown;
    try {
      kcmp(me, me, KCMP.FILE, 999999, 999998);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SysError);
    expect((err as SysError).message).toMatch(/^kcmp\(\d+, \d+, KCMP_FILE, 999999, 999998\): EBADF/);
  });
});

describe("pidfd", () => {
  test("pidfd_getfd duplicates another process's fd", () => {
    const dir = tempDir("pidfd");
    const file = join(dir, "f");
    writeFileSync(file, "abc");
    const fd = openat(AT.FDCWD, file, O.RDONLY);
    const pidfd = pidfdOpen(getpid());
    try {
      const copy = pidfdGetfd(pidfd, fd);
      try {
        expect(copy).not.toBe(fd);
        expect(fstat(copy).ino).toBe(statSync(file, { bigint: true }).ino);
        expect(kcmp(getpid(), getpid(), KCMP.FILE, fd, copy)).toBe("equal");
      } finally {
        close(copy);
      }
    } finally {
      close(pidfd);
      close(fd);
    }
  });

  test("pidfd_open of a pid that does not exist is ESRCH", () => {
    expect(() => pidfdOpen(2 ** 22 + 3)).toThrow(/^pidfd_open\(4194307, 0\): ESRCH/);
  });
});

describe("userfaultfd", () => {
  test("creates a file descriptor", () => {
    const fd = userfaultfd(O.CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
    expect(fd).toBeGreaterThan(2);
    close(fd);
  });
});
