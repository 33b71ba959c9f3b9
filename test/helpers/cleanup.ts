/**
 * Preloaded by bun test (bunfig.toml): the temporary directories the tests
 * made go once they have run. Bun's test runner emits no process "exit".
 */
import { afterAll } from "bun:test";
import { removeTempDirs } from "./target";

afterAll(removeTempDirs);
