/**
 * `probe`'s checks: connect to a vhost-user-blk back-end and find out what
 * it offers and how it behaves — features, config space, queues, ring
 * formats, notification suppression in both directions, used lengths,
 * status bytes, the segment limits it really accepts, GET_ID, flush, and
 * (only when allowed) a verified write round trip that restores what was
 * there. Every finding gets a verdict; a back-end is conforming when none
 * is `non-conforming`.
 *
 * Reads are harmless; nothing is written unless `writeTest` is set.
 *
 * @module
 */

import { loadShim } from "../os/loader.ts";
import { VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_MQ, VIRTIO_BLK_FEATURE_NAMES } from "../blk/spec.ts";
import type { VirtioBlkQueueStats } from "../blk/queue.ts";
import type { VirtioBlkConnectOptions } from "../blk/options.ts";
import { VirtioBlk } from "../blk/virtio_blk.ts";
import { VIRTIO_BLK_CONFIG_SIZE } from "../blk/config.ts";
import { ConnectFailedError, DeviceIoError, DeviceUnsupportedError, TimeoutError, VirtioError } from "../errors.ts";
import { describeFeatures, VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED } from "../virtio/spec.ts";
import { describeProtocolFeatures, VhostUserProtocolFeature as PF } from "../transport/vhost_user/protocol.ts";
import { VhostUserTransport } from "../transport/vhost_user/transport.ts";

/** How a finding stands. */
export type ProbeVerdict = "ok" | "quirk" | "non-conforming" | "not offered" | "skipped";

/** One line of the report. */
export interface ProbeFinding {
  /** What was checked. */
  readonly check: string;
  /** Its verdict. */
  readonly verdict: ProbeVerdict;
  /** What was seen, for humans. */
  readonly result: string;
}

/** The whole report. */
export interface ProbeReport {
  /** The socket probed. */
  readonly target: string;
  /** Every finding, in the order checked. */
  readonly findings: readonly ProbeFinding[];
  /** True when no finding is `non-conforming`. */
  readonly conforming: boolean;
}

/** Options of {@linkcode probeVhostUser}. */
export interface ProbeOptions {
  /** Also write (and verify, and restore) the last MiB, and try discard and write-zeroes there. */
  writeTest?: boolean;
  /** Control-path reply timeout; default 5000 ms (some back-ends answer a new connection's first message slowly). */
  timeoutMs?: number;
  /** How long a request may go uncompleted before it counts as dropped; default 2000 ms. */
  stallMs?: number;
  /** Called with each finding as it is made. */
  onFinding?: (f: ProbeFinding) => void;
}

const MiB = 1 << 20;

interface Session {
  transport: VhostUserTransport;
  blk: VirtioBlk;
}

/** What a request came to: ok, a typed failure, or no completion at all. */
type Outcome = { ok: true; value: unknown } | { ok: false; error: VirtioError; stalled: boolean };

async function outcome(p: Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: true, value: await p };
  } catch (e) {
    if (!(e instanceof VirtioError)) throw e;
    return { ok: false, error: e, stalled: e instanceof TimeoutError };
  }
}

function describeOutcome(o: Outcome): string {
  if (o.ok) return "completed";
  if (o.stalled) return "never completed (dropped)";
  if (o.error instanceof DeviceIoError) return "failed with status IOERR";
  if (o.error instanceof DeviceUnsupportedError) return "refused with status UNSUPP";
  return `failed: ${o.error.message}`;
}

/** How {@linkcode usedLengths} words lengths that cover the data and nothing beyond the request. */
const EXPECTED = "as expected";

function usedLengths(before: VirtioBlkQueueStats, after: VirtioBlkQueueStats, n: number): string {
  const over = after.usedLengthOver - before.usedLengthOver;
  const short = after.usedLengthShort - before.usedLengthShort;
  if (over === 0 && short === 0) return `${EXPECTED} (${n} of ${n})`;
  const parts = [];
  if (over) parts.push(`${over} above what the request let it write`);
  if (short) parts.push(`${short} short of the data read`);
  return parts.join(", ");
}

/**
 * Probes the vhost-user-blk back-end at `path`.
 *
 * @example
 * ```ts ignore
 * import { probeVhostUser } from "./probe.ts";
 * const report = await probeVhostUser("/tmp/x.sock");
 * for (const f of report.findings) console.log(f.check, f.verdict, f.result);
 * ```
 *
 * @param path the back-end's socket
 * @param options write test, timeouts, progress
 * @returns the report
 */
