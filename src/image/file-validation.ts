/** Which regular files an image set records a size (and a build-id) for, to be checked at restore. */
import { O } from "../sys/nr";

/**
 * Whether a restore should find the file at the size it had: not for one
 * opened O_WRONLY|O_APPEND, a log that goes on growing after a snapshot. The
 * rule is CRIU's, which records no size for such a file either.
 */
export function validatesSize(flags: number): boolean {
  return !((flags & O.ACCMODE) === O.WRONLY && (flags & O.APPEND) !== 0);
}

/** How a restore knows a file is the one dumped: its size, or its size and ELF build-id (CRIU's default). */
export type FileValidation = "buildid" | "filesize";
export const FILE_VALIDATIONS: readonly FileValidation[] = ["buildid", "filesize"];
