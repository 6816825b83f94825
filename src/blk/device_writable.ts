/**
 * The device as a sink: {@linkcode deviceWritable} takes chunks of any size
 * into pool buffers of `chunkSize` and writes each full one with up to
 * `queueDepth` in flight (`write()` waits while they are all busy: the
 * backpressure); a tail inside a block is refused unless `pad`; `close()`
 * waits for every write and flushes; the first device error errors the
 * stream. {@linkcode writeFromStream} does the same from a readable stream,
 * faster: a {@linkcode fileReadable} is read straight into the device's
 * buffers, any other byte stream through a BYOB reader into reused ones.
 *
 * @module
 */

import { InvalidArgumentError, OutOfBufferMemoryError, type VirtioError } from "../errors.ts";
import { fileBehind } from "./file_readable.ts";
import {
  alignedOffset,
  chunkSizeOf,
  depthOf,
  release,
  type StreamDevice,
  type WritableOptions,
} from "./stream_options.ts";

/**
 * The writing end shared by {@linkcode deviceWritable} and
 * {@linkcode writeFromStream}: pool buffers of `chunkSize` (one being
 * filled, up to `queueDepth` being written), each written once full.
 */
class DeviceWriter {
  readonly #dev: StreamDevice;
  readonly #chunk: number;
  readonly #depth: number;
  readonly #pad: boolean;
  readonly #flush: boolean;
  readonly #all: Uint8Array<ArrayBuffer>[] = [];
  readonly #spare: Uint8Array<ArrayBuffer>[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  #failure: { error: VirtioError } | undefined;
  #stage: Uint8Array<ArrayBuffer> | undefined;
  #filled = 0;
  #pos: number;
  #released = false;

  constructor(dev: StreamDevice, o: WritableOptions) {
    this.#dev = dev;
    this.#pos = alignedOffset(dev, o.offset, "offset");
    this.#chunk = chunkSizeOf(dev, o.chunkSize);
    this.#depth = depthOf(o.queueDepth);
    this.#pad = o.pad === true;
    this.#flush = o.flush !== false;
  }

  #check(): void {
    if (this.#failure) throw this.#failure.error;
  }

