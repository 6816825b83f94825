/**
 * `copy`: bytes from a file, a pipe or a device to a file, a pipe or a
 * device, through the device's Web Streams (`VirtioBlk.readable` and
 * `writable`), with a progress line on a terminal, a summary (or `--json`),
 * and `--verify`, which reads the destination back and compares a CRC-32 of
 * it with one of what went through.
 *
 * @module
 */

import type { VirtioBlk } from "../blk/virtio_blk.ts";
import { fileReadable } from "../blk/file_readable.ts";
import { InvalidArgumentError } from "../errors.ts";
import { onTermination } from "../process/terminate.ts";
import { type CommandSpec, type ParsedFlags, parseInteger, parseSize, UsageError, userPath } from "./args.ts";
import { checkPoolFits, poolFor } from "./buffer_memory.ts";
import { Crc32 } from "./crc32.ts";
import { deviceFlags, openDevice } from "./device_flags.ts";
import { formatBandwidth, formatBytes, formatSizeFlag } from "./format.ts";

/** Bytes a file source is read in when it goes straight into the device's buffers (writeFrom). */
const FILE_PIECE = 4 << 20;
/** The largest --chunk the device's streams take. */
const MAX_CHUNK = 64 << 20;

/** The `copy` command. */
export const COPY: CommandSpec = {
  name: "copy",
  usage: "deno task copy --from FILE|-|DEVICE --to FILE|-|DEVICE [--length N] [--verify] [--json] [flags]",
  description: "Copies bytes between a file (or - for stdin/stdout) and a device, or between two devices, through\n" +
    "the device's Web Streams: DEVICE is vhost-user:SOCKET, vhost-vdpa:/dev/vhost-vdpa-N or vfio-pci:BDF, with\n" +
    "@OFFSET for where on it (k, M, G suffixes). From a device any byte range (the length defaults to the rest\n" +
    "of it); to one, whole blocks from a block-aligned offset, and a last partial block is refused unless --pad.\n" +
    "--verify reads the destination back and compares. Ctrl-C stops it and says how much was copied.",
  flags: [
    { name: "from", kind: "string", value: "SRC", help: "a file, - (stdin) or a device" },
    { name: "to", kind: "string", value: "DST", help: "a file, - (stdout) or a device" },
    { name: "length", kind: "string", value: "N", default: "all of the source", help: "bytes to copy" },
    { name: "verify", kind: "boolean", help: "read the destination back and compare (not with --to -)" },
    { name: "pad", kind: "boolean", help: "zero-fill a last partial block on the device" },
    {
      name: "chunk",
      kind: "string",
      value: "N",
      default: "1M",
      help: "bytes per device request: whole blocks, at most 64M",
    },
    { name: "depth", kind: "string", value: "N", default: "8", help: "device requests in flight" },
    { name: "json", kind: "boolean", help: "print one JSON object instead of text (no progress line)" },
    ...deviceFlags("eventfd", "(not used: name devices in --from and --to)").filter((f) =>
      !["path", "transport", "device"].includes(f.name)
    ),
  ],
  examples: [
    "deno task copy --from disk.img --to vhost-user:/tmp/x.sock --verify",
    "deno task copy --from vhost-user:/tmp/x.sock@1M --length 64M --to part.img",
    "deno task copy --from vhost-user:/tmp/x.sock@4M --length 3000000 --to -",
    "cat disk.img | deno task copy --from - --to vhost-user:/tmp/x.sock --pad",
  ],
};

/** One end of a copy. */
type Endpoint =
  | { readonly kind: "file"; readonly path: string; readonly label: string }
  | { readonly kind: "stdio"; readonly label: string }
  | {
    readonly kind: "device";
    readonly transport: "vhost-user" | "vhost-vdpa" | "vfio-pci";
    readonly target: string;
    readonly offset: number;
    readonly label: string;
  };

function parseEndpoint(s: string | true | undefined, flag: string): Endpoint {
  if (typeof s !== "string" || s === "") throw new UsageError(`${flag} is required: a file, - or a device`);
  if (s === "-") return { kind: "stdio", label: flag === "--from" ? "stdin" : "stdout" };
  const m = /^(vhost-user|vhost-vdpa|vfio-pci):(.+)$/.exec(s);
  if (!m) return { kind: "file", path: userPath(s), label: s };
  const at = m[2].lastIndexOf("@");
  const target = at < 0 ? m[2] : m[2].slice(0, at);
  const offset = at < 0 ? 0 : parseSize(m[2].slice(at + 1), `${flag} offset`);
  if (target === "") throw new UsageError(`${flag} ${s}: the device is missing after ${m[1]}:`);
  const transport = m[1] as "vhost-user" | "vhost-vdpa" | "vfio-pci";
  return {
    kind: "device",
    transport,
    target: transport === "vfio-pci" ? target : userPath(target),
    offset,
    label: s,
  };
}

