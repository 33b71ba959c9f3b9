import { describe, expect, test } from "bun:test";
import { Errno, errnoName, errnoNumber, errnoText, SysError } from "../src/sys/errno";
import { close, openat, readlinkat, statx } from "../src/sys/libc";
import { AT, O } from "../src/sys/nr";

describe("errno discipline", () => {
  test("openat of a missing file throws SysError with ENOENT", () => {
    let err: unknown;
    try {
      openat(AT.FDCWD, "/nonexistent/ckpt-test", O.RDONLY);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SysError);
    const se = err as SysError;
    expect(se.code).toBe("ENOENT");
    expect(se.errno).toBe(Errno.ENOENT);
    expect(se.call).toBe("openat");
    expect(se.message).toBe('openat(AT_FDCWD, "/nonexistent/ckpt-test", 00): ENOENT (No such file or directory)');
  });

  test("each failure reads its own errno", () => {
    // A different errno right after the ENOENT above: a stale read would repeat ENOENT.
    expect(() => openat(AT.FDCWD, "/etc/passwd", O.RDONLY | O.DIRECTORY)).toThrow(/ENOTDIR/);
    expect(() => close(987654)).toThrow(/^close\(987654\): EBADF/);
    expect(() => readlinkat(AT.FDCWD, "/etc")).toThrow(/EINVAL/);
    expect(() => statx(AT.FDCWD, "/nonexistent")).toThrow(/ENOENT/);
  });

  test("a successful call does not throw", () => {
    const fd = openat(AT.FDCWD, "/", O.RDONLY | O.DIRECTORY);
    expect(fd).toBeGreaterThanOrEqual(0);
    close(fd);
  });

  test("name table", () => {
    expect(errnoName(1)).toBe("EPERM");
    expect(errnoName(3)).toBe("ESRCH");
    expect(errnoName(9999)).toBe("E#9999");
    expect(errnoText(13)).toBe("Permission denied");
    expect(errnoNumber("EAGAIN")).toBe(11);
    for (const [name, n] of Object.entries(Errno)) expect(errnoName(n)).toBe(name);
  });
});
