/**
 * The fuzzer's reports: a finding with its case's requests described
 * descriptor by descriptor (enough for a back-end author to write a test),
 * the run's summary table, and the same as JSON.
 *
 * @module
 */

import { VIRTIO_BLK_T_NAMES } from "../../blk/spec.ts";
import { DESC_F_INDIRECT, DESC_F_WRITE } from "../../virtqueue/defs.ts";
import { ILLEGAL_KINDS } from "./case.ts";
import {
  FINDING_KINDS,
  FINDING_MEANINGS,
  type FindingKind,
  type Observation,
  type Refusal,
  statusName,
} from "./check.ts";
import type { RequestRun } from "./execute.ts";
import { describeFlags } from "./ring.ts";

/** One descriptor of a request, as written. */
export interface DescriptorReport {
  /** Where: `ring[12]`, `table 1[3]`. */
  readonly place: string;
  /** Its address: region and offset (`data1+0x2000`), or the hole it points into. */
  readonly address: string;
  /** Its length. */
  readonly len: number;
  /** `readable` or `writable` by the device, or `table` (an indirect descriptor). */
  readonly direction: "readable" | "writable" | "table";
  /** Its flags (`NEXT|WRITE`). */
  readonly flags: string;
  /** Split rings: `next` (with NEXT); packed rings: the buffer id. */
  readonly next: number;
  /** Which bytes of the request it holds: `header`, `data[0,4096)`, `status`… */
  readonly holds: string;
}

/** One request of a case, as submitted and as answered. */
export interface RequestReport {
  /** Its number in the case. */
  readonly n: number;
  /** Its phase (batch). */
  readonly phase: number;
  /** What it is. */
  readonly what: string;
  /** The raw type field. */
  readonly type: number;
  /** The raw sector field. */
  readonly sector: string;
  /** Legal or not. */
  readonly legal: boolean;
  /** What makes it illegal. */
  readonly illegal?: string;
  /** What the back-end may answer. */
  readonly expected: string;
  /** Its descriptors: direct ones in chain order, then each indirect table's in table order. */
  readonly descriptors: readonly DescriptorReport[];
  /** What came back. */
  readonly seen: string;
}

/** A finding. */
export interface FuzzFinding {
  /** `SEED:CASE`: `--replay` it. */
  readonly id: string;
  /** The kind (the most serious of the case's observations). */
  readonly kind: FindingKind;
  /** Whether the case was legal. */
  readonly legal: boolean;
  /** One line. */
  readonly summary: string;
  /**
   * What kind of thing went wrong where, for telling findings apart and
   * listing known ones: `KIND LEGALITY FEATURES OP`, e.g.
   * `hang legal indirect-after-direct read` or `status past-capacity plain read`.
   */
  readonly signature: string;
  /** The uncommon layouts of the request it is about (or of the case). */
  readonly features: readonly string[];
  /** The illegal kind, for an illegal case. */
  readonly illegal?: string;
  /** The type of the request it is about, when it is about one. */
  readonly op?: string;
  /** Everything seen wrong in the case. */
  readonly observations: readonly Observation[];
  /** The case's requests. */
  readonly requests: readonly RequestReport[];
}

/** The run. */
export interface FuzzReport {
  /** The socket fuzzed. */
  readonly target: string;
  /** The seed. */
  readonly seed: number;
  /** Cases run. */
  readonly cases: number;
  /** Cases asked for. */
  readonly requested: number;
  /** Legal cases run. */
  readonly legal: number;
  /** Illegal cases run. */
  readonly illegal: number;
  /** Illegal requests refused (IOERR, UNSUPP, no answer, hang-up, completed without a status). */
  readonly refused: number;
  /** …by how. */
  readonly refusedBy: Readonly<Partial<Record<Refusal, number>>>;
  /** Illegal requests completed with OK. */
  readonly accepted: number;
  /** The findings. */
  readonly findings: readonly FuzzFinding[];
  /** Ring format. */
  readonly ring: string;
  /** Whether it wrote. */
  readonly destructive: boolean;
  /** The timeout of legal requests. */
  readonly timeoutMs: number;
  /** Connections made after the first. */
  readonly reconnects: number;
  /** Times `--restart` ran. */
  readonly restarts: number;
  /** Wall time. */
  readonly elapsedMs: number;
  /** Remarks (writes turned into reads, why it stopped). */
  readonly notes: readonly string[];
}

