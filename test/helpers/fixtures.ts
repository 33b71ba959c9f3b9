/** The real CRIU 4.2 image set shipped in ../shared. */
import { readdirSync } from "node:fs";
import { PAGES_FILE } from "../../src/image/magic";

export const FIXTURES = `${import.meta.dir}/../../../shared/fixtures/criu-4.2-sleep-tree`;

/** The fixture's image files that carry framed entries (not raw pages, not the json/ folder). */
export function fixtureImageFiles(): string[] {
  return readdirSync(FIXTURES).filter((f) => f !== "json" && !PAGES_FILE.test(f));
}
