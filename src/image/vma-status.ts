/** Image-format facts about vma entries shared by dump and restore. */

/** vma_entry.status bits (CRIU's VMA_* flags). */
export const VMA = {
  AREA_REGULAR: 1 << 0,
  AREA_STACK: 1 << 1,
  AREA_VSYSCALL: 1 << 2,
  AREA_VDSO: 1 << 3,
  AREA_HEAP: 1 << 5,
  FILE_PRIVATE: 1 << 6,
  FILE_SHARED: 1 << 7,
  ANON_SHARED: 1 << 8,
  ANON_PRIVATE: 1 << 9,
  AREA_SYSVIPC: 1 << 10,
  AREA_VVAR: 1 << 12,
  /** A mapping of a memfd; shmid is the file id of its memfd entry in files.img. */
  AREA_MEMFD: 1 << 14,
} as const;
