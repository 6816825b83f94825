/**
 * `read` and `write`: any byte range of the device, to or from a file or a
 * pipe. Both take `--offset` and `--length` in bytes with no alignment
 * needed: `read` reads the blocks around the range and writes out the part
 * asked for; `write` reads the partial blocks at either end first and
 * merges (read-modify-write), so the bytes around the range are kept.
 *
 * @module
 */

import type { VirtioBlk } from "../blk/virtio_blk.ts";
import { type CommandSpec, type ParsedFlags, parseSize, UsageError, userPath } from "./args.ts";
import { deviceFlags, openDevice } from "./device_flags.ts";

/** Bytes moved per request. */
const CHUNK = 1 << 20;

/** The `read` command. */
export const READ: CommandSpec = {
  name: "read",
  usage: "deno task read --path SOCKET --length N [--offset N] [--output FILE] [flags]",
  description: "Reads --length bytes at --offset (any byte range; sizes take k, M, G suffixes) and writes them\n" +
    "to --output, or to stdout when it is a file or a pipe (never to a terminal).",
  flags: [
    ...deviceFlags("eventfd", "the vhost-user socket (or /dev/vhost-vdpa-N)"),
    { name: "length", kind: "string", value: "N", help: "bytes to read (required)" },
    { name: "offset", kind: "string", value: "N", default: "0", help: "byte offset on the device" },
    { name: "output", kind: "string", value: "FILE", default: "stdout", help: "where the bytes go (- is stdout)" },
    { name: "json", kind: "boolean", help: "print a JSON summary on stdout (needs --output FILE)" },
  ],
  examples: [
    "deno task read --path /tmp/x.sock --offset 1M --length 4k > out.bin",
    "deno task read --path /tmp/x.sock --length 64k --output head.bin --json",
  ],
};

/** The `write` command. */
export const WRITE: CommandSpec = {
  name: "write",
  usage: "deno task write --path SOCKET [--offset N] [--input FILE] [flags]",
  description: "Writes the bytes of --input (or stdin) at --offset, then flushes. Any byte range: partial blocks\n" +
    "at either end are read first and merged, so the bytes around the range are kept.",
  flags: [
    ...deviceFlags("eventfd", "the vhost-user socket (or /dev/vhost-vdpa-N)"),
    { name: "offset", kind: "string", value: "N", default: "0", help: "byte offset on the device" },
    { name: "input", kind: "string", value: "FILE", default: "stdin", help: "where the bytes come from (- is stdin)" },
    { name: "length", kind: "string", value: "N", default: "all of the input", help: "bytes to write" },
    { name: "json", kind: "boolean", help: "print a JSON summary on stdout" },
  ],
  examples: [
    "deno task write --path /tmp/x.sock --offset 1M --input data.bin",
    "printf 'hello' | deno task write --path /tmp/x.sock --offset 100",
  ],
};

async function writeAll(w: { write(p: Uint8Array): Promise<number> }, data: Uint8Array): Promise<void> {
  let at = 0;
  while (at < data.length) at += await w.write(data.subarray(at));
}

function checkRange(blk: VirtioBlk, offset: number, length: number): void {
  const cap = Number(blk.capacity);
  if (offset + length > cap) {
    throw new UsageError(`--offset ${offset} + ${length} bytes go past the capacity of ${cap} bytes`);
  }
}

function summary(what: string, offset: number, length: number, file: string, t0: number): Record<string, unknown> {
  const seconds = (performance.now() - t0) / 1000;
  return { [what]: length, offset, file, seconds, bytesPerSecond: seconds > 0 ? length / seconds : 0 };
}

/**
 * Runs `read`.
 *
 * @param flags the parsed flags
 */
