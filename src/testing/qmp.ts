/**
 * A small client of QEMU's machine protocol (QMP, `docs/interop/qmp-spec.rst`)
 * for tests and examples that change a device under a running driver:
 * `block_resize` on qemu-storage-daemon or on a QEMU guest's drive. One
 * command per connection: connect, read the greeting, `qmp_capabilities`,
 * the command, close — asynchronous events in between are skipped.
 *
 * @module
 */

/** A QMP command failed; `qmpClass` is QEMU's error class (e.g. `GenericError`). */
export class QmpError extends Error {
  /** QEMU's error class. */
  readonly qmpClass: string;

  /**
   * Creates the instance.
   *
   * @param command the command that failed
   * @param qmpClass QEMU's error class
   * @param desc QEMU's description
   */
  constructor(command: string, qmpClass: string, desc: string) {
    super(`QMP ${command}: ${desc} (${qmpClass})`);
    this.name = "QmpError";
    this.qmpClass = qmpClass;
  }
}

/**
 * Runs one QMP command on the monitor socket at `path`.
 *
 * @example Grow a qemu-storage-daemon's disk
 * ```ts ignore
 * import { qmpExecute } from "./testing.ts";
 * await qmpExecute("/tmp/qsd-qmp.sock", "block_resize", { "node-name": "disk", size: 128 << 20 });
 * ```
 *
 * @param path the monitor's Unix socket (`--chardev socket,id=m,path=PATH,server=on,wait=off --monitor chardev=m,mode=control`)
 * @param command e.g. `block_resize`
 * @param args its arguments
 * @param timeoutMs how long the whole exchange may take
 * @returns the command's `return` value
 * @throws {QmpError} when QEMU answers with an error
 */
export async function qmpExecute(
  path: string,
  command: string,
  args?: Record<string, unknown>,
  timeoutMs = 10_000,
): Promise<unknown> {
  const conn = await Deno.connect({ transport: "unix", path });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, timeoutMs);
  try {
    const lines = readLines(conn);
    const next = async (): Promise<Record<string, unknown>> => {
      for (;;) {
        const { value, done } = await lines.next();
        if (done) throw new Error(`QMP ${command}: the monitor at ${path} closed the connection`);
        const msg = JSON.parse(value) as Record<string, unknown>;
        if (!("event" in msg)) return msg; // events may come at any time
      }
    };
    const greeting = await next();
    if (!("QMP" in greeting)) throw new Error(`QMP: unexpected greeting ${JSON.stringify(greeting)}`);
    const send = async (execute: string, a?: Record<string, unknown>) => {
      await writeAll(
        conn,
        new TextEncoder().encode(JSON.stringify(a ? { execute, arguments: a } : { execute }) + "\n"),
      );
      const reply = await next();
      if ("error" in reply) {
        const e = reply.error as { class?: string; desc?: string };
        throw new QmpError(execute, e.class ?? "unknown", e.desc ?? JSON.stringify(e));
      }
      return reply.return;
    };
    await send("qmp_capabilities");
    return await send(command, args);
  } catch (e) {
    if (timedOut) throw new Error(`QMP ${command}: no answer from ${path} within ${timeoutMs} ms`);
    throw e;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timeout */ }
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

async function* readLines(conn: Deno.Conn): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const buf = new Uint8Array(65536);
  let pending = "";
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) return;
    pending += decoder.decode(buf.subarray(0, n), { stream: true });
    let i;
    while ((i = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, i).trim();
      pending = pending.slice(i + 1);
      if (line) yield line;
    }
  }
}
