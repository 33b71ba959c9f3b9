/**
 * Start a restore guard over the pids given as arguments and wait until it
 * runs (as a restore does before its first detach), then die by SIGKILL
 * without a word to it.
 */
import { TreeGuard } from "../../src/sys/tree-guard";

TreeGuard.launch(process.argv.slice(2).map(Number)).waitUntilRunning();
process.kill(process.pid, "SIGKILL");
