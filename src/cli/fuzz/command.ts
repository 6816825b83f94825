/**
 * `probe --fuzz N` and `probe --replay ID`: the back-end fuzzer from the
 * command line. Its flags, their checks (a usage error is one line, exit
 * status 2), the progress line on stderr, the summary table or JSON on
 * stdout, and the exit status: 0 without findings, 1 with.
 *
 * @module
 */

import { type FlagSpec, parseChoice, type ParsedFlags, parseInteger, UsageError, userPath } from "../args.ts";
import { onTermination } from "../../process/terminate.ts";
import { MAX_SEED } from "./rng.ts";
import { formatFinding, formatRequest, formatSummary, type FuzzReport, toJson } from "./report.ts";
import { type FuzzOptions, parseCaseId, replayCase, runFuzz } from "./runner.ts";

/** The fuzzer's flags of `probe`. */
export const FUZZ_FLAGS: readonly FlagSpec[] = [
  {
    name: "fuzz",
    kind: "string",
    value: "N",
    help: "fuzz the back-end with N seeded cases of legal and illegal requests (exit 1 on findings)",
  },
  {
    name: "seed",
    kind: "string",
    value: "S",
    help: "the fuzzer's seed, 0 to 4294967295 (default: a random one, printed)",
  },
  {
    name: "destructive",
    kind: "boolean",
    help: "let the fuzzer write anywhere on the device (otherwise its writes become reads of the same shape)",
  },
  { name: "replay", kind: "string", value: "SEED:CASE", help: "run one case of a fuzz run alone and show it in full" },
  {
    name: "timeout",
    kind: "string",
    value: "MS",
    default: "2000",
    help: "fuzzing: how long a legal request may take before it is a hang",
  },
  {
    name: "restart",
    kind: "string",
    value: "'COMMAND'",
    help: "fuzzing: a shell command that runs the back-end again after it is gone (stopped at the end)",
  },
  { name: "ring", kind: "string", value: "split|packed", default: "split", help: "fuzzing: the ring format" },
];

const FUZZ_ONLY = ["seed", "destructive", "timeout", "restart", "ring"] as const;

/** Options parsed from the flags. */
function options(flags: ParsedFlags, seed: number): FuzzOptions {
  if (typeof flags.path !== "string") throw new UsageError("--path is required: the back-end's vhost-user socket");
  const restart = flags.restart;
  if (restart !== undefined && (typeof restart !== "string" || restart.trim() === "")) {
    throw new UsageError("--restart needs a command, e.g. --restart 'qemu-storage-daemon …'");
  }
  return {
    path: userPath(flags.path),
    seed,
    destructive: flags.destructive === true,
    timeoutMs: flags.timeout === undefined ? 2000 : parseInteger(flags.timeout, "--timeout", 1, 3_600_000),
    ring: flags.ring === undefined ? "split" : parseChoice(flags.ring, "--ring", ["split", "packed"] as const),
    restart: restart as string | undefined,
    controlTimeoutMs: flags["timeout-ms"] === undefined
      ? 5000
      : parseInteger(flags["timeout-ms"], "--timeout-ms", 1, 3_600_000),
  };
}

/**
 * Runs the fuzzer when `--fuzz` or `--replay` is given.
 *
 * @param flags `probe`'s parsed flags
 * @returns the exit status, or undefined when neither flag is given (a plain probe)
 * @throws {UsageError} for flags that do not go together or bad values
 */
export async function fuzzCommand(flags: ParsedFlags): Promise<number | undefined> {
  const fuzz = flags.fuzz, replay = flags.replay;
  if (fuzz === undefined && replay === undefined) {
    const stray = FUZZ_ONLY.find((f) => flags[f] !== undefined);
    if (stray) throw new UsageError(`--${stray} goes with --fuzz or --replay`);
    return undefined;
  }
  if (fuzz !== undefined && replay !== undefined) throw new UsageError("--fuzz and --replay do not go together");
  if (flags["write-test"]) throw new UsageError("--write-test does not go with --fuzz or --replay");
  if (flags["stall-ms"] !== undefined) throw new UsageError("--stall-ms is the probe's; the fuzzer takes --timeout");
  if (replay !== undefined) {
    const id = typeof replay === "string" ? parseCaseId(replay) : undefined;
    if (!id) {
      throw new UsageError(`--replay takes a finding's ID, SEED:CASE (e.g. 1:17), got ${JSON.stringify(replay)}`);
    }
    if (flags.seed !== undefined) throw new UsageError("--seed does not go with --replay (the ID has the seed)");
    return await replay1(options(flags, id.seed), id.index, flags.json === true);
  }
  const cases = parseInteger(fuzz, "--fuzz", 1, 100_000_000);
  const seed = flags.seed === undefined
    ? crypto.getRandomValues(new Uint32Array(1))[0]
    : parseInteger(flags.seed, "--seed", 0, MAX_SEED);
  return await fuzzRun(options(flags, seed), cases, flags.json === true);
}