/**
 * Describes a request's run for a report.
 *
 * @param r the run
 * @param outcome what the judge said about it
 * @param timeoutMs the legal requests' timeout
 * @param packed whether the ring is packed
 * @returns the report
 */
export function requestReport(r: RequestRun, outcome: string, timeoutMs: number, packed: boolean): RequestReport {
  const q = r.request;
  const typeName = VIRTIO_BLK_T_NAMES[q.type];
  const expectedStatus = q.expect.allowed.map(statusName).join(" or ");
  const expected = q.legal
    ? `${expectedStatus} within ${timeoutMs} ms`
    : `illegal: any refusal (IOERR, UNSUPP, no answer, a hang-up)${
      q.expect.allowed.length === 1 ? `; a status other than ${expectedStatus} is a finding` : ""
    }${q.expect.allowed.includes(0) ? ", or OK" : ""}`;
  const seen = !r.chain
    ? "not submitted"
    : !r.completed
    ? `not completed (${outcome})`
    : `completed after ${(r.latencyMs ?? 0).toFixed(2)} ms, status ${statusName(r.status)}, used length ${
      r.lenValid ? r.len : `${r.len} (not meaningful: no WRITE flag)`
    }: ${outcome}`;
  return {
    n: q.n,
    phase: q.phase,
    what: q.what,
    type: q.type,
    sector: q.sector.toString(),
    legal: q.legal,
    ...(q.illegal ? { illegal: `${q.illegal}: ${ILLEGAL_KINDS[q.illegal]}` } : {}),
    expected: typeName === undefined && q.legal ? `${expected} (type ${q.type})` : expected,
    descriptors: (r.chain?.descs ?? []).map((d) => ({
      place: d.place,
      address: d.label,
      len: d.len,
      direction: d.flags & DESC_F_INDIRECT ? "table" : d.flags & DESC_F_WRITE ? "writable" : "readable",
      flags: describeFlags(d.flags, packed && d.place.startsWith("ring")),
      next: d.next,
      holds: d.holds,
    })),
    seen,
  };
}

/**
 * A request as lines of text: what it is, its descriptors as a table, and
 * what came back.
 *
 * @param r the request's report
 * @param packed whether the ring is packed (`next` is then the buffer id)
 * @returns the lines
 */
