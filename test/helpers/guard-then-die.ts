/** Start a restore guard over the pids given as arguments, then die by SIGKILL without a word to it. */
import { RestoreGuard } from "../../src/restore/guard";

await RestoreGuard.start(process.argv.slice(2).map(Number));
process.kill(process.pid, "SIGKILL");
