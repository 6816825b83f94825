/**
 * Loaded by `deno task test` before every test file (`deno test --preload`):
 * a termination hook of its own, so that the SIGTERM with which
 * `deno task test` stops an interrupted run is always handled in the test
 * process — the hooks of the file's fixtures run (daemons stopped, folders
 * removed) and the run ends (`src/process/terminate.ts`) — also in a file
 * whose tests hold nothing at that moment. (A signal handler, once set, is
 * never unset in a process; without a listener SIGTERM would then be
 * ignored.) The hooks done, the process sends itself SIGINT, on which
 * `deno test` lists the pending tests and exits. This hook only says what
 * is happening; the others run first.
 */

import { onTermination, setTerminationExit } from "../src/process/terminate.ts";

// Deno.exit would end only this file's isolate (or fail the running test), and deno test would go on.
setTerminationExit(() => Deno.kill(Deno.pid, "SIGINT"));
onTermination((signal) => {
  console.error(`\n${signal}: the test run is stopping; the running test's daemons and folders were released`);
});
