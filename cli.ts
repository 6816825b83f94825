/**
 * The command-line tool: `info`, `read`, `write` and a fio-like `bench`.
 *
 * ```sh
 * deno run -A cli.ts info --path /tmp/x.sock
 * deno run -A cli.ts read --path /tmp/x.sock --offset 0 --length 4k > block0.bin
 * deno run -A cli.ts write --path /tmp/x.sock --offset 1M --input data.bin
 * deno run -A cli.ts bench --rw randread --bs 4k --iodepth 32 --runtime 5
 * ```
 *
 * Bad flags print one line and exit with status 2; runtime errors exit with 1.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type FioJob, type FioResult, runFio, RW_PATTERNS, type RwPattern } from "./src/cli/fio.ts";
import type { CompletionMode } from "./src/blk/completion_driver.ts";
import { VirtioBlk } from "./src/blk/virtio_blk.ts";
import { QemuStorageDaemon } from "./src/testing/qsd.ts";
import { describeFeatures } from "./src/features.ts";
import { VIRTIO_BLK_FEATURE_NAMES } from "./src/blk/features.ts";

const USAGE = `usage: cli.ts <command> [flags]

commands:
  info    print the device's configuration and negotiated features
  read    read --length bytes at --offset to --output (default: stdout)
  write   write --input (default: stdin) at --offset
  bench   run a fio-like workload and print IOPS, bandwidth and latency

common flags:
  --transport T        vhost-user (default), vhost-vdpa or vfio-pci
  --path PATH          vhost-user socket, or vhost-vdpa device (/dev/vhost-vdpa-0);
                       bench: default starts a private qemu-storage-daemon
  --device BDF         vfio-pci: the PCI address (0000:00:04.0)
  --queues N           queues to set up and use (default 1)
  --queue-size N       entries per queue (default 256)
  --mode poll|eventfd  completion mode (default: poll for bench, eventfd otherwise)
  --spin-us N          eventfd mode: spin this long before sleeping
  --json               machine-readable output

read/write:   --offset N  --length N  --output FILE  --input FILE
bench:        --rw read|write|randread|randwrite|randrw  --bs N  --iodepth N  --runtime SECONDS
              --ramp SECONDS  --size N  --rwmixread PCT  --api batch|promise  --backend null|file
sizes take k, m, g, t suffixes (powers of 1024): 4k, 1M, 2g`;

/** A usage error: one line, exit status 2. */
class UsageError extends Error {}

/**
 * Parses a size such as `4096`, `4k`, `1M`, `2g`.
 *
 * @param s the text
 * @param what the flag, for the message
 * @returns bytes
 */
export function parseSize(s: string | undefined, what: string): number {
  const m = /^(\d+)([kmgt]?)(i?b)?$/i.exec((s ?? "").trim());
  if (!m) throw new UsageError(`${what}: not a size: ${JSON.stringify(s)}`);
  const mult = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as "" | "k"];
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n)) throw new UsageError(`${what}: ${s} is too large`);
  return n;
}

function parseNumber(s: string | undefined, what: string, min: number, max = Infinity): number {
  const n = Number(s);
  if (s === undefined || s.trim() === "" || !Number.isFinite(n) || n < min || n > max) {
    throw new UsageError(
      `${what} must be a number from ${min}${max === Infinity ? "" : ` to ${max}`}, got ${JSON.stringify(s)}`,
    );
  }
  return n;
}

function parseMode(s: string | undefined, fallback: CompletionMode): CompletionMode {
  if (s === undefined) return fallback;
  if (s !== "poll" && s !== "eventfd") throw new UsageError(`--mode must be poll or eventfd, got ${JSON.stringify(s)}`);
  return s;
}

const FLAGS = {
  transport: { type: "string" },
  path: { type: "string" },
  device: { type: "string" },
  queues: { type: "string" },
  "queue-size": { type: "string" },
  mode: { type: "string" },
  "spin-us": { type: "string" },
  json: { type: "boolean" },
  offset: { type: "string" },
  length: { type: "string" },
  output: { type: "string" },
  input: { type: "string" },
  rw: { type: "string" },
  bs: { type: "string" },
  iodepth: { type: "string" },
  runtime: { type: "string" },
  ramp: { type: "string" },
  size: { type: "string" },
  rwmixread: { type: "string" },
  api: { type: "string" },
  backend: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof FLAGS; allowPositionals: true }>>["values"];

