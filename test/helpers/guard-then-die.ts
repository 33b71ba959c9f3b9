/**
 * Launch a restore guard over the pids given as arguments, then die by
 * SIGKILL without a word to it, before it has even reported its pid.
 */
import { RestoreGuard } from "../../src/restore/guard";

RestoreGuard.launch(process.argv.slice(2).map(Number));
process.kill(process.pid, "SIGKILL");
