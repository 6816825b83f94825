// The reconnect's resubmission order, with stand-in queues (no device):
// submission order across queues, and a flush held back until everything
// submitted before it has completed again.
import assert from "node:assert/strict";
import { ConnectionLostError } from "../mod.ts";
import { Reconnector } from "../src/blk/reconnect.ts";
import type { InFlightRequest, QueueEngine } from "../src/blk/queue_engine.ts";
import { VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT } from "../src/blk/spec.ts";

/** A queue that records what is resubmitted and completes only when told. */
class StandIn {
  paused = false;
  error = undefined;
  readonly ring = { inFlight: 0 };
  readonly log: string[];
  #taken: InFlightRequest[];
  constructor(readonly index: number, taken: InFlightRequest[], log: string[]) {
    this.#taken = taken;
    this.log = log;
  }
  pause() {
    this.paused = true;
  }
  takeInFlight() {
    const t = this.#taken;
    this.#taken = [];
    return t;
  }
  resubmit(r: InFlightRequest) {
    this.log.push(`${r.type === VIRTIO_BLK_T_FLUSH ? "flush" : "write"}#${r.seq}@q${this.index}`);
    this.ring.inFlight++;
  }
  submit() {}
  pumpBacklog() {}
  drain() {}
  rejectTaken() {}
  resume() {
    this.paused = false;
  }
}

const req = (seq: number, queue: number, type: number): InFlightRequest => ({
  seq,
  queue,
  type,
  offset: 0,
  buffers: undefined,
  length: 0,
  unmap: false,
  context: undefined,
  owner: 1,
});

Deno.test("reconnect order: submission order across queues; a flush waits for everything before it", async () => {
  const log: string[] = [];
  const q0 = new StandIn(
    0,
    [req(5, 0, VIRTIO_BLK_T_OUT), req(1, 0, VIRTIO_BLK_T_OUT), req(4, 0, VIRTIO_BLK_T_FLUSH)],
    log,
  );
  const q1 = new StandIn(
    1,
    [req(2, 1, VIRTIO_BLK_T_OUT), req(3, 1, VIRTIO_BLK_T_OUT), req(6, 1, VIRTIO_BLK_T_OUT)],
    log,
  );
  const engines = [q0, q1] as unknown as QueueEngine<unknown>[];
  const events: string[] = [];
  const r = new Reconnector(engines, { timeoutMs: 5000, backoffMs: 1, allowShrink: false }, {
    drop: () => Promise.resolve(),
    attempt: () => {
      q0.resume();
      q1.resume();
      return Promise.resolve();
    },
    dispatch: (e) => events.push(e.type),
    lost: () => {},
  });
  r.begin(new ConnectionLostError("gone"));
  // The writes before the flush go out at once; the flush is held.
  for (let i = 0; i < 50 && log.length < 3; i++) await new Promise((res) => setTimeout(res, 1));
  await new Promise((res) => setTimeout(res, 20));
  assert.deepEqual(log, ["write#1@q0", "write#2@q1", "write#3@q1"]);
  // They complete: the flush, then what came after it.
  q0.ring.inFlight = 0;
  q1.ring.inFlight = 0;
  for (let i = 0; i < 100 && !events.includes("reconnect"); i++) await new Promise((res) => setTimeout(res, 1));
  assert.deepEqual(log, ["write#1@q0", "write#2@q1", "write#3@q1", "flush#4@q0", "write#5@q0", "write#6@q1"]);
  assert.deepEqual(events, ["disconnect", "reconnect"]);
  assert.equal(r.stats().resubmitted, 6);
  await r.close(new ConnectionLostError("done"));
});
