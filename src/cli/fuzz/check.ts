/**
 * What a case's run means: for each request, whether the back-end answered
 * as it must (a legal request: in time, with the right status, the right
 * data, a used length no larger than what it could write), refused an
 * illegal one in a way the spec allows (IOERR or UNSUPP, no answer, a
 * hang-up), or accepted it; and for the whole case, whether memory outside
 * the buffers, device-readable buffers or the used ring show something the
 * device must never do.
 *
 * Data is checked against a model of the disk kept for the case alone:
 * sectors a phase wrote (or read) must read back the same in a later phase;
 * a write that failed, a discard or an illegal write makes sectors unknown.
 *
 * @module
 */

import { SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP } from "../../blk/spec.ts";
import { type FuzzRequest, ILLEGAL_KINDS, writableBytes } from "./case.ts";
import type { CaseRun, RequestRun } from "./execute.ts";
import { POISON } from "./memory.ts";

/** The kinds of findings, most serious first. */
export const FINDING_KINDS = ["crash", "memory", "completion", "hang", "data", "status"] as const;

/** A kind of finding. */
export type FindingKind = typeof FINDING_KINDS[number];

/** What each kind means, for reports. */
export const FINDING_MEANINGS: Readonly<Record<FindingKind, string>> = {
  crash: "the connection dropped and a new one was refused: the back-end process is gone",
  memory: "a canary around a buffer or in unused shared memory, a device-readable buffer or a ring part the " +
    "device must not write changed",
  completion: "the used ring named an id not in flight or one already completed, jumped its index, or " +
    "gave a length larger than the device could write",
  hang: "a legal request was not completed in time (or the back-end closed the connection on it)",
  data: "data read back differs from what the case wrote (or read) there before",
  status: "a wrong status byte: not OK for a legal request (UNSUPP for a type not offered), not written, " +
    "not a status at all, or OK where the spec requires a refusal",
};

/** One thing wrong. */
export interface Observation {
  /** Its kind. */
  readonly kind: FindingKind;
  /** What was seen. */
  readonly text: string;
  /** The request it is about, when one is. */
  readonly request?: number;
  /** The request is one of several the same event left unfinished (a hang-up): not surely the cause. */
  readonly unsure?: boolean;
}

/** How an illegal request was refused. */
export type Refusal = "IOERR" | "UNSUPP" | "no answer" | "hang-up" | "no status";

/** What a case came to. */
export interface CaseVerdict {
  /** Findings (empty: none). */
  readonly observations: Observation[];
  /** Illegal requests refused, by how. */
  readonly refusals: Refusal[];
  /** Illegal requests the back-end completed with OK. */
  readonly accepted: number;
  /** Per request (same order as the case): `ok`, `refused: …`, `accepted`, or the finding's text. */
  readonly outcomes: string[];
}

/** A status byte's name. */
export function statusName(s: number | undefined): string {
  if (s === undefined) return "unreadable";
  if (s === VIRTIO_BLK_S_OK) return "OK";
  if (s === VIRTIO_BLK_S_IOERR) return "IOERR";
  if (s === VIRTIO_BLK_S_UNSUPP) return "UNSUPP";
  if (s === POISON) return "not written";
  return `0x${s.toString(16).padStart(2, "0")}`;
}

interface Known {
  bytes: Uint8Array;
  origin: string;
}

/**
 * Judges a case's run.
 *
 * @param run what happened
 * @param hangup how a hang-up ended it: `"crash"` (the back-end is gone), `"closed"` (it came back), or none
 * @param timeoutMs the timeout legal requests had
 * @returns the verdict
 */
