/**
 * Build dist/ckpt: one self-contained executable (Bun runtime included), so it
 * runs from any directory with no node_modules beside it.
 * Run after `buf generate` (npm run build does both).
 */
import { existsSync } from "node:fs";

if (!existsSync(new URL("./src/image/gen/core_pb.ts", import.meta.url))) {
  console.error("build: src/image/gen is missing; run `npx buf generate` (npm run build does) first");
  process.exit(1);
}

const result = await Bun.build({
  entrypoints: ["./src/cli/main.ts"],
  compile: { outfile: "./dist/ckpt" },
  target: "bun",
  minify: true,
  // Precompiled bytecode saves parsing at every start of the executable.
  bytecode: true,
  sourcemap: "none",
});

if (!result.success) {
  for (const log of result.logs) console.error(log);
  process.exit(1);
}
console.log(`built ${result.outputs.map((o) => o.path).join(", ")}`);