export async function probeVhostUser(path: string, options: ProbeOptions = {}): Promise<ProbeReport> {
  await loadShim();
  const findings: ProbeFinding[] = [];
  const note = (check: string, verdict: ProbeVerdict, result: string) => {
    const f = { check, verdict, result };
    findings.push(f);
    options.onFinding?.(f);
  };
  const stallMs = options.stallMs ?? 2000;
  const open = async (extra: Partial<VirtioBlkConnectOptions> = {}): Promise<Session> => {
    const transport = await VhostUserTransport.connect(path, { timeoutMs: options.timeoutMs ?? 5000 });
    const blk = await VirtioBlk.connect({
      transport,
      mode: "poll",
      queueSize: 256,
      bufferPoolSize: 16 * MiB,
      stallTimeoutMs: stallMs,
      closeTimeoutMs: stallMs,
      ...extra,
    } as VirtioBlkConnectOptions);
    return { transport, blk };
  };
  const report = (): ProbeReport => ({
    target: path,
    findings,
    conforming: !findings.some((f) => f.verdict === "non-conforming"),
  });

  // --------------------------------------------------------- handshake
  let s: Session;
  try {
    s = await open();
  } catch (e) {
    // Nothing to probe: not the back-end's fault, and no report (exit status as for info).
    if (e instanceof ConnectFailedError) throw e;
    note("connect", "non-conforming", `the handshake failed: ${(e as Error).message}`);
    return report();
  }
  try {
    const { transport: t, blk } = s;
    const blkNames = VIRTIO_BLK_FEATURE_NAMES;
    note(
      "virtio features",
      "ok",
      `offered: ${describeFeatures(t.deviceFeatures, blkNames).join(" ")}; taken: ${blk.features.names.join(" ")}`,
    );
    note(
      "protocol features",
      "ok",
      `offered: ${describeProtocolFeatures(t.offeredProtocolFeatures).join(" ")}; taken: ${
        describeProtocolFeatures(t.protocolFeatures).join(" ")
      }`,
    );
    const raw = await t.readConfig(0, VIRTIO_BLK_CONFIG_SIZE);
    const again = await t.readConfig(0, VIRTIO_BLK_CONFIG_SIZE);
    const c = blk.config;
    const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const unused: string[] = [];
    if (!(t.deviceFeatures & VIRTIO_BLK_F_BLK_SIZE) && v.getUint32(20, true) !== 0) {
      unused.push(`blk_size ${v.getUint32(20, true)}`);
    }
    if (!(t.deviceFeatures & VIRTIO_BLK_F_MQ) && v.getUint16(34, true) > 1) {
      unused.push(`num_queues ${v.getUint16(34, true)}`);
    }
    const stable = raw.every((b, i) => b === again[i]);
    note(
      "config space",
      stable ? "ok" : "non-conforming",
      `capacity ${c.capacity} bytes, block size ${c.blkSize}, seg_max ${c.segMax ?? "not offered"}, size_max ${
        c.sizeMax ?? "not offered or 0"
      }${stable ? ", stable across reads" : ", CHANGES between two reads with no config change"}${
        unused.length ? `; fields of features not offered (ignored): ${unused.join(", ")}` : ""
      }`,
    );
    note(
      "memory regions",
      "ok",
      `up to ${t.maxMemRegions}, by ${t.protocolFeatures & PF.CONFIGURE_MEM_SLOTS ? "ADD_MEM_REG" : "SET_MEM_TABLE"}`,
    );

    // ------------------------------------------- split ring, suppression
    const q = blk.queue<number>(0);
    const buf = blk.allocBuffer(4096);
    const first = await outcome(blk.read(0, buf));
    note("split ring", first.ok ? "ok" : "non-conforming", `a 4 KiB read ${describeOutcome(first)}`);
    if (!first.ok) return report();
    const readsBefore = q.stats();
    t.takeInterruptCount(0);
    const bufs = Array.from({ length: 8 }, () => blk.allocBuffer(4096));
    const rounds = 8;
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < 8; i++) q.read(4096 * i, bufs[i], i);
      q.submit();
      for (let done = 0; done < 8;) {
        done += q.poll(() => {});
        if (done < 8) await q.wait();
      }
    }
    const n = rounds * 8;
    const after = q.stats();
    const kicks = after.notifications - readsBefore.notifications;
    const interrupts = t.takeInterruptCount(0);
    const eventIdx = (blk.features.bits & VIRTIO_F_EVENT_IDX) !== 0n;
    note(
      "kick suppression",
      "ok",
      `${kicks} kicks for ${n} requests in ${rounds} batches${
        kicks === 0 ? " (the device asks for none: it polls the ring)" : eventIdx ? " (EVENT_IDX)" : ""
      }`,
    );
    note(
      "interrupt suppression",
      interrupts === 0 ? "ok" : "quirk",
      interrupts === 0
        ? `none while disabled (${eventIdx ? "used_event" : "VRING_AVAIL_F_NO_INTERRUPT"}), ${n} requests`
        : `${interrupts} interrupts for ${n} requests although disabled (${
          eventIdx ? "used_event" : "VRING_AVAIL_F_NO_INTERRUPT"
        }): wasted wake-ups`,
    );
    const readLengths = usedLengths(readsBefore, after, n);
    note(
      "used length (reads)",
      readLengths.startsWith(EXPECTED) ? "ok" : "non-conforming",
      `split ring: ${readLengths}${readLengths.startsWith(EXPECTED) ? "" : " (tolerated by default; counted)"}`,
    );
    for (const b of bufs) blk.freeBuffer(b);

    // ------------------------------------------------- segment limits
    s = await segmentLimits(s, open, note);
    await sizeLimit(s.blk, note);

    // ------------------------------------------------ GET_ID and flush
    const id = await outcome(s.blk.getId());
    note(
      "GET_ID",
      id.ok ? "ok" : id.stalled ? "non-conforming" : id.error instanceof DeviceUnsupportedError ? "ok" : "quirk",
      id.ok ? JSON.stringify(id.value) : describeOutcome(id),
    );
    if (s.blk.features.flush) {
      const f = await outcome(s.blk.flush());
      note("flush", f.ok ? "ok" : "non-conforming", `FLUSH ${describeOutcome(f)}`);
    } else {
      note(
        "flush",
        "not offered",
        "no VIRTIO_BLK_F_FLUSH: no volatile write cache to flush (flush() completes at once)",
      );
    }

    // ------------------------------------------------------ write test
    if (options.writeTest) await writeTest(s.blk, note);
    else note("write test", "skipped", "read-only probe (--write-test writes the last MiB and restores it)");
  } finally {
    await s.blk.close();
  }

  // --------------------------------------------- interrupts, packed ring
  {
    const e = await open({ mode: "eventfd", spinMicros: 0 });
    try {
      const r = await outcome(e.blk.read(0, e.blk.allocBuffer(4096)));
      note(
        "interrupts",
        r.ok ? "ok" : "non-conforming",
        r.ok
          ? "a read in eventfd mode was signalled on its call eventfd"
          : `eventfd mode: the read ${describeOutcome(r)}`,
      );
    } finally {
      await e.blk.close();
    }
  }
  if (s.transport.deviceFeatures & VIRTIO_F_RING_PACKED) {
    const p = await open({ ring: "packed" });
    try {
      const q = p.blk.queue(0);
      const before = q.stats();
      const buf = p.blk.allocBuffer(4096);
      let r: Outcome = { ok: true, value: undefined };
      for (let i = 0; i < 600 && r.ok; i++) r = await outcome(p.blk.read(4096 * (i % 64), buf)); // past a ring wrap
      note(
        "packed ring",
        r.ok ? "ok" : "non-conforming",
        `600 reads (over two wraps of the ring) ${r.ok ? "completed" : describeOutcome(r)}`,
      );
      if (r.ok) {
        const lengths = usedLengths(before, q.stats(), 600);
        note(
          "used length (packed)",
          lengths.startsWith(EXPECTED) ? "ok" : "non-conforming",
          `reads: ${lengths}${lengths.startsWith(EXPECTED) ? "" : " (tolerated by default; counted)"}`,
        );
      }
    } finally {
      await p.blk.close();
    }
  } else {
    note("packed ring", "not offered", "no VIRTIO_F_RING_PACKED");
  }
  return report();
}