export async function read(flags: ParsedFlags): Promise<void> {
  if (flags.length === undefined) throw new UsageError("--length is required (bytes to read, e.g. 4k)");
  const length = parseSize(flags.length, "--length");
  if (length === 0) throw new UsageError("--length must be at least 1 byte");
  const offset = parseSize(flags.offset ?? "0", "--offset");
  const output = typeof flags.output === "string" ? flags.output : "-";
  if (output === "-") {
    if (flags.json) throw new UsageError("--json prints on stdout, which carries the data: give --output FILE");
    if (Deno.stdout.isTerminal()) {
      throw new UsageError("not writing binary data to a terminal: redirect stdout (> FILE) or give --output FILE");
    }
  }
  await using blk = await openDevice(flags, "eventfd");
  checkRange(blk, offset, length);
  const t0 = performance.now();
  const out = output === "-"
    ? Deno.stdout
    : await fileOrUsageError("--output", output, (p) => Deno.open(p, { write: true, create: true, truncate: true }));
  try {
    const a = blk.blockSize;
    const buf = blk.allocBuffer(CHUNK);
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const start = Math.floor(pos / a) * a;
      const stop = Math.min(Math.ceil(end / a) * a, start + CHUNK);
      const view = buf.subarray(0, stop - start);
      await blk.read(start, view);
      const to = Math.min(end, stop) - start;
      await writeAll(out, view.subarray(pos - start, to));
      pos = start + to;
    }
  } finally {
    if (out !== Deno.stdout) out.close();
  }
  if (flags.json) console.log(JSON.stringify(summary("read", offset, length, output, t0)));
}

/** Opens a file the user named; a missing or forbidden one is a usage error (exit 2), in one line. */
async function fileOrUsageError<T>(flag: string, path: string, open: (path: string) => Promise<T>): Promise<T> {
  try {
    return await open(userPath(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${flag} ${path}: no such file or folder`);
    if (e instanceof Deno.errors.PermissionDenied) throw new UsageError(`${flag} ${path}: permission denied`);
    if (e instanceof Deno.errors.IsADirectory) throw new UsageError(`${flag} ${path}: is a folder`);
    throw e;
  }
}

async function readInput(input: string): Promise<Uint8Array> {
  if (input !== "-") return await fileOrUsageError("--input", input, (p) => Deno.readFile(p));
  if (Deno.stdin.isTerminal()) {
    throw new UsageError("no input: pipe the data in (… | deno task write …) or give --input FILE");
  }
  return new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
}

/**
 * Runs `write`.
 *
 * @param flags the parsed flags
 */
export async function write(flags: ParsedFlags): Promise<void> {
  const offset = parseSize(flags.offset ?? "0", "--offset");
  const input = typeof flags.input === "string" ? flags.input : "-";
  const data = await readInput(input);
  const length = flags.length === undefined ? data.length : parseSize(flags.length, "--length");
  if (length > data.length) throw new UsageError(`--length ${length} is more than the ${data.length} bytes of input`);
  if (length === 0) throw new UsageError("nothing to write: the input is empty");
  await using blk = await openDevice(flags, "eventfd");
  checkRange(blk, offset, length);
  const t0 = performance.now();
  const a = blk.blockSize;
  const buf = blk.allocBuffer(CHUNK);
  const end = offset + length;
  for (let start = Math.floor(offset / a) * a; start < end;) {
    const stop = Math.min(Math.ceil(end / a) * a, start + CHUNK);
    const view = buf.subarray(0, stop - start);
    const from = Math.max(offset, start), to = Math.min(end, stop);
    // Read-modify-write of the partial blocks at either end of the range.
    if (from > start) await blk.read(start, view.subarray(0, a));
    if (to < stop && (stop - a > start || from === start)) await blk.read(stop - a, view.subarray(view.length - a));
    view.set(data.subarray(from - offset, to - offset), from - start);
    await blk.write(start, view);
    start = stop;
  }
  await blk.flush();
  if (flags.json) console.log(JSON.stringify(summary("written", offset, length, input, t0)));
  else console.error(`wrote ${length} bytes at offset ${offset} (flushed)`);
}
