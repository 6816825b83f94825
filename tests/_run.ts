/**
 * `deno task test`: runs the test suite (all of `tests/` but the guest
 * tests, or the paths and flags given), then says what was skipped and what
 * to install so that it runs. The exit status is the suite's.
 */

import { INSTALL_HINTS, type Requirement } from "./_requirements.ts";

const log = await Deno.makeTempFile({ prefix: "virtio-skips-" });
const given = Deno.args;
const args = ["test", "--allow-all", ...(given.some((a) => !a.startsWith("-")) ? given : [...given, "tests/"])];
if (!given.some((a) => a.startsWith("tests/guest"))) args.splice(2, 0, "--ignore=tests/guest");
let code = 1;
try {
  const status = await new Deno.Command(Deno.execPath(), { args, env: { VIRTIO_SKIP_LOG: log } }).spawn().status;
  code = status.signal ? 128 + (status.signal === "SIGINT" ? 2 : 15) : status.code;
  const counts = new Map<string, number>();
  for (const line of (await Deno.readTextFile(log)).split("\n")) {
    if (line) counts.set(line, (counts.get(line) ?? 0) + 1);
  }
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  if (total === 0) {
    console.error("\nnothing skipped: every test ran (the QEMU-guest tests run with deno task test:guest)");
  } else {
    console.error(`\nSKIPPED ${total} test${total === 1 ? "" : "s"}, for want of:`);
    for (const [what, n] of counts) {
      console.error(`  ${String(n).padStart(4)} need ${what}: ${INSTALL_HINTS[what as Requirement] ?? "?"}`);
    }
  }
} finally {
  await Deno.remove(log).catch(() => {});
}
Deno.exit(code);
