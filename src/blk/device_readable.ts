/**
 * {@linkcode deviceReadable}: a range of the device as a byte stream (BYOB
 * readers welcome), with `queueDepth` reads of `chunkSize` in flight ahead
 * of the reader into pool buffers that are reused.
 *
 * @module
 */

import { InvalidArgumentError } from "../errors.ts";
import { toByteOffset } from "./limits.ts";
import {
  alignedOffset,
  chunkSizeOf,
  depthOf,
  type ReadableOptions,
  release,
  type StreamDevice,
} from "./stream_options.ts";

/**
 * A byte stream of `[offset, offset + length)` of the device.
 *
 * @param dev the device
 * @param o range, chunk size, read-ahead
 * @returns the stream
 */
export function deviceReadable(dev: StreamDevice, o: ReadableOptions = {}): ReadableStream<Uint8Array> {
  const offset = alignedOffset(dev, o.offset, "offset");
  const capacity = Number(dev.capacity);
  const length = o.length === undefined ? capacity - offset : toByteOffset(o.length, "length");
  if (length % dev.blockSize !== 0 || offset + length > capacity) {
    throw new InvalidArgumentError(
      `length ${length} must be a multiple of the block size ${dev.blockSize} within the device (from ${offset})`,
    );
  }
  const chunk = chunkSizeOf(dev, o.chunkSize);
  const depth = depthOf(o.queueDepth);
  const end = offset + length;
  let next = offset; // the next read to issue
  const pending: { buf: Uint8Array<ArrayBuffer>; n: number; done: Promise<void> }[] = [];
  const spare: Uint8Array<ArrayBuffer>[] = [];
  const all: Uint8Array<ArrayBuffer>[] = [];
  let head: { buf: Uint8Array<ArrayBuffer>; n: number; at: number } | undefined;

  const fill = () => {
    while (pending.length < depth && next < end) {
      const n = Math.min(chunk, end - next);
      let buf = spare.pop();
      if (buf === undefined) all.push(buf = dev.allocBuffer(chunk));
      const done = dev.read(next, buf.subarray(0, n));
      done.catch(() => {}); // seen when its turn comes
      pending.push({ buf, n, done });
      next += n;
    }
  };
  const finish = async () => {
    await Promise.allSettled(pending.map((p) => p.done));
    pending.length = 0;
    release(dev, all);
    all.length = 0;
  };

  return new ReadableStream({
    type: "bytes",
    async pull(controller) {
      if (head === undefined) {
        fill();
        const p = pending.shift();
        if (p === undefined) {
          await finish();
          controller.close();
          controller.byobRequest?.respond(0);
          return;
        }
        try {
          await p.done;
        } catch (e) {
          await finish();
          controller.error(e);
          return;
        }
        head = { buf: p.buf, n: p.n, at: 0 };
        fill(); // keep the read-ahead going while this chunk is handed out
      }
      const byob = controller.byobRequest;
      if (byob?.view) {
        const v = new Uint8Array(byob.view.buffer, byob.view.byteOffset, byob.view.byteLength);
        const k = Math.min(v.byteLength, head.n - head.at);
        v.set(head.buf.subarray(head.at, head.at + k));
        head.at += k;
        byob.respond(k);
      } else {
        controller.enqueue(head.buf.slice(head.at, head.n));
        head.at = head.n;
      }
      if (head.at === head.n) {
        spare.push(head.buf);
        head = undefined;
        if (next >= end && pending.length === 0) {
          await finish();
          controller.close();
          controller.byobRequest?.respond(0); // a BYOB read that came meanwhile ends with done
        }
      }
    },
    async cancel() {
      head = undefined;
      next = end; // issue nothing more
      await finish();
    },
  });
}