async function open(flags: Flags, defaultMode: CompletionMode, path?: string): Promise<VirtioBlk> {
  const transport = flags.transport ?? "vhost-user";
  if (transport !== "vhost-user" && transport !== "vhost-vdpa" && transport !== "vfio-pci") {
    throw new UsageError(`--transport must be vhost-user, vhost-vdpa or vfio-pci, got ${JSON.stringify(transport)}`);
  }
  const target = path ?? flags.path;
  if (transport === "vfio-pci" && !flags.device) throw new UsageError("--device is required with --transport vfio-pci");
  if (transport !== "vfio-pci" && !target) {
    throw new UsageError(
      `--path is required (the ${transport === "vhost-user" ? "vhost-user socket" : "vhost-vdpa device"})`,
    );
  }
  return await VirtioBlk.connect({
    transport,
    path: target,
    device: flags.device,
    numQueues: flags.queues ? parseNumber(flags.queues, "--queues", 1, 65535) : 1,
    queueSize: flags["queue-size"] ? parseNumber(flags["queue-size"], "--queue-size", 1, 32768) : 256,
    mode: parseMode(flags.mode, defaultMode),
    spinMicros: flags["spin-us"] ? parseNumber(flags["spin-us"], "--spin-us", 0, 1e6) : undefined,
  });
}

async function info(flags: Flags): Promise<void> {
  await using blk = await open(flags, "eventfd");
  const c = blk.config;
  const data = {
    transport: blk.transportType,
    capacity: Number(blk.capacity),
    blockSize: blk.blockSize,
    readOnly: blk.readOnly,
    numQueues: blk.numQueues,
    deviceQueues: c.numQueues,
    queueSize: blk.queueSize,
    maxSegments: blk.maxSegments,
    maxSegmentSize: blk.maxSegmentSize,
    features: describeFeatures(blk.features.bits, VIRTIO_BLK_FEATURE_NAMES),
    featureBits: `0x${blk.features.bits.toString(16)}`,
    topology: c.topology,
    writeback: c.writeback,
    discard: c.discard,
    writeZeroes: c.writeZeroes,
    id: await blk.getId().catch((e) => `(${e.message})`),
  };
  if (flags.json) {
    console.log(JSON.stringify(data, null, 2));
    return;
  }
  console.log(`transport      ${data.transport}`);
  console.log(`capacity       ${data.capacity} bytes (${(data.capacity / 2 ** 30).toFixed(3)} GiB)`);
  console.log(`block size     ${data.blockSize}`);
  console.log(`read-only      ${data.readOnly}`);
  console.log(`queues         ${data.numQueues} in use, ${data.deviceQueues} offered, ${data.queueSize} entries each`);
  console.log(`segments       at most ${data.maxSegments} per request, ${data.maxSegmentSize} bytes each`);
  console.log(`features       ${data.features.join(" ")} (${data.featureBits})`);
  if (c.topology) console.log(`topology       ${JSON.stringify(c.topology)}`);
  if (c.discard) console.log(`discard        ${JSON.stringify(c.discard)}`);
  if (c.writeZeroes) console.log(`write zeroes   ${JSON.stringify(c.writeZeroes)}`);
  console.log(`id             ${data.id}`);
}

async function readCmd(flags: Flags): Promise<void> {
  const offset = parseSize(flags.offset ?? "0", "--offset");
  await using blk = await open(flags, "eventfd");
  const cap = Number(blk.capacity);
  const length = flags.length === undefined ? cap - offset : parseSize(flags.length, "--length");
  if (offset + length > cap) throw new UsageError(`--offset + --length go past the capacity ${cap}`);
  const out = flags.output && flags.output !== "-"
    ? await Deno.open(flags.output, { write: true, create: true, truncate: true })
    : Deno.stdout;
  try {
    // Any byte range: read whole blocks around it, write out the part asked for.
    const a = blk.blockSize;
    const chunk = 1 << 20;
    const buf = blk.allocBuffer(chunk);
    let pos = offset;
    while (pos < offset + length) {
      const start = Math.floor(pos / a) * a;
      const end = Math.min(Math.ceil((offset + length) / a) * a, start + chunk);
      const view = buf.subarray(0, end - start);
      await blk.read(start, view);
      const from = pos - start, to = Math.min(offset + length, end) - start;
      await writeAll(out, view.subarray(from, to));
      pos = start + to;
    }
  } finally {
    if (out !== Deno.stdout) out.close();
  }
}

async function writeAll(w: { write(p: Uint8Array): Promise<number> }, data: Uint8Array): Promise<void> {
  let at = 0;
  while (at < data.length) at += await w.write(data.subarray(at));
}

async function writeCmd(flags: Flags): Promise<void> {
  const offset = parseSize(flags.offset ?? "0", "--offset");
  const input = flags.input && flags.input !== "-" ? await Deno.readFile(flags.input) : await readStdin();
  const length = flags.length === undefined ? input.length : parseSize(flags.length, "--length");
  if (length > input.length) throw new UsageError(`--length ${length} is more than the ${input.length} bytes of input`);
  await using blk = await open(flags, "eventfd");
  const a = blk.blockSize;
  if (offset % a !== 0 || length % a !== 0) {
    throw new UsageError(`--offset and the length (${length}) must be multiples of the block size ${a}`);
  }
  if (offset + length > Number(blk.capacity)) throw new UsageError(`the write goes past the capacity ${blk.capacity}`);
  const chunk = 1 << 20;
  const buf = blk.allocBuffer(chunk);
  for (let at = 0; at < length; at += chunk) {
    const n = Math.min(chunk, length - at);
    buf.set(input.subarray(at, at + n));
    await blk.write(offset + at, buf.subarray(0, n));
  }
  await blk.flush();
  console.error(`wrote ${length} bytes at ${offset}`);
}