/** Finds the most data segments a read may have: seg_max when offered, else by trying (reconnecting after a drop). */
async function segmentLimits(
  s: Session,
  open: (extra?: Partial<VirtioBlkConnectOptions>) => Promise<Session>,
  note: (check: string, verdict: ProbeVerdict, result: string) => void,
): Promise<Session> {
  const tryRead = async (blk: VirtioBlk, segments: number): Promise<Outcome> => {
    const segs = Array.from({ length: segments }, () => blk.allocBuffer(512));
    const o = await outcome(blk.readv(0, segs));
    if (o.ok || !o.stalled) { for (const b of segs) blk.freeBuffer(b); // a dropped request's buffers stay lent
     }
    return o;
  };
  const offered = s.blk.config.segMax;
  const limit = s.blk.maxSegments; // what a ring of this size holds without indirect descriptors
  const top = await tryRead(s.blk, limit);
  if (top.ok) {
    note(
      "seg_max",
      "ok",
      offered !== undefined
        ? `${offered} offered; a read of ${limit} segments completed`
        : `not offered; a read of ${limit} segments (the most a 256-entry ring takes) completed`,
    );
    return s;
  }
  if (!top.stalled) {
    note(
      "seg_max",
      offered !== undefined ? "non-conforming" : "quirk",
      `a read of ${limit} segments ${describeOutcome(top)}`,
    );
    return s;
  }
  // Dropped: find the largest count that completes, on a fresh connection after each drop.
  let good = 1, bad = limit;
  while (bad - good > 1) {
    const mid = (good + bad) >> 1;
    await s.blk.close();
    s = await open();
    const o = await tryRead(s.blk, mid);
    if (o.ok) good = mid;
    else bad = mid;
  }
  await s.blk.close();
  s = await open();
  note(
    "seg_max",
    "non-conforming",
    `${offered !== undefined ? `${offered} offered` : "not offered"}; reads of up to ${good} segments complete, ` +
      `of ${bad} or more are dropped without a completion (a hang for the driver)`,
  );
  return s;
}