/** Drops the first `skip` bytes, passes the next `limit` on, then ends the stream (cancelling what feeds it). */
function take(limit: number, skip = 0): TransformStream<Uint8Array, Uint8Array> {
  let left = limit, toSkip = skip;
  return new TransformStream({
    transform(chunk, controller) {
      if (toSkip > 0) {
        const n = Math.min(toSkip, chunk.byteLength);
        toSkip -= n;
        chunk = chunk.subarray(n);
      }
      if (left <= 0 || chunk.byteLength === 0) return;
      const part = chunk.byteLength <= left ? chunk : chunk.subarray(0, left);
      left -= part.byteLength;
      controller.enqueue(part);
      if (left === 0) controller.terminate();
    },
  });
}

/** The library's words for its options, in the flags' words. */
function inFlagWords(message: string): string {
  return message
    .replace(/pass pad: true/g, "give --pad to zero-fill the rest of the last block")
    .replace(/\bchunkSize\b/g, "--chunk")
    .replace(/\bqueueDepth\b/g, "--depth");
}

/** Counts and checksums what goes through, and reports progress. */
function meter(onBytes: (chunk: Uint8Array) => void): TransformStream<Uint8Array, Uint8Array> {
  return new TransformStream({
    transform(chunk, controller) {
      onBytes(chunk);
      controller.enqueue(chunk);
    },
  });
}

/** The CRC-32 of the first `bytes` of a stream. */
async function checksum(stream: ReadableStream<Uint8Array>, bytes: number): Promise<{ crc: number; bytes: number }> {
  const crc = new Crc32();
  let seen = 0;
  for await (const chunk of stream) {
    const part = chunk.subarray(0, Math.max(0, Math.min(chunk.byteLength, bytes - seen)));
    crc.update(part);
    seen += part.byteLength;
  }
  return { crc: crc.value, bytes: seen };
}

/**
 * Runs `copy`.
 *
 * @param flags the parsed flags
 * @returns the exit status (1 when --verify found a difference)
 */
