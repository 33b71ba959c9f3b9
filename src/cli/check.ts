/** `ckpt check`: which kernel features ckpt can use here. */
import { defineCommand } from "citty";
import { checkFeatures, dumpCanWork } from "../check/features";
import { preferredTracking } from "../dump/tracking/method";
import { EXIT_FAILURE, rejectUnknownArgs } from "./exit";

export const check = defineCommand({
  meta: { name: "check", description: "Probe the kernel features ckpt needs; exit 0 only when a dump can work" },
  args: {
    json: { type: "boolean", description: "print the results as JSON", default: false },
  },
  async run({ args, rawArgs }) {
    rejectUnknownArgs(rawArgs, ["json"], 0);
    const results = await checkFeatures();
    const ok = dumpCanWork(results);
    // Which of the two probed methods (soft_dirty, uffd_wp_async) pre-dump will use.
    const works = (name: string): boolean => results.some((r) => r.name === name && r.ok);
    const dirtyTracking = preferredTracking(works("soft_dirty"), works("uffd_wp_async"));
    if (args.json) {
      process.stdout.write(`${JSON.stringify({ dumpCanWork: ok, dirtyTracking, features: results }, null, 2)}\n`);
    } else {
      for (const r of results) {
        const mark = r.ok ? "yes" : r.requiredForDump ? "NO " : "no ";
        process.stdout.write(`${mark}  ${r.name.padEnd(24)} ${r.detail}\n`);
      }
      process.stdout.write(ok ? "dump can work on this kernel\n" : "dump cannot work: a required feature is missing\n");
      process.stdout.write(dirtyTracking ? `pre-dump tracks written pages with ${dirtyTracking}\n` : "pre-dump cannot work: neither soft-dirty nor userfaultfd write-protect tracks written pages here\n");
    }
    if (!ok) process.exitCode = EXIT_FAILURE;
  },
});
