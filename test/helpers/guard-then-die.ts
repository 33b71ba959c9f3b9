/**
 * Start a restore guard over the pids given as arguments and wait until it
 * runs (as a restore does before its first detach), then die by SIGKILL
 * without a word to it.
 */
import { RestoreGuard } from "../../src/restore/guard";

RestoreGuard.launch(process.argv.slice(2).map(Number)).waitUntilRunning();
process.kill(process.pid, "SIGKILL");