export function formatRequest(r: RequestReport, packed: boolean): string[] {
  const lines = [
    `request ${r.n} (phase ${r.phase}): ${r.what}`,
    `  type ${r.type}${VIRTIO_BLK_T_NAMES[r.type] ? ` (${VIRTIO_BLK_T_NAMES[r.type]})` : ""}, sector ${r.sector}; ${
      r.legal ? "legal" : `ILLEGAL (${r.illegal})`
    }`,
  ];
  const head = ["desc", "address", "len", "device", "flags", packed ? "id" : "next", "holds"];
  const rows = r.descriptors.map((
    d,
  ) => [d.place, d.address, String(d.len), d.direction, d.flags, String(d.next), d.holds]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const fmt = (cells: string[]) =>
    `  ${cells.map((c, i) => (i === 2 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ").trimEnd()}`;
  lines.push(fmt(head), ...rows.map(fmt));
  lines.push(`  expected: ${r.expected}`, `  seen:     ${r.seen}`);
  return lines;
}

/**
 * A finding as lines of text.
 *
 * @param f the finding
 * @param packed whether the ring is packed
 * @param withRequests include every request's table
 * @returns the lines
 */
export function formatFinding(f: FuzzFinding, packed: boolean, withRequests: boolean): string[] {
  const lines = [`${f.id}  ${f.kind} (${f.legal ? "legal" : "illegal"} case): ${f.summary}`];
  for (const o of f.observations.slice(1, 6)) lines.push(`    also ${o.kind}: ${o.text}`);
  if (f.observations.length > 6) lines.push(`    and ${f.observations.length - 6} more`);
  if (withRequests) {
    for (const r of f.requests) lines.push("", ...formatRequest(r, packed));
  }
  return lines;
}

/** How many findings the text summary shows one by one. */
export const SHOWN_FINDINGS = 40;

/**
 * The run's summary table.
 *
 * @param r the report
 * @returns the text
 */
export function formatSummary(r: FuzzReport): string {
  const lines: string[] = [];
  lines.push(
    `fuzz of the vhost-user-blk back-end at ${r.target}: seed ${r.seed}, ${r.ring} ring, ${
      r.destructive ? "destructive (writes anywhere)" : "not destructive (writes became reads of the same shape)"
    }`,
    "",
  );
  const by = Object.entries(r.refusedBy).map(([k, v]) => `${k} ${v}`).join(", ");
  const rows: [string, string, string][] = [
    [
      "cases",
      String(r.cases),
      `legal ${r.legal}, illegal ${r.illegal}${r.cases < r.requested ? ` (of ${r.requested} asked)` : ""}`,
    ],
    ["refused", String(r.refused), by ? `illegal requests refused: ${by}` : "illegal requests refused"],
    ["accepted", String(r.accepted), "illegal requests completed with OK (allowed)"],
    ["findings", String(r.findings.length), r.findings.length ? "" : "none"],
  ];
  for (const kind of FINDING_KINDS) {
    const ids = r.findings.filter((f) => f.kind === kind).map((f) => f.id);
    const shown = ids.length > 12 ? `${ids.slice(0, 12).join(" ")} …` : ids.join(" ");
    rows.push([`  ${kind}`, String(ids.length), shown]);
  }
  const w0 = Math.max(...rows.map((x) => x[0].length)), w1 = Math.max(...rows.map((x) => x[1].length));
  for (const [a, b, c] of rows) lines.push(`${a.padEnd(w0)}  ${b.padStart(w1)}  ${c}`.trimEnd());
  lines.push(
    "",
    `${(r.elapsedMs / 1000).toFixed(1)} s, ${r.reconnects} reconnection${r.reconnects === 1 ? "" : "s"}${
      r.restarts ? `, ${r.restarts} restart${r.restarts === 1 ? "" : "s"} (--restart)` : ""
    }, legal requests had ${r.timeoutMs} ms`,
  );
  for (const n of r.notes) lines.push(`note: ${n}`);
  if (r.findings.length) {
    // What the findings have in common: one line per signature, most frequent first.
    const groups = new Map<string, FuzzFinding[]>();
    for (const f of r.findings) {
      const group = groups.get(f.signature);
      if (group) group.push(f);
      else groups.set(f.signature, [f]);
    }
    const sorted = [...groups].sort((a, b) => b[1].length - a[1].length);
    lines.push("", "findings by kind, case, layouts and request type (the first ID of each):");
    const w = Math.max(...sorted.map(([, fs]) => String(fs.length).length));
    for (const [sig, fs] of sorted) lines.push(`  ${String(fs.length).padStart(w)}  ${sig}  (${fs[0].id})`);
    const shown = r.findings.slice(0, SHOWN_FINDINGS);
    // A replay regenerates the case only with the same choices: say them.
    const same = `${r.destructive ? " --destructive" : ""}${r.ring === "packed" ? " --ring packed" : ""}`;
    lines.push("", `findings (deno task probe --path SOCKET --replay ID${same} shows one in full):`);
    for (const f of shown) lines.push(...formatFinding(f, r.ring === "packed", false).map((l) => `  ${l}`));
    if (r.findings.length > shown.length) {
      lines.push(`  … and ${r.findings.length - shown.length} more (--json lists them all)`);
    }
  } else {
    lines.push("", "no findings");
  }
  return lines.join("\n");
}

/**
 * The meaning of each kind, for help texts.
 *
 * @returns lines `kind: meaning`
 */
export function kindsHelp(): string {
  return FINDING_KINDS.map((k) => `  ${k.padEnd(10)} ${FINDING_MEANINGS[k]}`).join("\n");
}

/**
 * A report as JSON text (bigints as strings).
 *
 * @param value the report
 * @returns the text
 */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v), 2);
}