async function readStdin(): Promise<Uint8Array> {
  return new Uint8Array(await new Response(Deno.stdin.readable).arrayBuffer());
}

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString("en");
}

/**
 * Prints a bench result as text.
 *
 * @param r the result
 * @param mode the completion mode
 */
export function printResult(r: FioResult, mode: CompletionMode): void {
  const j = r.job;
  const l = r.latency;
  console.log(
    `${j.rw} bs=${j.bs} iodepth=${j.iodepth} queues=${j.queues} mode=${mode} api=${j.api ?? "batch"}: ` +
      `${fmtInt(r.iops)} IOPS, ${r.mbps.toFixed(1)} MB/s over ${r.seconds.toFixed(2)} s (${
        fmtInt(r.ios)
      } I/Os, ${r.errors} errors)`,
  );
  console.log(
    `  latency (µs): mean ${l.mean.toFixed(2)}  min ${l.min.toFixed(2)}  p50 ${l.p50.toFixed(2)}  ` +
      `p99 ${l.p99.toFixed(2)}  p99.9 ${l.p999.toFixed(2)}  max ${l.max.toFixed(2)}`,
  );
}

async function bench(flags: Flags): Promise<void> {
  const rw = (flags.rw ?? "randread") as RwPattern;
  if (!RW_PATTERNS.includes(rw)) {
    throw new UsageError(`--rw must be one of ${RW_PATTERNS.join(", ")}, got ${JSON.stringify(flags.rw)}`);
  }
  const api = flags.api ?? "batch";
  if (api !== "batch" && api !== "promise") throw new UsageError(`--api must be batch or promise`);
  const backend = flags.backend ?? "null";
  if (backend !== "null" && backend !== "file") throw new UsageError(`--backend must be null or file`);
  const mode = parseMode(flags.mode, "poll");
  const queues = flags.queues ? parseNumber(flags.queues, "--queues", 1, 65535) : 1;
  const job: FioJob = {
    rw,
    bs: parseSize(flags.bs ?? "4k", "--bs"),
    iodepth: parseNumber(flags.iodepth ?? "1", "--iodepth", 1, 32768),
    queues,
    runtime: parseNumber(flags.runtime ?? "5", "--runtime", 0.001),
    rampTime: parseNumber(flags.ramp ?? "1", "--ramp", 0),
    rwmixread: parseNumber(flags.rwmixread ?? "50", "--rwmixread", 0, 100),
    size: flags.size ? parseSize(flags.size, "--size") : undefined,
    api,
  };
  let daemon: QemuStorageDaemon | undefined;
  if (!flags.path && !flags.device && (flags.transport ?? "vhost-user") === "vhost-user") {
    daemon = await QemuStorageDaemon.start({
      driver: backend === "null" ? "null-co" : "file",
      size: job.size ?? (backend === "null" ? 2 ** 30 : 256 * 2 ** 20),
      numQueues: queues,
    });
  }
  try {
    await using blk = await open({ ...flags, queues: String(queues) }, mode, daemon?.socketPath);
    const tty = Deno.stderr.isTerminal();
    job.onProgress = (p) => {
      const line = `[${p.elapsed.toFixed(0).padStart(3)}s${p.ramping ? " ramp" : ""}] ${fmtInt(p.iops)} IOPS, ${
        p.mbps.toFixed(1)
      } MB/s`;
      if (flags.json) return;
      if (tty) Deno.stderr.writeSync(new TextEncoder().encode(`\r${line}\x1b[K`));
      else console.error(line);
    };
    const result = await runFio(blk, job);
    if (tty && !flags.json) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
    if (flags.json) console.log(JSON.stringify({ ...result, mode, backend: daemon ? backend : flags.path }, null, 2));
    else printResult(result, mode);
  } finally {
    await daemon?.stop();
  }
}

/**
 * Runs the CLI.
 *
 * @param args command-line arguments
 * @returns the exit status
 */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args, options: FLAGS, allowPositionals: true, strict: true });
  } catch (e) {
    console.error(`error: ${(e as Error).message.split("\n")[0]} (see --help)`);
    return 2;
  }
  const { values: flags, positionals } = parsed;
  if (flags.help || positionals.length === 0) {
    console.log(USAGE);
    return flags.help ? 0 : 2;
  }
  const [command, ...rest] = positionals;
  try {
    if (rest.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(rest[0])}`);
    switch (command) {
      case "info":
        await info(flags);
        break;
      case "read":
        await readCmd(flags);
        break;
      case "write":
        await writeCmd(flags);
        break;
      case "bench":
        await bench(flags);
        break;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)} (info, read, write, bench)`);
    }
    return 0;
  } catch (e) {
    if (e instanceof UsageError || e instanceof RangeError) {
      console.error(`error: ${e.message}`);
      return 2;
    }
    console.error(`error: ${(e as Error).name}: ${(e as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