/** Whether one large segment is accepted: size_max when offered, else 1 MiB. */
async function sizeLimit(blk: VirtioBlk, note: (check: string, verdict: ProbeVerdict, result: string) => void) {
  const offered = blk.config.sizeMax;
  const size = Math.min(offered ?? MiB, 4 * MiB, Number(blk.capacity));
  const buf = blk.allocBuffer(size);
  const o = await outcome(blk.read(0, buf));
  if (o.ok || !o.stalled) blk.freeBuffer(buf);
  note(
    "size_max",
    o.ok ? "ok" : offered !== undefined ? "non-conforming" : "quirk",
    `${
      offered !== undefined ? `${offered} offered` : "not offered (or 0: no limit)"
    }; a read of one ${size}-byte segment ${describeOutcome(o)}`,
  );
}

/** Writes the last MiB with a pattern, verifies it, tries discard and write-zeroes there, and restores it. */
async function writeTest(blk: VirtioBlk, note: (check: string, verdict: ProbeVerdict, result: string) => void) {
  if (blk.readOnly) {
    note("write test", "skipped", "the device is read-only");
    return;
  }
  const size = Math.min(MiB, Number(blk.capacity));
  const at = Number(blk.capacity) - size;
  const original = blk.allocBuffer(size), pattern = blk.allocBuffer(size), back = blk.allocBuffer(size);
  const q = blk.queue(0);
  try {
    const read = await outcome(blk.read(at, original));
    if (!read.ok) {
      note("write test", "non-conforming", `reading the last MiB ${describeOutcome(read)}`);
      return;
    }
    crypto.getRandomValues(pattern.subarray(0, Math.min(size, 65536)));
    for (let i = 65536; i < size; i += 65536) pattern.copyWithin(i, 0, Math.min(65536, size - i));
    const before = q.stats();
    const w = await outcome(blk.write(at, pattern));
    const r = w.ok ? await outcome(blk.read(at, back)) : w;
    const same = r.ok && back.every((b, i) => b === pattern[i]);
    const lengths = usedLengths(before, q.stats(), 2);
    if (w.ok) {
      note(
        "used length (writes)",
        lengths.startsWith(EXPECTED) ? "ok" : "non-conforming",
        `a 1 MiB write and read: ${lengths}${lengths.startsWith(EXPECTED) ? "" : " (tolerated by default; counted)"}`,
      );
    }
    for (
      const [name, offered, run] of [
        ["discard", blk.features.discard, () => blk.discard(at, size)],
        ["write-zeroes", blk.features.writeZeroes, () => blk.writeZeroes(at, size)],
      ] as const
    ) {
      if (!offered) {
        note(name, "not offered", `no VIRTIO_BLK_F_${name === "discard" ? "DISCARD" : "WRITE_ZEROES"}`);
        continue;
      }
      const o = await outcome(run());
      let zeroes = true;
      if (o.ok && name === "write-zeroes") {
        await blk.read(at, back);
        zeroes = back.every((b) => b === 0);
      }
      note(
        name,
        o.ok && zeroes ? "ok" : "non-conforming",
        `${size} bytes: ${describeOutcome(o)}${zeroes ? "" : ", but it did not read back as zeroes"}`,
      );
    }
    const restore = await outcome(blk.write(at, original));
    const check = restore.ok ? await outcome(blk.read(at, back)) : restore;
    const restored = check.ok && back.every((b, i) => b === original[i]);
    note(
      "write test",
      same && restored ? "ok" : "non-conforming",
      `${size} bytes at ${at}: written ${
        same ? "and read back" : `but ${w.ok ? describeOutcome(r) : describeOutcome(w)}`
      }, ` +
        `then restored ${restored ? "and verified" : "FAILED"}`,
    );
  } finally {
    for (const b of [original, pattern, back]) if (b.byteLength > 0) blk.freeBuffer(b);
  }
}
