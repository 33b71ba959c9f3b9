import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { nameToHandleAt, openByHandleAt } from "../src/sys/calls";
import { listDirectory } from "../src/sys/file";
import { addressOf, close, fstat, getpid, ioctl, madvise, memoryView, mmap, munmap, openat, processVmReadv } from "../src/sys/libc";
import { AT, MADV_NOHUGEPAGE, MAP, NT, O, PAGE_IS, PAGE_SIZE, PAGEMAP_SCAN, PROT } from "../src/sys/nr";
import * as ptrace from "../src/sys/ptrace";
import {
  DIRENT64_OFF, decodeFileHandle, decodePageRegions, decodeUserFpregs, decodeUserRegs, encodeDev, encodeFileHandle, encodePmScanArg, encodeUserRegs, PAGE_REGION_SIZE, PM_SCAN_ARG_FIELDS,
  PM_SCAN_ARG_SIZE, pmScanWalkEnd, setIovec, STATX_OFF, STATX_SIZE, USER_FPREGS_OFF, USER_FPREGS_SIZE,
  USER_REGS, USER_REGS_SIZE,
} from "../src/sys/structs";
import { buildC, startReady, tempDir, type Target } from "./helpers/target";

const targets: Target[] = [];
afterAll(() => targets.forEach((t) => t.kill()));

describe("declared sizes and offsets match the UAPI headers", () => {
  test("static layout facts", () => {
    expect(STATX_SIZE).toBe(256);
    expect(STATX_OFF.ino).toBe(32);
    expect(STATX_OFF.dev_major).toBe(136);
    expect(STATX_OFF.mnt_id).toBe(144);
    expect(USER_REGS_SIZE).toBe(216);
    expect(USER_REGS.indexOf("orig_ax")).toBe(15);
    expect(USER_REGS.indexOf("fs_base")).toBe(21);
    expect(USER_FPREGS_SIZE).toBe(512);
    expect(USER_FPREGS_OFF.xmm_space).toBe(160);
    expect(PM_SCAN_ARG_SIZE).toBe(PM_SCAN_ARG_FIELDS.length * 8);
    expect(PAGE_REGION_SIZE).toBe(24);
    expect(DIRENT64_OFF.name).toBe(19);
  });

  test("user_regs encode/decode round trip keeps every register in its slot", () => {
    const regs = decodeUserRegs(new Uint8Array(USER_REGS_SIZE));
    USER_REGS.forEach((name, i) => {
      regs[name] = BigInt(i + 1) * 0x1111n;
    });
    const buf = encodeUserRegs(regs);
    const v = new DataView(buf.buffer);
    expect(v.getBigUint64(16 * 8, true)).toBe(17n * 0x1111n); // ip is the 17th word
    expect(decodeUserRegs(buf)).toEqual(regs);
  });

  test("file_handle encode/decode round trip", () => {
    const h = { type: 0x81, bytes: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]) };
    expect(decodeFileHandle(encodeFileHandle(h))).toEqual(h);
  });
});