export function judge(run: CaseRun, hangup: "crash" | "closed" | undefined, timeoutMs: number): CaseVerdict {
  const obs: Observation[] = [];
  const refusals: Refusal[] = [];
  const outcomes: string[] = run.requests.map(() => "");
  let accepted = 0;
  const c = run.fuzzCase;

  if (hangup === "crash") {
    obs.push({
      kind: "crash",
      text: `the back-end closed the connection and refuses a new one (it is gone) during this ${
        c.legal ? "legal" : "illegal"
      } case`,
    });
  }
  for (const a of run.anomalies) obs.push({ kind: "completion", text: a });
  for (const d of run.damage) {
    obs.push({
      kind: "memory",
      text: `${d.what === "readable" ? "device-readable memory changed" : "canary damaged"} at ${d.where}: ${d.detail}`,
      request: d.request,
    });
  }

  // Requests, phase by phase, against the model.
  const model = new Map<bigint, Known>();
  const byPhase = new Map<number, RequestRun[]>();
  for (const r of run.requests) byPhase.set(r.request.phase, [...(byPhase.get(r.request.phase) ?? []), r]);
  for (const [, phase] of [...byPhase].sort((a, b) => a[0] - b[0])) {
    let wipe = false;
    for (const r of phase) {
      const q = r.request;
      const i = run.requests.indexOf(r);
      if (!r.chain) {
        outcomes[i] = "not submitted (an earlier phase ended the case)";
        continue;
      }
      if (!r.completed) {
        if (q.legal && c.legal) {
          if (run.hungUp) {
            if (hangup !== "crash") {
              obs.push({
                kind: "hang",
                text: `request ${q.n} (${q.what}) was not completed: the back-end closed the connection on it ` +
                  `(and accepted a new one)`,
                request: q.n,
                unsure: true,
              });
            }
            outcomes[i] = "connection closed before completion";
          } else if (run.phases[q.phase] === "timeout") {
            const waited = r.shortWait === undefined
              ? `${timeoutMs} ms`
              : `${r.shortWait.toFixed(0)} ms (requests of its shape hung for the full ${timeoutMs} ms earlier in ` +
                `this run; --replay waits the full timeout)`;
            obs.push({
              kind: "hang",
              text: `request ${q.n} (${q.what}) was not completed within ${waited}`,
              request: q.n,
            });
            outcomes[i] = `not completed within ${waited}`;
          } else {
            outcomes[i] = "not completed (the case ended on a completion problem)";
          }
        } else if (!q.legal) {
          const how: Refusal = run.hungUp ? "hang-up" : "no answer";
          if (hangup !== "crash") refusals.push(how);
          outcomes[i] = `refused: ${how === "hang-up" ? "the back-end closed the connection" : "no answer"}`;
        } else {
          outcomes[i] = "not completed (the back-end may stop a queue after an illegal request)";
        }
        if (q.effect !== "read" && q.effect !== "none") wipe = true;
        continue;
      }
      // Completed: the used length.
      if (q.expect.lengthKnown && r.lenValid && r.len !== undefined) {
        const max = writableBytes(q);
        if (r.len > max) {
          obs.push({
            kind: "completion",
            text: `request ${q.n} (${q.what}): used length ${r.len}, but the device could write at most ${max} byte${
              max === 1 ? "" : "s"
            }`,
            request: q.n,
          });
        }
      }
      // The status.
      const st = r.status;
      let good = false;
      if (!q.hasStatus || !q.expect.statusKnown) {
        // The device cannot know where the status goes: whatever it did is a refusal or acceptance.
        if (st === VIRTIO_BLK_S_IOERR || st === VIRTIO_BLK_S_UNSUPP) {
          refusals.push(st === VIRTIO_BLK_S_IOERR ? "IOERR" : "UNSUPP");
          outcomes[i] = `refused: ${statusName(st)}`;
        } else {
          accepted++;
          outcomes[i] = `accepted (completed, status byte ${statusName(st)})`;
        }
      } else if (st === undefined) {
        outcomes[i] = "completed (the status byte is outside shared memory)";
        if (!q.legal) accepted++;
      } else if (st === POISON) {
        if (q.legal) {
          obs.push({
            kind: "status",
            text: `request ${q.n} (${q.what}) completed without a status byte written`,
            request: q.n,
          });
          outcomes[i] = "completed, status not written";
        } else {
          refusals.push("no status");
          outcomes[i] = "refused: completed without a status";
        }
      } else if (st > VIRTIO_BLK_S_UNSUPP) {
        obs.push({
          kind: "status",
          text: `request ${q.n} (${q.what}): status byte ${statusName(st)} is no status at all`,
          request: q.n,
        });
        outcomes[i] = `status ${statusName(st)}`;
      } else if (!q.expect.allowed.includes(st)) {
        const expected = q.expect.allowed.map(statusName).join(" or ");
        obs.push({
          kind: "status",
          text: q.legal
            ? `request ${q.n} (${q.what}): status ${statusName(st)}, expected ${expected}`
            : `request ${q.n} (${q.what}; illegal: ${ILLEGAL_KINDS[q.illegal!]}): status ${
              statusName(st)
            }, the spec requires ${expected}`,
          request: q.n,
        });
        outcomes[i] = `status ${statusName(st)}, expected ${expected}`;
      } else if (!q.legal) {
        if (st === VIRTIO_BLK_S_OK) {
          accepted++;
          outcomes[i] = "accepted (OK)";
        } else {
          refusals.push(st === VIRTIO_BLK_S_IOERR ? "IOERR" : "UNSUPP");
          outcomes[i] = `refused: ${statusName(st)}`;
        }
      } else {
        good = st === VIRTIO_BLK_S_OK;
        outcomes[i] = `ok (${statusName(st)})`;
      }
      // Data and the model.
      if (!q.legal) {
        if (q.effect !== "read" && q.effect !== "none") wipe = true;
        continue;
      }
      const d = dataCheck(q, r, good, model);
      if (d) {
        obs.push({ kind: "data", text: d, request: q.n });
        outcomes[i] = `data differs: ${d}`;
      }
    }
    if (wipe) model.clear();
  }
  // Most serious first; among hangs, the request with the most uncommon layouts first (after a hang-up every
  // request in flight is unfinished, and the one that caused it is most likely the unusual one).
  const unusual = (o: Observation) => (o.request === undefined ? 0 : run.requests[o.request].request.features.length);
  obs.sort((a, b) => FINDING_RANK[a.kind] - FINDING_RANK[b.kind] || (a.kind === "hang" ? unusual(b) - unusual(a) : 0));
  return { observations: obs, refusals, accepted, outcomes };
}

