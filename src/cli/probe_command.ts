/**
 * `probe`: how a vhost-user-blk back-end behaves, for people who write or
 * run back-ends. Prints a table (or JSON) and exits 0 when nothing
 * non-conforming was seen, 1 otherwise.
 *
 * @module
 */

import { type CommandSpec, type ParsedFlags, parseInteger, UsageError, userPath } from "./args.ts";
import { type ProbeFinding, probeVhostUser } from "./probe.ts";
import { FUZZ_FLAGS, fuzzCommand } from "./fuzz/command.ts";

/** The `probe` command. */
export const PROBE: CommandSpec = {
  name: "probe",
  usage: "deno task probe --path SOCKET [--write-test] [--json]\n" +
    "       deno task probe --path SOCKET --fuzz N [--seed S] [--destructive] [--timeout MS] [--restart 'COMMAND']\n" +
    "                       [--ring split|packed] [--json]\n" +
    "       deno task probe --path SOCKET --replay SEED:CASE [--destructive] [--ring split|packed] [--timeout MS]\n" +
    "                       [--restart 'COMMAND'] [--json]",
  description:
    "Connects to a vhost-user-blk back-end and reports what it offers and how it behaves: features and protocol\n" +
    "features offered and taken, config space, memory regions, ring formats, kick and interrupt suppression,\n" +
    "used lengths, the segment limits it really accepts, GET_ID, flush; with --write-test also a verified\n" +
    "write of the last MiB (restored afterwards), discard and write-zeroes there. Reads only otherwise.\n" +
    "Exit status 0 when nothing non-conforming was seen, 1 otherwise.\n\n" +
    "With --fuzz N it is a back-end fuzzer: N seeded cases of legal but uncommon and illegal requests, built\n" +
    "descriptor by descriptor, each checked (canaries around every buffer, device-readable bytes unchanged,\n" +
    "status bytes, read-back data, the used ring, a timeout). Findings are crash, hang, memory, completion,\n" +
    "status and data, each with an ID that --replay runs alone and shows descriptor by descriptor. Without\n" +
    "--destructive nothing is written to the device. Exit status 0 without findings, 1 with.",
  flags: [
    { name: "path", kind: "string", value: "SOCKET", help: "the back-end's vhost-user socket (required)" },
    { name: "write-test", kind: "boolean", help: "write, verify and restore the last MiB; try discard, write-zeroes" },
    {
      name: "timeout-ms",
      kind: "string",
      value: "N",
      default: "5000",
      help: "control-path reply timeout (some back-ends answer a connection's first message slowly)",
    },
    {
      name: "stall-ms",
      kind: "string",
      value: "N",
      default: "2000",
      help: "a request not completed in this long counts as dropped",
    },
    { name: "json", kind: "boolean", help: "print one JSON object instead of a table" },
    ...FUZZ_FLAGS,
  ],
  examples: [
    "deno task probe --path /tmp/x.sock",
    "deno task probe --path /tmp/x.sock --write-test --json > probe.json",
    "deno task probe --path /tmp/x.sock --fuzz 2000 --seed 1",
    "deno task probe --path /tmp/x.sock --fuzz 5000 --destructive --json > fuzz.json",
    "deno task probe --path /tmp/x.sock --replay 1:17",
  ],
};

/**
 * The report as a table.
 *
 * @param findings the findings
 * @returns the lines
 */
function formatFindings(findings: readonly ProbeFinding[]): string {
  const w1 = Math.max(...findings.map((f) => f.check.length), 5);
  const w2 = Math.max(...findings.map((f) => f.verdict.length), 7);
  return findings.map((f) => `${f.check.padEnd(w1)}  ${f.verdict.padEnd(w2)}  ${f.result}`).join("\n");
}

/**
 * Runs `probe`.
 *
 * @param flags the parsed flags
 * @returns the exit status (0 conforming, 1 not)
 */
export async function probe(flags: ParsedFlags): Promise<number> {
  if (typeof flags.path !== "string") throw new UsageError("--path is required: the back-end's vhost-user socket");
  const fuzzed = await fuzzCommand(flags);
  if (fuzzed !== undefined) return fuzzed;
  const report = await probeVhostUser(userPath(flags.path), {
    writeTest: flags["write-test"] === true,
    timeoutMs: flags["timeout-ms"] === undefined
      ? undefined
      : parseInteger(flags["timeout-ms"], "--timeout-ms", 1, 3_600_000),
    stallMs: flags["stall-ms"] === undefined ? undefined : parseInteger(flags["stall-ms"], "--stall-ms", 1, 3_600_000),
    onFinding: flags.json ? undefined : (f) => console.error(`  ${f.check}: ${f.verdict}`),
  });
  if (flags.json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    console.log(`probe of the vhost-user-blk back-end at ${report.target}\n`);
    console.log(formatFindings(report.findings));
    console.log(
      `\n${
        report.conforming
          ? "conforming: nothing non-conforming was seen"
          : "NOT conforming: see the non-conforming lines above"
      }`,
    );
  }
  return report.conforming ? 0 : 1;
}
