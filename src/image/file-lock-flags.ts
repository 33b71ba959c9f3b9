/** file_lock_entry.flag values (filelocks.img), shared by dump and restore. */
export const FL = { POSIX: 1, FLOCK: 2, OFD: 4 } as const;