  /** The buffer being filled; waits while every buffer is being written (the backpressure). */
  async #staging(): Promise<Uint8Array<ArrayBuffer>> {
    this.#check(); // a write that failed meanwhile ends the stream
    if (this.#stage) return this.#stage;
    if (this.#spare.length === 0 && this.#all.length < this.#depth + 1) {
      try {
        this.#all.push(this.#dev.allocBuffer(this.#chunk));
        return this.#stage = this.#all[this.#all.length - 1];
      } catch (e) {
        // A pool smaller than queueDepth buffers: make do with those there are.
        if (!(e instanceof OutOfBufferMemoryError) || this.#inFlight.size === 0) throw e;
      }
    }
    while (this.#spare.length === 0) await Promise.race(this.#inFlight);
    this.#check();
    return this.#stage = this.#spare.pop()!;
  }

  /** Writes the staged `#filled` bytes (the buffer goes back to the spares when done). */
  #writeOut(): void {
    const buf = this.#stage!, n = this.#filled, at = this.#pos;
    if (at + n > Number(this.#dev.capacity)) {
      throw new InvalidArgumentError(
        `the stream goes past the device's end (${this.#dev.capacity} bytes) at ${at + n}`,
      );
    }
    this.#pos += n;
    this.#stage = undefined;
    this.#filled = 0;
    const p: Promise<void> = this.#dev.write(at, buf.subarray(0, n)).then(
      () => {
        this.#inFlight.delete(p);
        this.#spare.push(buf);
      },
      (e) => {
        this.#inFlight.delete(p);
        this.#spare.push(buf);
        this.#failure ??= { error: e };
      },
    );
    this.#inFlight.add(p);
  }

  /** Copies `data` in, writing each buffer that fills up. */
  async append(data: Uint8Array): Promise<void> {
    this.#check();
    if (!(data instanceof Uint8Array)) throw new InvalidArgumentError("a device stream takes Uint8Array chunks");
    for (let at = 0; at < data.byteLength;) {
      const stage = await this.#staging();
      const k = Math.min(data.byteLength - at, this.#chunk - this.#filled);
      stage.set(data.subarray(at, at + k), this.#filled);
      this.#filled += k;
      at += k;
      if (this.#filled === this.#chunk) this.#writeOut();
    }
  }

  /** Reads from a file straight into the buffer being filled (no copy); null at the file's end. */
  async readFrom(file: Deno.FsFile): Promise<number | null> {
    this.#check();
    const stage = await this.#staging();
    const n = await file.read(stage.subarray(this.#filled, this.#chunk));
    if (n === null) return null;
    this.#filled += n;
    if (this.#filled === this.#chunk) this.#writeOut();
    return n;
  }

  /** Writes the tail (padded, or refused when it ends inside a block), waits for every write, flushes. */
  async end(): Promise<void> {
    try {
      this.#check();
      if (this.#filled > 0) {
        const bs = this.#dev.blockSize, tail = this.#filled % bs;
        if (tail !== 0) {
          if (!this.#pad) {
            throw new InvalidArgumentError(
              `the stream ended ${tail} bytes into a block of ${bs}: pad the data to whole blocks, or pass pad: true`,
            );
          }
          this.#stage!.fill(0, this.#filled, this.#filled + bs - tail);
          this.#filled += bs - tail;
        }
        this.#writeOut();
      }
      await Promise.all(this.#inFlight);
      this.#check();
      if (this.#flush) await this.#dev.flush();
    } finally {
      await this.abort();
    }
  }

  /** Waits for the writes in flight and gives the buffers back. */
  async abort(): Promise<void> {
    await Promise.allSettled(this.#inFlight);
    if (this.#released) return;
    this.#released = true;
    release(this.#dev, this.#all);
  }
}

/**
 * A sink that writes what it is given from `offset` on.
 *
 * @param dev the device
 * @param o start, chunk size, writes in flight, padding, flush
 * @returns the stream
 */
export function deviceWritable(dev: StreamDevice, o: WritableOptions = {}): WritableStream<Uint8Array> {
  const w = new DeviceWriter(dev, o);
  return new WritableStream<Uint8Array>({
    write: (data) => w.append(data),
    close: () => w.end(),
    abort: () => w.abort(),
  });
}

/**
 * Writes everything `source` yields from `offset` on, as piping it into
 * {@linkcode deviceWritable} does, but faster: a stream from
 * {@linkcode fileReadable} is read straight into the device's buffers (no
 * copy at all), and any other byte stream with a BYOB reader into reused
 * buffers (no chunk allocated on the way).
 *
 * @param dev the device
 * @param source what to write (consumed)
 * @param o start, chunk size, writes in flight, padding, flush
 * @returns the bytes taken from the source
 */
export async function writeFromStream(
  dev: StreamDevice,
  source: ReadableStream<Uint8Array>,
  o: WritableOptions = {},
): Promise<number> {
  let total = 0;
  const file = source.locked ? undefined : fileBehind(source);
  // Straight from a file, larger writes pay: 4 MiB unless told otherwise.
  const w = new DeviceWriter(dev, file !== undefined && o.chunkSize === undefined ? { ...o, chunkSize: 4 << 20 } : o);
  if (file !== undefined) {
    // Lock the stream (nothing else reads the file), read the file into the device's buffers.
    const reader = source.getReader();
    try {
      for (let n = await w.readFrom(file); n !== null; n = await w.readFrom(file)) {
        total += n;
        o.signal?.throwIfAborted();
      }
      await w.end();
    } catch (e) {
      await w.abort();
      throw e;
    } finally {
      await reader.cancel().catch(() => {}); // closes the file
      reader.releaseLock();
    }
    return total;
  }
  let reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>;
  let byob = true;
  try {
    reader = source.getReader({ mode: "byob" });
  } catch {
    byob = false;
    reader = source.getReader();
  }
  try {
    let scratch = new Uint8Array(chunkSizeOf(dev, o.chunkSize));
    for (;;) {
      const { value, done } = byob
        ? await (reader as ReadableStreamBYOBReader).read(scratch)
        : await (reader as ReadableStreamDefaultReader<Uint8Array>).read();
      if (done) break;
      o.signal?.throwIfAborted();
      total += value.byteLength;
      await w.append(value); // copied into the device's buffers before this resolves
      if (byob) scratch = new Uint8Array(value.buffer as ArrayBuffer); // the same memory, handed back by the read
    }
    await w.end();
  } catch (e) {
    await w.abort();
    await reader.cancel(e).catch(() => {});
    throw e;
  } finally {
    reader.releaseLock();
  }
  return total;
}
