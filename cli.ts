/**
 * The command-line tool: `info`, `read`, `write`, `fio`, `probe` and `copy`.
 *
 * ```sh
 * deno task info --path /tmp/x.sock
 * deno task read --path /tmp/x.sock --offset 0 --length 4k > block0.bin
 * deno task write --path /tmp/x.sock --offset 1M --input data.bin
 * deno task fio --rw randread --bs 4k --iodepth 32 --runtime 5
 * ```
 *
 * (`deno run -A cli.ts <command> …` is the same.) `--help` after a command
 * lists its flags with their defaults. Exit status: 0 done, 1 the device or
 * the system failed, 2 bad flags or a permission not granted (one line on
 * stderr), 130/143 interrupted by SIGINT/SIGTERM.
 *
 * @module
 */

import { type CommandSpec, formatHelp, type ParsedFlags, parseFlags, UsageError } from "./src/cli/args.ts";
import { COPY, copy } from "./src/cli/copy.ts";
import { FIO, fio } from "./src/cli/fio_command.ts";
import { INFO, info } from "./src/cli/info.ts";
import { PROBE, probe } from "./src/cli/probe_command.ts";
import { READ, read, WRITE, write } from "./src/cli/read_write.ts";
import { PermissionError, VirtioError } from "./src/errors.ts";
import { exitProcess, isTerminating } from "./src/process/terminate.ts";

export { parseSize } from "./src/cli/args.ts";

/** A command returns its exit status, or nothing for 0. */
const COMMANDS: readonly { spec: CommandSpec; run: (flags: ParsedFlags) => Promise<number | void> }[] = [
  { spec: INFO, run: info },
  { spec: READ, run: read },
  { spec: WRITE, run: write },
  { spec: FIO, run: fio },
  { spec: PROBE, run: probe },
  { spec: COPY, run: copy },
];

const SUMMARY: Record<string, string> = {
  info: "print the device's configuration and negotiated features",
  read: "read a byte range of the device to a file or a pipe",
  write: "write a file or a pipe to the device at an offset",
  fio: "run a fio-like workload and print IOPS, bandwidth and latency",
  probe: "report what a vhost-user-blk back-end offers and how it behaves",
  copy: "copy between a file or a pipe and a device (or two devices), with progress and --verify",
};

const USAGE = [
  "usage: deno task <command> [flags]      (or: deno run -A cli.ts <command> [flags])",
  "",
  "commands:",
  ...COMMANDS.map((c) => `  ${c.spec.name.padEnd(8)}${SUMMARY[c.spec.name]}`),
  "",
  "deno task <command> --help lists a command's flags with their defaults and examples.",
  "Sizes take k, M, G suffixes (powers of 1024): 4k, 1M, 2G.",
].join("\n");

/**
 * Runs the CLI.
 *
 * @param args command-line arguments
 * @returns the exit status
 */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "-h" || name === "--help" || name === "help") {
    const topic = name === "help" ? COMMANDS.find((c) => c.spec.name === rest[0]) : undefined;
    console.log(topic ? formatHelp(topic.spec) : USAGE);
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS.find((c) => c.spec.name === name);
  try {
    if (!command) {
      throw new UsageError(`unknown command ${JSON.stringify(name)} (${COMMANDS.map((c) => c.spec.name).join(", ")})`);
    }
    const flags = parseFlags(command.spec, rest);
    if (flags.help) {
      console.log(formatHelp(command.spec));
      return 0;
    }
    return (await command.run(flags)) ?? 0;
  } catch (e) {
    if (e instanceof UsageError || e instanceof RangeError) {
      console.error(`error: ${e.message}`);
      return 2;
    }
    // A permission the command line did not grant: Deno's own NotCapable (a
    // file, a daemon, a --restart command) or the library's PermissionError.
    if (e instanceof Deno.errors.NotCapable || e instanceof PermissionError) {
      console.error(`error: ${(e as Error).message} (deno task ${name} grants what it needs) [ERR_PERMISSION]`);
      return 2;
    }
    // A Ctrl-C may be what broke the run (it reached a daemon too): let a
    // pending signal listener run; if it did, it exits with 130.
    await new Promise((r) => setTimeout(r, 20));
    if (isTerminating()) await new Promise(() => {});
    if (e instanceof VirtioError) console.error(`error: ${e.message} [${e.code}]`);
    else console.error(`error: ${(e as Error)?.message ?? e}`);
    return 1;
  }
}

if (import.meta.main) await exitProcess(await main(Deno.args));