async function fuzzRun(o: FuzzOptions, cases: number, json: boolean): Promise<number> {
  const tty = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  console.error(
    `fuzzing ${o.path}: ${cases} cases, seed ${o.seed}, ${o.ring} ring${o.destructive ? ", destructive" : ""}`,
  );
  let lastLine = 0;
  let partial: (() => FuzzReport) | undefined;
  const print = (r: FuzzReport) => console.log(json ? toJson(r) : formatSummary(r));
  let printed = false;
  using _hook = onTermination(() => {
    if (tty) Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));
    if (partial && !printed) {
      printed = true;
      const r = partial();
      print({ ...r, notes: [...r.notes, `interrupted after ${r.cases} of ${r.requested} cases`] });
    }
  });
  const report = await runFuzz(o, cases, {
    onStart: (p) => (partial = p),
    onProgress: (p) => {
      const now = performance.now();
      const line = `${p.done}/${p.total} cases, ${p.refused} refused, ${p.findings} finding${
        p.findings === 1 ? "" : "s"
      }, ${(p.elapsedMs / 1000).toFixed(1)} s`;
      if (tty && (now - lastLine > 100 || p.done === p.total)) {
        Deno.stderr.writeSync(encoder.encode(`\r${line}\x1b[K`));
        lastLine = now;
      } else if (!tty && (now - lastLine > 10_000 || p.done === p.total)) {
        console.error(line);
        lastLine = now;
      }
    },
    onFinding: (f) => {
      const text = `finding ${f.id}: ${f.kind} (${f.legal ? "legal" : "illegal"}): ${f.summary}`;
      if (tty) Deno.stderr.writeSync(encoder.encode(`\r\x1b[K${text}\n`));
      else console.error(text);
    },
  });
  if (tty) Deno.stderr.writeSync(encoder.encode("\r\x1b[K"));
  if (!printed) {
    printed = true;
    print(report);
  }
  return report.findings.length > 0 ? 1 : 0;
}

async function replay1(o: FuzzOptions, index: number, json: boolean): Promise<number> {
  const r = await replayCase(o, index);
  const c = r.fuzzCase;
  const packed = o.ring === "packed";
  if (json) {
    console.log(toJson({
      id: c.id,
      legal: c.legal,
      ring: o.ring,
      destructive: o.destructive,
      device: r.facts,
      finding: r.finding ?? null,
      requests: r.requests,
      notes: r.notes,
    }));
  } else {
    const f = r.facts;
    const lines = [
      `replay of case ${c.id} (${c.legal ? "legal" : "illegal"}, ${c.phases} phase${
        c.phases === 1 ? "" : "s"
      }, ${c.requests.length} request${c.requests.length === 1 ? "" : "s"}) against ${o.path}: ${o.ring} ring${
        o.destructive ? ", destructive" : ""
      }`,
      `device: capacity ${f.capacity} sectors, block size ${f.blockSize}, seg_max ${f.segMax ?? "-"}, size_max ${
        f.sizeMax ?? "-"
      }, ${f.indirect ? "indirect descriptors" : "no indirect descriptors"}, flush ${f.flush ? "yes" : "no"}, discard ${
        f.discard ? "yes" : "no"
      }, write-zeroes ${f.writeZeroes ? "yes" : "no"}`,
      "addresses are region+offset (the regions move from run to run); each phase is one batch, made available at once",
    ];
    for (const n of r.notes) lines.push(`note: ${n}`);
    for (const q of r.requests) lines.push("", ...formatRequest(q, packed));
    lines.push("");
    if (r.finding) lines.push(...formatFinding(r.finding, packed, false).map((l, i) => (i === 0 ? `FINDING ${l}` : l)));
    else lines.push("no finding: the back-end answered every request as it may");
    console.log(lines.join("\n"));
  }
  return r.finding ? 1 : 0;
}