const FINDING_RANK: Readonly<Record<FindingKind, number>> = Object.fromEntries(
  FINDING_KINDS.map((k, i) => [k, i]),
) as Record<FindingKind, number>;

/** Checks a legal request's data against the model and updates the model; returns what differs. */
function dataCheck(q: FuzzRequest, r: RequestRun, ok: boolean, model: Map<bigint, Known>): string | undefined {
  const forget = () => {
    for (const range of q.ranges) for (let s = 0; s < range.sectors; s++) model.delete(range.sector + BigInt(s));
  };
  switch (q.effect) {
    case "write": {
      if (!ok) {
        forget();
        return undefined;
      }
      const data = q.readable.subarray(16);
      for (let s = 0; s < q.sectors; s++) {
        model.set(q.sector + BigInt(s), {
          bytes: data.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE),
          origin: `written by request ${q.n} in phase ${q.phase}`,
        });
      }
      return undefined;
    }
    case "zeroes": {
      if (!ok) {
        forget();
        return undefined;
      }
      const zero = new Uint8Array(SECTOR_SIZE);
      for (const range of q.ranges) {
        for (let s = 0; s < range.sectors; s++) {
          model.set(range.sector + BigInt(s), { bytes: zero, origin: `zeroed by request ${q.n} in phase ${q.phase}` });
        }
      }
      return undefined;
    }
    case "discard":
    case "unknown-writes":
      forget();
      return undefined;
    case "read": {
      if (!ok || !r.written) return undefined;
      let first: string | undefined;
      for (let s = 0; s < q.sectors; s++) {
        const sector = q.sector + BigInt(s);
        const got = r.written.subarray(s * SECTOR_SIZE, (s + 1) * SECTOR_SIZE);
        const known = model.get(sector);
        if (!known) {
          model.set(sector, { bytes: got.slice(), origin: `read by request ${q.n} in phase ${q.phase}` });
          continue;
        }
        if (first !== undefined) continue;
        for (let b = 0; b < SECTOR_SIZE; b++) {
          if (got[b] !== known.bytes[b]) {
            let n = 0;
            for (let k = b; k < SECTOR_SIZE; k++) if (got[k] !== known.bytes[k]) n++;
            first = `request ${q.n} (${q.what}): sector ${sector} differs from what was ${known.origin} ` +
              `(${n} of its bytes from byte ${b}: 0x${hex2(got[b])}, expected 0x${hex2(known.bytes[b])})`;
            break;
          }
        }
      }
      return first;
    }
    default:
      return undefined;
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, "0");
}