describe("layouts against the running kernel", () => {
  test("statx decodes what stat(2) reports", () => {
    const dir = tempDir("statx");
    const file = join(dir, "f");
    writeFileSync(file, "x".repeat(1234));
    const fd = openat(AT.FDCWD, file, O.RDONLY);
    try {
      const mine = fstat(fd);
      const node = statSync(file, { bigint: true });
      expect(mine.ino).toBe(node.ino);
      expect(mine.size).toBe(1234n);
      expect(mine.mode).toBe(Number(node.mode));
      expect(mine.nlink).toBe(1);
      expect(mine.uid).toBe(Number(node.uid));
      expect(BigInt(mine.dev)).toBe(node.dev);
      expect(encodeDev(mine.devMajor, mine.devMinor)).toBe(mine.dev);
    } finally {
      close(fd);
    }
  });

  test("getdents64 entries decode to the directory's names", () => {
    const dir = tempDir("dents");
    const names = Array.from({ length: 300 }, (_, i) => `entry-${i}-${"n".repeat(i % 40)}`);
    for (const n of names) writeFileSync(join(dir, n), "");
    mkdirSync(join(dir, "sub"));
    expect(listDirectory(dir)).toEqual([...names, "sub"].sort());
    expect(listDirectory(dir).length).toBe(readdirSync(dir).length);
  });

  test("iovec: process_vm_readv scatters into two local buffers", () => {
    const src = Uint8Array.from({ length: 300 }, (_, i) => i & 0xff);
    const a = new Uint8Array(100);
    const b = new Uint8Array(200);
    const local = new BigUint64Array(4);
    const remote = new BigUint64Array(2);
    setIovec(local, 0, addressOf(a), a.length);
    setIovec(local, 1, addressOf(b), b.length);
    setIovec(remote, 0, addressOf(src), src.length);
    expect(processVmReadv(getpid(), local, 2, remote, 1)).toBe(300);
    expect(a).toEqual(src.subarray(0, 100));
    expect(b).toEqual(src.subarray(100));
  });

  test("pm_scan_arg and page_region: PAGEMAP_SCAN finds exactly the touched pages", () => {
    const pages = 8;
    const addr = mmap(0, pages * PAGE_SIZE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
    try {
      // No transparent huge page, which would make every page of the area present.
      madvise(addr, pages * PAGE_SIZE, MADV_NOHUGEPAGE);
      const mem = memoryView(addr, pages * PAGE_SIZE);
      mem[0] = 1;
      mem[2 * PAGE_SIZE] = 1;
      mem[3 * PAGE_SIZE] = 1;
      const fd = openat(AT.FDCWD, "/proc/self/pagemap", O.RDONLY);
      try {
        const vec = new Uint8Array(PAGE_REGION_SIZE * 8);
        const end = BigInt(addr + pages * PAGE_SIZE);
        const arg = encodePmScanArg({
          flags: 0n, start: BigInt(addr), end, vec: BigInt(addressOf(vec)), vec_len: 8n, max_pages: 0n,
          category_inverted: 0n, category_mask: BigInt(PAGE_IS.PRESENT), category_anyof_mask: 0n,
          return_mask: BigInt(PAGE_IS.PRESENT),
        });
        const n = ioctl(fd, PAGEMAP_SCAN, arg);
        const regions = decodePageRegions(vec, n);
        expect(regions).toEqual([
          { start: BigInt(addr), end: BigInt(addr + PAGE_SIZE), categories: BigInt(PAGE_IS.PRESENT) },
          { start: BigInt(addr + 2 * PAGE_SIZE), end: BigInt(addr + 4 * PAGE_SIZE), categories: BigInt(PAGE_IS.PRESENT) },
        ]);
        expect(pmScanWalkEnd(arg)).toBe(end);
      } finally {
        close(fd);
      }
    } finally {
      munmap(addr, pages * PAGE_SIZE);
    }
  });

  test("file_handle: name_to_handle_at then open_by_handle_at reopens the same inode", () => {
    const dir = tempDir("fh");
    const file = join(dir, "f");
    writeFileSync(file, "hello");
    const { handle, mountId } = nameToHandleAt(AT.FDCWD, file);
    expect(handle.bytes.length).toBeGreaterThan(0);
    expect(mountId).toBeGreaterThan(0);
    const mountFd = openat(AT.FDCWD, dir, O.RDONLY | O.DIRECTORY);
    try {
      const fd = openByHandleAt(mountFd, handle, O.RDONLY);
      try {
        expect(fstat(fd).ino).toBe(statSync(file, { bigint: true }).ino);
      } finally {
        close(fd);
      }
    } finally {
      close(mountFd);
    }
  });

  test("user_regs_struct, user_fpregs_struct and peeksiginfo against a stopped task", async () => {
    // Blocks SIGUSR1, says it is ready, then sleeps in the kernel.
    const exe = buildC("sigblock", `
      #include <signal.h>
      #include <stdio.h>
      #include <unistd.h>
      int main(void) {
        sigset_t s; sigemptyset(&s); sigaddset(&s, SIGUSR1);
        sigprocmask(SIG_BLOCK, &s, NULL);
        puts("ready"); fflush(stdout);
        for (;;) pause();
      }`);
    const { target: t } = await startReady([exe]);
    targets.push(t);
    process.kill(t.pid, "SIGUSR1");
    ptrace.seize(t.pid);
    try {
      ptrace.interrupt(t.pid);
      expect(ptrace.isInterruptStop(ptrace.waitTracee(t.pid))).toBe(true);

      const regsBuf = new Uint8Array(1024);
      expect(ptrace.getRegset(t.pid, NT.PRSTATUS, regsBuf)).toBe(USER_REGS_SIZE);
      const regs = decodeUserRegs(regsBuf);
      // /proc/PID/syscall of a task blocked in a syscall: "nr args... sp pc".
      const sc = readFileSync(`/proc/${t.pid}/syscall`, "utf8").trim().split(" ");
      expect(regs.orig_ax).toBe(BigInt(sc[0]!));
      expect(regs.sp).toBe(BigInt(sc[7]!));
      expect(regs.ip).toBe(BigInt(sc[8]!));
      expect(regs.cs).toBe(0x33n);
      expect(regs.ss).toBe(0x2bn);

      const fpBuf = new Uint8Array(1024);
      expect(ptrace.getRegset(t.pid, NT.PRFPREG, fpBuf)).toBe(USER_FPREGS_SIZE);
      const fp = decodeUserFpregs(fpBuf);
      expect(fp.cwd).toBe(0x37f); // the x87 control word every process starts with
      expect(fp.mxcsr & 0xffc0).toBe(0x1f80);

      const SIGUSR1 = 10;
      expect((ptrace.getSigmask(t.pid) >> BigInt(SIGUSR1 - 1)) & 1n).toBe(1n);
      const shared = ptrace.peekSiginfo(t.pid, true);
      expect(shared.length).toBe(1);
      expect(new DataView(shared[0]!.buffer).getInt32(0, true)).toBe(SIGUSR1);
      expect(ptrace.peekSiginfo(t.pid, false).length).toBe(0);
    } finally {
      ptrace.detach(t.pid);
    }
  });
});
