/**
 * The fuzz run: case after case on one connection while the back-end
 * behaves, a fresh connection (with fresh memory) after anything that
 * leaves the ring or the memory in doubt — a finding, an illegal request
 * left unanswered, a hang-up — and, when the back-end is gone, a crash
 * finding and either the end of the run or `--restart`. And the replay of
 * one case on a fresh connection.
 *
 * @module
 */

import { ConnectFailedError, DeviceProtocolError, TimeoutError, VirtioError } from "../../errors.ts";
import { loadShim } from "../../os/loader.ts";
import type { VirtqueueFormat } from "../../virtqueue/layout.ts";
import type { DeviceFacts, FuzzCase } from "./case.ts";
import { type CaseVerdict, FINDING_KINDS, judge, type Refusal } from "./check.ts";
import { type CaseRun, executeCase, lateCheck, Pace } from "./execute.ts";
import { generateCase } from "./generator.ts";
import { type FuzzFinding, type FuzzReport, requestReport } from "./report.ts";
import { describeExit, RestartedBackend } from "./restart.ts";
import { FuzzSession } from "./session.ts";
import type { FuzzMemory, MemoryDamage, RingGuard, RingWritable } from "./memory.ts";

/** Entries of the fuzzer's queue. */
export const FUZZ_QUEUE_SIZE = 256;
/** How long memory of a connection closed with requests in flight rests before it is looked at and used again. */
export const QUARANTINE_MS = 100;
/** How many such sets of memory rest at most (more are freed). */
export const QUARANTINE_SETS = 4;

/** Options of {@linkcode runFuzz} and {@linkcode replayCase}. */
export interface FuzzOptions {
  /** The back-end's socket. */
  readonly path: string;
  /** The seed. */
  readonly seed: number;
  /** Whether writes may reach the device. */
  readonly destructive: boolean;
  /** How long a legal request may take (ms). */
  readonly timeoutMs: number;
  /** Ring format. */
  readonly ring: VirtqueueFormat;
  /** The command that brings the back-end back. */
  readonly restart?: string;
  /** How long a control message may take (ms); default 5000. */
  readonly controlTimeoutMs?: number;
}

/** Progress of a run. */
export interface FuzzProgress {
  /** Cases run. */
  readonly done: number;
  /** Cases asked for. */
  readonly total: number;
  /** Findings so far. */
  readonly findings: number;
  /** Illegal requests refused so far. */
  readonly refused: number;
  /** Milliseconds since the start. */
  readonly elapsedMs: number;
}

/** What a replay found. */
export interface ReplayResult {
  /** The case. */
  readonly fuzzCase: FuzzCase;
  /** What the device offered. */
  readonly facts: DeviceFacts;
  /** The finding, if the case gives one. */
  readonly finding: FuzzFinding | undefined;
  /** The case's requests, as in a finding. */
  readonly requests: FuzzFinding["requests"];
  /** The judge's outcome of each request. */
  readonly outcomes: readonly string[];
  /** Remarks. */
  readonly notes: readonly string[];
}

/** Why a reconnection found no usable back-end. */
export interface Lost {
  /** `gone` (nothing listens), `silent` (it accepts but answers nothing), `changed` (another or a broken device). */
  readonly lost: "gone" | "silent" | "changed";
  /** The details. */
  readonly why: string;
}

/** How the device differs from what it was (empty: the same). */
function differences(a: DeviceFacts, b: DeviceFacts): string {
  const out: string[] = [];
  const keys = ["capacity", "blockSize", "segMax", "sizeMax", "readOnly", "flush", "indirect"] as const;
  for (const k of keys) if (a[k] !== b[k]) out.push(`${k} ${a[k]} -> ${b[k]}`);
  if ((a.discard === undefined) !== (b.discard === undefined)) out.push("discard offered or not");
  if ((a.writeZeroes === undefined) !== (b.writeZeroes === undefined)) out.push("write-zeroes offered or not");
  return out.join(", ");
}