export async function copy(flags: ParsedFlags): Promise<number> {
  const from = parseEndpoint(flags.from, "--from");
  const to = parseEndpoint(flags.to, "--to");
  if (from.kind !== "device" && to.kind !== "device") {
    throw new UsageError("one end of a copy must be a device (vhost-user:SOCKET, vhost-vdpa:PATH or vfio-pci:BDF)");
  }
  if (flags.verify && to.kind === "stdio") throw new UsageError("--verify cannot read stdout back: copy to a file");
  const length = flags.length === undefined ? undefined : parseSize(flags.length, "--length");
  if (length === 0) throw new UsageError("--length must be more than 0");
  const chunkSize = parseSize(flags.chunk ?? "1M", "--chunk");
  if (chunkSize === 0 || chunkSize > MAX_CHUNK) throw new UsageError("--chunk must be from one block to 64M");
  const queueDepth = parseInteger(flags.depth ?? "8", "--depth", 1, 256);
  // Device-reachable memory: every stream on a device holds up to --depth + 1 buffers of --chunk (4 MiB
  // pieces for a file read straight into them); the pool holds them all.
  const piece = Math.max(chunkSize, from.kind === "file" ? FILE_PIECE : 0);
  const streamsOn = (key: string) =>
    [from, to].filter((e) => e.kind === "device" && `${e.transport}:${e.target}` === key).length;
  const poolOf = (key: string) => poolFor(streamsOn(key) * (queueDepth + 1), piece);
  for (const e of [from, to]) {
    if (e.kind !== "device") continue;
    checkPoolFits(
      poolOf(`${e.transport}:${e.target}`),
      `--chunk ${formatSizeFlag(chunkSize)} × (--depth ${queueDepth} + 1)`,
      "--chunk or --depth",
    );
  }

  // One connection per device; both ends on one device share it (a back-end serves one front-end).
  const devices = new Map<string, VirtioBlk>();
  const open = async (e: Endpoint & { kind: "device" }) => {
    const key = `${e.transport}:${e.target}`;
    let blk = devices.get(key);
    if (!blk) {
      const deviceFlagsOf: ParsedFlags = {
        ...flags,
        transport: e.transport,
        ...(e.transport === "vfio-pci" ? { device: e.target, path: undefined } : { path: e.target, device: undefined }),
      };
      blk = await openDevice(deviceFlagsOf, "eventfd", { bufferPoolSize: poolOf(key) });
      devices.set(key, blk);
      if (chunkSize % blk.blockSize !== 0) {
        throw new UsageError(`--chunk must be whole blocks of ${e.label}'s ${blk.blockSize} bytes, got ${chunkSize}`);
      }
    }
    return blk;
  };
  const files: Deno.FsFile[] = [];
  const abort = new AbortController();
  const printed = Promise.withResolvers<void>();
  using _hook = onTermination(async () => {
    abort.abort();
    await printed.promise;
  });
  try {
    // The source, and how much of it.
    let source: ReadableStream<Uint8Array>;
    let total: number | undefined;
    if (from.kind === "device") {
      // Any byte range: the blocks around it are read, and the bytes asked for passed on.
      const blk = await open(from);
      const capacity = Number(blk.capacity), a = blk.blockSize;
      if (from.offset >= capacity) {
        throw new UsageError(`--from ${from.label}: the offset is at or past the device's end (${capacity} bytes)`);
      }
      total = length ?? capacity - from.offset;
      if (from.offset + total > capacity) {
        throw new UsageError(
          `--from ${from.label}: ${total} bytes from offset ${from.offset} go past the device's end (${capacity} bytes)`,
        );
      }
      const start = Math.floor(from.offset / a) * a, end = Math.ceil((from.offset + total) / a) * a;
      source = blk.readable({ offset: start, length: end - start, chunkSize, queueDepth });
      if (start !== from.offset || end !== from.offset + total) {
        source = source.pipeThrough(take(total, from.offset - start));
      }
    } else if (from.kind === "file") {
      let file: Deno.FsFile;
      try {
        file = await Deno.open(from.path);
      } catch (e) {
        throw new UsageError(`--from ${from.label}: ${e instanceof Error ? e.message : e}`);
      }
      files.push(file);
      const size = (await file.stat()).size;
      if (length !== undefined && length > size) {
        throw new UsageError(`--length ${length} is more than ${from.label} holds (${size} bytes)`);
      }
      total = length ?? size;
      // Read in large pieces (straight into the device's buffers when that is where it goes).
      source = length === undefined ? fileReadable(file) : fileReadable(file).pipeThrough(take(length));
    } else {
      total = length;
      source = Deno.stdin.readable;
      if (length !== undefined) source = source.pipeThrough(take(length));
    }
    if (total === 0) throw new UsageError(`--from ${from.label} is empty: nothing to copy`);

    // The destination.
    let sink: WritableStream<Uint8Array> | undefined;
    let toDevice: VirtioBlk | undefined;
    if (to.kind === "device") {
      toDevice = await open(to);
      const a = toDevice.blockSize;
      if (to.offset % a !== 0) {
        throw new UsageError(
          `--to ${to.label}: the offset must be a multiple of the device's block size ${a} ` +
            "(copy writes whole blocks; deno task write takes any byte range)",
        );
      }
      if (total !== undefined && to.offset + total > Number(toDevice.capacity)) {
        throw new UsageError(
          `--to ${to.label}: ${total} bytes from offset ${to.offset} go past the device's end (${toDevice.capacity} bytes)`,
        );
      }
      if (total !== undefined && total % a !== 0 && !flags.pad) {
        throw new UsageError(
          `--from ${from.label}: its ${total} bytes end ${total % a} bytes into a block of ${a}: ` +
            "give --pad to zero-fill the rest of the last block",
        );
      }
    } else if (to.kind === "file") {
      let file: Deno.FsFile;
      try {
        file = await Deno.open(to.path, { write: true, create: true, truncate: true });
      } catch (e) {
        throw new UsageError(`--to ${to.label}: ${e instanceof Error ? e.message : e}`);
      }
      sink = file.writable; // closed by the pipe
    } else {
      sink = Deno.stdout.writable;
    }

    // Copy, counting, checksumming and reporting on the way.
    const crc = new Crc32();
    let copied = 0;
    const tty = !flags.json && Deno.stderr.isTerminal();
    const t0 = performance.now();
    let lastReport = 0;
    const encoder = new TextEncoder();
    const report = (final: boolean) => {
      const s = (performance.now() - t0) / 1000;
      const rate = copied / Math.max(s, 1e-9);
      const eta = total !== undefined && rate > 0 ? ` ETA ${Math.max(0, (total - copied) / rate).toFixed(0)}s` : "";
      const of = total !== undefined ? ` of ${formatBytes(total)}` : "";
      const line = `copied ${formatBytes(copied)}${of}  ${formatBandwidth(rate)}${final ? "" : eta}`;
      Deno.stderr.writeSync(encoder.encode(`\r${line}\x1b[K`));
    };
    let interrupted = false;
    const onBytes = (chunk: Uint8Array) => {
      copied += chunk.byteLength;
      if (flags.verify) crc.update(chunk);
      if (tty && performance.now() - lastReport > 250) {
        lastReport = performance.now();
        report(false);
      }
    };
    try {
      if (toDevice !== undefined) {
        // A file straight into the device's buffers when nothing needs to see the bytes on the way.
        const plain = !flags.verify && !tty && from.kind === "file" && length === undefined;
        const stream = plain ? source : source.pipeThrough(meter(onBytes));
        const offset = (to as Endpoint & { kind: "device" }).offset;
        const options = { offset, chunkSize, queueDepth, pad: flags.pad === true, signal: abort.signal };
        const n = await toDevice.writeFrom(stream, options);
        if (plain) copied = n;
      } else {
        await source.pipeThrough(meter(onBytes)).pipeTo(sink!, {
          signal: abort.signal,
          preventClose: to.kind === "stdio",
        });
      }
    } catch (e) {
      if (!abort.signal.aborted) {
        const a = toDevice?.blockSize ?? 1;
        if (e instanceof InvalidArgumentError && toDevice !== undefined && !flags.pad && copied % a !== 0) {
          // A pipe: its length was not known before it ended.
          const whole = Math.floor(copied / a) * a;
          throw new UsageError(
            `--from ${from.kind === "stdio" ? "-" : from.label}: the input ended ${copied % a} bytes into a block ` +
              `of ${a}: give --pad to zero-fill the rest of the last block` +
              (whole > 0 ? ` (the ${whole} bytes before it were written)` : ""),
          );
        }
        throw e;
      }
      interrupted = true;
    }
    // A pipe also ends when the Ctrl-C that stops this copy stops what writes into it: let that signal be seen.
    if (!interrupted && from.kind === "stdio") await new Promise((r) => setTimeout(r, 50));
    if (abort.signal.aborted) interrupted = true;
    const seconds = (performance.now() - t0) / 1000;
    if (tty) Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));

    // Read the destination back.
    let verified: boolean | undefined;
    if (flags.verify && !interrupted) {
      let back: ReadableStream<Uint8Array>;
      if (to.kind === "device") {
        const blk = await open(to);
        const blocks = Math.ceil(copied / blk.blockSize) * blk.blockSize;
        back = blk.readable({ offset: to.offset, length: blocks, chunkSize, queueDepth });
      } else {
        const file = await Deno.open((to as { path: string }).path);
        back = file.readable;
      }
      const again = await checksum(back, copied);
      verified = again.bytes === copied && again.crc === crc.value;
    }

    const result = {
      from: from.label,
      to: to.label,
      bytes: copied,
      seconds,
      bytesPerSecond: copied / Math.max(seconds, 1e-9),
      interrupted,
      ...(flags.verify ? { verified: verified ?? false, crc32: crc.value.toString(16).padStart(8, "0") } : {}),
    };
    const out = (text: string) => (to.kind === "stdio" ? console.error(text) : console.log(text));
    if (flags.json) {
      out(JSON.stringify(result, null, 2));
    } else {
      out(
        `${interrupted ? "interrupted after copying" : "copied"} ${formatBytes(copied)} (${copied} bytes) from ` +
          `${from.label} to ${to.label} in ${seconds.toFixed(2)} s, ${formatBandwidth(result.bytesPerSecond)}` +
          (verified === undefined ? "" : verified ? "; verified: the destination reads back the same" : ""),
      );
      if (verified === false) out("VERIFY FAILED: the destination does not read back what was copied");
    }
    return verified === false ? 1 : 0;
  } catch (e) {
    // Refused before anything reached the device: an option that came from a flag.
    if (e instanceof InvalidArgumentError) throw new UsageError(inFlagWords(e.message));
    throw e;
  } finally {
    printed.resolve();
    for (const f of files) {
      try {
        f.close();
      } catch { /* closed by its stream */ }
    }
    for (const blk of devices.values()) await blk.close();
  }
}
