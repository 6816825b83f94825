/**
 * Clean exits on SIGINT, SIGTERM and SIGHUP.
 *
 * Deno ends a process on SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal
 * closed) without running any `finally` block, which would leave child
 * processes (a private qemu-storage-daemon) and temporary folders behind.
 * Code that owns such a resource registers a hook here; the first signal
 * runs every hook, newest first, each bounded in time, then exits with
 * status 128 + the signal number (130 for SIGINT, 143 for SIGTERM, 129 for
 * SIGHUP), as a shell expects. A second signal exits at once — but not the
 * copy of the first that `deno task` forwards to the process group that got
 * it too. With no hook registered nothing is listened to,
 * and a listener never keeps the process alive.
 *
 * Under `deno test` the hooks run on SIGTERM and SIGHUP (its own SIGINT
 * handler ends the run at once, before any listener could run; this is why
 * `deno task test` turns a Ctrl-C into a SIGTERM to the test process). There
 * `Deno.exit` does not end the run (it fails the test, or ends only the test
 * file's isolate), so the exit is replaceable ({@linkcode setTerminationExit}):
 * `deno task test` has the process send itself SIGINT, on which `deno test`
 * lists the tests that were pending and exits with 130. Without that, a
 * `Deno.exit` that throws is followed by the same SIGINT.
 *
 * @module
 */

import { within } from "./within.ts";

/** What a hook is told. */
export type TerminationSignal = "SIGINT" | "SIGTERM" | "SIGHUP";

/** A hook: release what you own; may be async (bounded by {@linkcode HOOK_TIMEOUT_MS}). */
export type TerminationHook = (signal: TerminationSignal) => void | Promise<void>;

/** How long one hook may take before the next one runs. */
export const HOOK_TIMEOUT_MS = 1500;

/** A repeat of the signal within this long of the first is the same event (a forwarded copy). */
const REPEAT_GRACE_MS = 500;

const SIGNALS: readonly TerminationSignal[] = ["SIGINT", "SIGTERM", "SIGHUP"];
const EXIT_STATUS: Record<TerminationSignal, number> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

const hooks: TerminationHook[] = [];
const listeners = new Map<TerminationSignal, () => void>();
let terminating = false;
let terminatingSince = 0;

function install(): void {
  if (Deno.build.os === "windows") return;
  for (const signal of SIGNALS) {
    const listener = () => void terminate(signal);
    try {
      Deno.addSignalListener(signal, listener);
      listeners.set(signal, listener);
    } catch {
      // No permission to listen (or not supported): the default action stays.
    }
  }
}

function uninstall(): void {
  for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
  listeners.clear();
}

async function terminate(signal: TerminationSignal): Promise<void> {
  const status = EXIT_STATUS[signal];
  if (terminating) {
    // A second signal: the user does not want to wait any longer. But a copy
    // of the first (`deno task` forwards the signal its process group also
    // got) arrives within a millisecond or two, and must not cut the hooks short.
    if (performance.now() - terminatingSince > REPEAT_GRACE_MS) exitNow(status);
    return;
  }
  terminating = true;
  terminatingSince = performance.now();
  for (const hook of hooks.slice().reverse()) {
    try {
      await within(Promise.resolve().then(() => hook(signal)), HOOK_TIMEOUT_MS);
    } catch (e) {
      console.error(`error while stopping on ${signal}: ${(e as Error)?.message ?? e}`);
    }
  }
  exitNow(status);
}

/** Ends the process by the exit in force; when that throws (`Deno.exit` in a test), by a SIGINT to itself. */
function exitNow(status: number): void {
  try {
    exit(status);
  } catch {
    try {
      Deno.kill(Deno.pid, "SIGINT");
    } catch {
      // no permission to signal: the test run goes on, its resources released
    }
  }
}

let exit: (status: number) => void = (status) => Deno.exit(status);

/**
 * Replaces how the process ends once the hooks have run (by default
 * `Deno.exit(status)`), for a runner that must be ended another way: under
 * `deno test`, `Deno.exit` does not end the run, while a SIGINT does.
 *
 * @example
 * ```ts
 * import { setTerminationExit } from "./terminate.ts";
 * setTerminationExit(() => Deno.kill(Deno.pid, "SIGINT")); // deno test: list what was pending, exit 130
 * ```
 *
 * @param end ends the process; given the status a shell expects (130, 143, 129)
 */
export function setTerminationExit(end: (status: number) => void): void {
  exit = end;
}

/**
 * Runs `hook` if the process gets SIGINT, SIGTERM or SIGHUP, before it exits
 * with 130, 143 or 129. Hooks run newest first, so a hook registered while using a
 * resource runs before the hook of the resource itself.
 *
 * @example
 * ```ts
 * import { onTermination } from "./terminate.ts";
 * using _hook = onTermination(() => console.error("interrupted: cleaning up"));
 * // ... work ...
 * ```
 *
 * @param hook what to do
 * @returns a handle whose disposal unregisters the hook
 */
export function onTermination(hook: TerminationHook): Disposable {
  if (hooks.length === 0 && !terminating) install();
  hooks.push(hook);
  let done = false;
  return {
    [Symbol.dispose]() {
      if (done) return;
      done = true;
      const i = hooks.indexOf(hook);
      if (i >= 0) hooks.splice(i, 1);
      if (hooks.length === 0 && !terminating) uninstall();
    },
  };
}

/** Whether a termination signal is being handled (hooks run, exit follows). */
export function isTerminating(): boolean {
  return terminating;
}

/**
 * Exits with `status`, unless a termination signal is being handled: then
 * it waits for that to finish, which exits with 130, 143 or 129 (a program
 * that ends while its hooks still run must not exit 0 under them).
 *
 * @param status the exit status
 * @returns nothing: the process exits
 */
export async function exitProcess(status: number): Promise<never> {
  if (terminating) await new Promise(() => {});
  Deno.exit(status);
}