/** Connections to the back-end, with `--restart` when it is gone. */
class Connector {
  readonly #o: FuzzOptions;
  readonly restart: RestartedBackend | undefined;
  reconnects = 0;
  restarts = 0;
  connections = 0;

  constructor(o: FuzzOptions) {
    this.#o = o;
    this.restart = o.restart ? new RestartedBackend(o.restart) : undefined;
  }

  /** Memory of a closed session with nothing in flight, for the next one (no page to fault in again). */
  #spare: FuzzMemory | undefined;
  /**
   * Memory of sessions closed with requests in flight: kept for a while
   * (the back-end may still finish those requests), looked at again, and
   * only then used again; fresh memory costs page faults.
   */
  readonly #quarantine: {
    memory: FuzzMemory;
    since: number;
    guards: RingGuard[];
    writable: RingWritable[];
    run?: CaseRun;
  }[] = [];
  /** Called when memory in quarantine was written where its case allowed nothing. */
  onLateDamage: ((run: CaseRun, damage: MemoryDamage[]) => void) | undefined;

  /** A set of memory to use again, if one is ready. */
  #reusable(): FuzzMemory | undefined {
    if (this.#spare) {
      const m = this.#spare;
      this.#spare = undefined;
      return m;
    }
    return this.#rested();
  }

  /** The oldest quarantined memory once it has rested and was found untouched (late damage is reported, the memory freed). */
  #rested(): FuzzMemory | undefined {
    const q = this.#quarantine[0];
    if (!q || performance.now() - q.since < QUARANTINE_MS) return undefined;
    this.#quarantine.shift();
    const damage = q.memory.check(q.guards, q.writable);
    if (damage.length === 0) return q.memory;
    q.memory.close();
    if (q.run) {
      this.onLateDamage?.(
        q.run,
        damage.map((d) => ({
          ...d,
          detail: `${d.detail} (seen ${QUARANTINE_MS} ms or more after the connection closed)`,
        })),
      );
    }
    return undefined;
  }

  async #open(): Promise<FuzzSession> {
    const reuse = this.#reusable();
    let s: FuzzSession;
    try {
      s = await FuzzSession.open({
        path: this.#o.path,
        ring: this.#o.ring,
        queueSize: FUZZ_QUEUE_SIZE,
        controlTimeoutMs: this.#o.controlTimeoutMs ?? 5000,
      }, reuse);
    } catch (e) {
      if (reuse) this.#keep(reuse);
      throw e;
    }
    if (reuse && s.memory !== reuse) reuse.close();
    return s;
  }

  #keep(m: FuzzMemory): void {
    this.#spare?.close();
    this.#spare = m;
  }

  /**
   * Closes a session and looks at its memory once more (writes that came
   * late, into `run`'s damage). The memory is kept for the next session when
   * nothing was left in flight (nothing of this connection can write there
   * any more), quarantined when requests were in flight, freed when damaged.
   *
   * @param s the session
   * @param run its last case, if its memory is to be looked at again
   */
  async retire(s: FuzzSession, run: CaseRun | undefined): Promise<void> {
    try {
      await s.close();
    } finally {
      const again = s.memory.check(s.ring.guards(), s.ring.writable());
      if (run) {
        const seen = new Set(run.damage.map((d) => d.where));
        const late = again.filter((d) => !seen.has(d.where));
        run.damage.push(...late.map((d) => ({ ...d, detail: `${d.detail} (seen after the connection was closed)` })));
      }
      if (again.length > 0) {
        s.release();
      } else if (s.ring.inFlight === 0) {
        this.#keep(s.memory);
      } else {
        this.#quarantine.push({
          memory: s.memory,
          since: performance.now(),
          guards: s.ring.guards(),
          writable: s.ring.writable(),
          run,
        });
        while (this.#quarantine.length > QUARANTINE_SETS) this.#quarantine.shift()!.memory.close();
      }
    }
  }

  /** The first connection (starting the back-end with `--restart` when nothing listens). */
  async first(): Promise<FuzzSession> {
    try {
      return await this.#counted(this.#open());
    } catch (e) {
      if (!(e instanceof ConnectFailedError) || !this.restart) throw e;
      return await this.startBackend();
    }
  }

  async #counted(p: Promise<FuzzSession>): Promise<FuzzSession> {
    const s = await p;
    if (this.connections++ > 0) this.reconnects++;
    return s;
  }

  /** What the device was on the first connection (a back-end that comes back different is broken). */
  #facts: DeviceFacts | undefined;

  /** Remembers what the device is (on the first connection). */
  remember(facts: DeviceFacts): void {
    this.#facts ??= facts;
  }

  /**
   * A new connection after the old one was closed: the session, or why
   * there is none — `gone` when nothing listens any more (after a few
   * tries: a back-end may take a moment to listen again), `silent` when it
   * accepts but never answers, `changed` when it comes back as another
   * device (or with an invalid configuration: its state is corrupted).
   */
  async again(): Promise<FuzzSession | Lost> {
    for (let attempt = 0;; attempt++) {
      if (this.restart?.ended) return { lost: "gone", why: "the back-end we started has ended" };
      try {
        const s = await this.#counted(this.#open());
        const changed = this.#facts ? differences(this.#facts, s.facts) : "";
        if (!changed) return s;
        await this.retire(s, undefined);
        return { lost: "changed", why: changed };
      } catch (e) {
        if (e instanceof ConnectFailedError) {
          if (attempt >= 3) return { lost: "gone", why: e.message };
          await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
          continue;
        }
        if (e instanceof TimeoutError) return { lost: "silent", why: e.message };
        if (e instanceof DeviceProtocolError && e.violation === "bad-config") {
          return { lost: "changed", why: e.message };
        }
        if (e instanceof VirtioError && attempt < 2) {
          // A connection dropped during the handshake (a back-end still cleaning up): once more.
          await new Promise((r) => setTimeout(r, 100));
          continue;
        }
        throw e;
      }
    }
  }

  /** Runs `--restart` and connects once the back-end listens (within 30 s). */
  async startBackend(): Promise<FuzzSession> {
    const r = this.restart!;
    await r.stop();
    r.start();
    if (r.starts > 1 || this.connections > 0) this.restarts++;
    const deadline = performance.now() + 30_000;
    for (;;) {
      try {
        return await this.#counted(this.#open());
      } catch (e) {
        if (!(e instanceof ConnectFailedError)) throw e;
        const ended = await r.exited(0);
        if (ended) {
          await r.stop(); // it has ended: this waits for the rest of its output
          const said = r.output.trim().split("\n").slice(-3).join(" | ");
          throw new ConnectFailedError(
            this.#o.path,
            "ECONNREFUSED",
            `the --restart command ended (${describeExit(ended)}) and nothing listens on ${this.#o.path}: ${
              said || "it printed nothing"
            }`,
          );
        }
        if (performance.now() > deadline) {
          throw new ConnectFailedError(
            this.#o.path,
            "ETIMEDOUT",
            `nothing listens on ${this.#o.path} 30 s after --restart`,
          );
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** Waits until the memory in quarantine has rested, and looks at it (late writes go to {@linkcode onLateDamage}). */
  async settle(): Promise<void> {
    const last = this.#quarantine.at(-1);
    if (!last) return;
    const wait = QUARANTINE_MS - (performance.now() - last.since);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    while (this.#quarantine.length > 0) {
      const m = this.#rested();
      if (m) this.#keep(m);
    }
  }

  async close(): Promise<void> {
    this.#spare?.close();
    this.#spare = undefined;
    for (const q of this.#quarantine.splice(0)) q.memory.close();
    await this.restart?.close();
  }
}

/** Whether a run must continue on a fresh connection. */
function unsettled(s: FuzzSession, run: CaseRun): boolean {
  return run.hungUp || s.ring.broken || s.ring.inFlight > 0 || run.anomalies.length > 0 || run.damage.length > 0 ||
    run.requests.some((r) => r.chain !== undefined && !r.completed);
}

/** The finding of a judged case, if any. */
function findingOf(
  run: CaseRun,
  v: CaseVerdict,
  timeoutMs: number,
  packed: boolean,
  extra?: string,
): FuzzFinding | undefined {
  if (v.observations.length === 0) return undefined;
  const c = run.fuzzCase;
  const first = v.observations[0];
  const implicated = first.request !== undefined ? c.requests[first.request] : undefined;
  // A hang-up leaves every request in flight unfinished: the case's layouts, not one request's, say what it was.
  const features = implicated?.legal && !first.unsure ? implicated.features : c.features;
  const illegal = c.requests.find((r) => !r.legal)?.illegal;
  return {
    id: c.id,
    kind: first.kind,
    legal: c.legal,
    summary: `${first.text}${extra ? ` (${extra})` : ""}`,
    signature: `${first.kind} ${illegal ?? "legal"} ${features.join("+") || "plain"} ${implicated?.op ?? "-"}`,
    features: [...features],
    ...(illegal ? { illegal } : {}),
    ...(implicated ? { op: implicated.op } : {}),
    observations: v.observations,
    requests: run.requests.map((r, i) => requestReport(r, v.outcomes[i], timeoutMs, packed)),
  };
}

/**
 * Runs `cases` cases against the back-end at `o.path`.
 *
 * @example
 * ```ts ignore
 * import { runFuzz } from "./runner.ts";
 * const report = await runFuzz({ path: "/tmp/x.sock", seed: 1, destructive: false, timeoutMs: 2000, ring: "split" }, 500);
 * console.log(report.findings.map((f) => `${f.id} ${f.kind}`));
 * ```
 *
 * @param o where and how
 * @param cases how many cases
 * @param hooks progress and findings as they come
 * @returns the report
 */
export async function runFuzz(
  o: FuzzOptions,
  cases: number,
  hooks: {
    onProgress?: (p: FuzzProgress) => void;
    onFinding?: (f: FuzzFinding) => void;
    /** Gets a function that returns the report so far (for a Ctrl-C). */
    onStart?: (partial: () => FuzzReport) => void;
  } = {},
): Promise<FuzzReport> {
  await loadShim();
  const t0 = performance.now();
  const connector = new Connector(o);
  const findings: FuzzFinding[] = [];
  const refusedBy: Partial<Record<Refusal, number>> = {};
  const notes = new Set<string>();
  let legal = 0, illegal = 0, accepted = 0, done = 0;
  const packed = o.ring === "packed";
  const report = (): FuzzReport => ({
    target: o.path,
    seed: o.seed,
    cases: done,
    requested: cases,
    legal,
    illegal,
    refused: Object.values(refusedBy).reduce((a, b) => a + (b ?? 0), 0),
    refusedBy: { ...refusedBy },
    accepted,
    findings: findings.slice(),
    ring: o.ring,
    destructive: o.destructive,
    timeoutMs: o.timeoutMs,
    reconnects: connector.reconnects,
    restarts: connector.restarts,
    elapsedMs: performance.now() - t0,
    notes: [...notes],
  });
  hooks.onStart?.(report);
  const add = (f: FuzzFinding) => {
    findings.push(f);
    hooks.onFinding?.(f);
  };
  const pace = new Pace();
  const verdicts = new Map<CaseRun, CaseVerdict>();
  connector.onLateDamage = (run, damage) => {
    const before = verdicts.get(run);
    const observations = [
      ...(before?.observations ?? []),
      ...damage.map((d) => ({
        kind: "memory" as const,
        text: `canary damaged at ${d.where}: ${d.detail}`,
        request: d.request,
      })),
    ].sort((a, b) => FINDING_KINDS.indexOf(a.kind) - FINDING_KINDS.indexOf(b.kind));
    const v: CaseVerdict = {
      observations,
      refusals: [],
      accepted: 0,
      outcomes: before?.outcomes ?? run.requests.map(() => ""),
    };
    const f = findingOf(run, v, o.timeoutMs, packed)!;
    const at = findings.findIndex((x) => x.id === f.id);
    if (at >= 0) findings.splice(at, 1, f);
    else findings.push(f);
    hooks.onFinding?.(f);
  };
  let session: FuzzSession | undefined;
  try {
    session = await connector.first();
    connector.remember(session.facts);
    let previous: { run: CaseRun; found: boolean } | undefined;
    for (let i = 0; i < cases && session; i++) {
      // A completion of the last case that came after it ended.
      if (previous && !previous.found) {
        const late = session.ring.reap().anomalies;
        if (late.length > 0) {
          const v: CaseVerdict = {
            observations: late.map((a) => ({ kind: "completion" as const, text: `after the case: ${a}` })),
            refusals: [],
            accepted: 0,
            outcomes: previous.run.requests.map(() => "completed"),
          };
          add(findingOf(previous.run, v, o.timeoutMs, packed)!);
          await connector.retire(session, undefined);
          const next = await connector.again();
          if ("lost" in next) throw new Error(`the back-end did not take a new connection: ${next.why}`);
          session = next;
        }
      }
      const s: FuzzSession = session;
      const c = generateCase(o.seed, i, s.facts, { destructive: o.destructive });
      for (const n of c.notes) notes.add(n);
      const run = await executeCase(s, c, o.timeoutMs, pace);
      lateCheck(s, run);
      let hangup: "crash" | "closed" | undefined;
      let gone: Lost | undefined;
      let probe = judge(run, undefined, o.timeoutMs);
      if (unsettled(s, run) || probe.observations.length > 0) {
        await connector.retire(s, run);
        session = undefined;
        const next = await connector.again();
        if ("lost" in next) gone = next;
        else session = next;
        if (gone?.lost === "gone") hangup = "crash";
        else if (run.hungUp) hangup = "closed";
        probe = judge(run, hangup, o.timeoutMs);
      }
      done++;
      if (c.legal) legal++;
      else illegal++;
      accepted += probe.accepted;
      for (const r of probe.refusals) refusedBy[r] = (refusedBy[r] ?? 0) + 1;
      let extra: string | undefined;
      if (hangup === "crash" && connector.restart?.ended) {
        const tail = connector.restart.output.trim().split("\n").slice(-2).join(" | ");
        extra = `the --restart back-end ${describeExit(connector.restart.ended)}${
          tail ? `; its last output: ${tail}` : ""
        }`;
      }
      if (gone?.lost === "silent") {
        probe.observations.unshift({
          kind: "hang",
          text: `after this case the back-end accepts a connection but answers nothing on it (${gone.why})`,
        });
      } else if (gone?.lost === "changed") {
        probe.observations.unshift({
          kind: "crash",
          text: `after this case the back-end comes back broken: ${gone.why}`,
        });
      }
      const f = findingOf(run, probe, o.timeoutMs, packed, extra);
      if (f) add(f);
      if (run.requests.some((r) => r.chain !== undefined && !r.completed)) {
        verdicts.set(run, probe);
        while (verdicts.size > QUARANTINE_SETS + 1) verdicts.delete(verdicts.keys().next().value!);
      }
      for (const ob of probe.observations) {
        const r = ob.request === undefined ? undefined : run.requests[ob.request];
        if (
          ob.kind === "hang" && r && !r.completed && r.shortWait === undefined &&
          run.phases[r.request.phase] === "timeout"
        ) {
          pace.hung(r.request);
        }
      }
      previous = { run, found: f !== undefined };
      hooks.onProgress?.({
        done,
        total: cases,
        findings: findings.length,
        refused: Object.values(refusedBy).reduce((a, b) => a + (b ?? 0), 0),
        elapsedMs: performance.now() - t0,
      });
      if (gone) {
        // A back-end the fuzzer started is stopped and started again; one it did not start cannot be.
        if (connector.restart && i + 1 < cases && (gone.lost === "gone" || connector.restart.running)) {
          session = await connector.startBackend();
          continue;
        }
        if (i + 1 < cases) {
          const why = gone.lost === "gone"
            ? "the back-end is gone (give --restart to go on past a crash)"
            : gone.lost === "silent"
            ? "the back-end no longer answers"
            : "the back-end came back broken (give --restart to go on)";
          notes.add(`stopped after case ${c.id}: ${why}`);
        }
        break;
      }
    }
    if (session) {
      await connector.retire(session, undefined);
      session = undefined;
    }
    await connector.settle();
  } finally {
    if (session) await connector.retire(session, undefined).catch(() => {});
    await connector.close();
  }
  return report();
}

/**
 * Parses a finding's ID.
 *
 * @param id `SEED:CASE`
 * @returns the seed and the case number, or undefined when malformed
 */
export function parseCaseId(id: string): { seed: number; index: number } | undefined {
  const m = /^(\d+):(\d+)$/.exec(id.trim());
  if (!m) return undefined;
  const seed = Number(m[1]), index = Number(m[2]);
  if (!Number.isSafeInteger(seed) || seed > 0xffff_ffff || !Number.isSafeInteger(index)) return undefined;
  return { seed, index };
}

/**
 * Runs one case alone on a fresh connection, waits a little for late
 * completions, and judges it.
 *
 * @param o where and how (the seed comes from the ID)
 * @param index the case number
 * @returns the case, what came back, and the finding if any
 */
export async function replayCase(o: FuzzOptions, index: number): Promise<ReplayResult> {
  await loadShim();
  const connector = new Connector(o);
  const packed = o.ring === "packed";
  const notes: string[] = [];
  try {
    const session = await connector.first();
    const facts = session.facts;
    const c = generateCase(o.seed, index, facts, { destructive: o.destructive });
    let run: CaseRun | undefined;
    try {
      run = await executeCase(session, c, o.timeoutMs, new Pace());
      await new Promise((r) => setTimeout(r, 50));
      lateCheck(session, run);
      run.hungUp ||= session.hungUp;
    } finally {
      await connector.retire(session, run);
    }
    let hangup: "crash" | "closed" | undefined;
    connector.remember(facts);
    const next = await connector.again();
    let lost: Lost | undefined;
    if ("lost" in next) {
      lost = next;
      if (next.lost === "gone") hangup = "crash";
    } else {
      await connector.retire(next, undefined);
      if (run.hungUp) hangup = "closed";
    }
    const r = run;
    connector.onLateDamage = (_run, damage) => r.damage.push(...damage);
    await connector.settle();
    const v = judge(run, hangup, o.timeoutMs);
    if (lost?.lost === "silent") {
      v.observations.unshift({ kind: "hang", text: `after this case the back-end answers nothing (${lost.why})` });
    } else if (lost?.lost === "changed") {
      v.observations.unshift({ kind: "crash", text: `after this case the back-end comes back broken: ${lost.why}` });
    }
    let extra: string | undefined;
    if (hangup === "crash" && connector.restart?.ended) {
      extra = `the --restart back-end ${describeExit(connector.restart.ended)}`;
    }
    const finding = findingOf(run, v, o.timeoutMs, packed, extra);
    return {
      fuzzCase: c,
      facts,
      finding,
      requests: run.requests.map((r, i) => requestReport(r, v.outcomes[i], o.timeoutMs, packed)),
      outcomes: v.outcomes,
      notes: [...c.notes, ...notes],
    };
  } finally {
    await connector.close();
  }
}
