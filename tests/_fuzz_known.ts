/**
 * The findings of the real back-ends that are known (tests/fuzz_known.json,
 * the same as the README's table): what each is, where in the back-end's
 * code, and whether it is a back-end bug. `.ci/fuzz` runs the fuzzer against
 * each back-end and fails only on a finding no entry here matches:
 *
 *   deno run -A tests/_fuzz_known.ts BACKEND RING REPORT.json
 *
 * prints every finding with the entry it matches, and exits 1 when one
 * matches none (2 for bad arguments).
 */

import type { FuzzFinding, FuzzReport } from "../src/cli/fuzz/report.ts";

/** One known finding: what it matches, and what it is. */
export interface KnownFinding {
  /** The finding's kind. */
  readonly kind: string;
  /** The case: `legal`, the illegal kind (`past-capacity`…), or `*` for any (a legal companion in an illegal case). */
  readonly case: string;
  /** A layout feature the finding's requests used (`zero-length`…), or `-` for any. */
  readonly trigger: string;
  /** The type of the request it is about (`write`…), or `-` for any. */
  readonly op: string;
  /** What happens, and where in the back-end's code. */
  readonly where: string;
  /** `back-end bug`, or what else it is. */
  readonly verdict: string;
}

/** The file: per back-end, per ring format, the known findings. */
export interface KnownFile {
  /** Back-end → ring → entries. */
  readonly backends: Readonly<Record<string, Readonly<Record<string, readonly KnownFinding[]>>>>;
}

/** Where the file is. */
export const KNOWN_PATH: string = new URL("./fuzz_known.json", import.meta.url).pathname;

/**
 * Reads the known findings.
 *
 * @returns the file's contents
 */
export async function loadKnown(): Promise<KnownFile> {
  return JSON.parse(await Deno.readTextFile(KNOWN_PATH));
}

/**
 * The entry a finding matches, or undefined: same kind, same case (legal
 * or the same illegal kind), the entry's trigger among the finding's layout
 * features, the same request type.
 *
 * @param f the finding
 * @param known the back-end's entries for the ring format
 * @returns the entry
 */
export function knownEntry(f: FuzzFinding, known: readonly KnownFinding[]): KnownFinding | undefined {
  return known.find((k) =>
    k.kind === f.kind &&
    (k.case === "*" || k.case === (f.legal ? "legal" : f.illegal ?? "illegal")) &&
    (k.trigger === "-" || f.features.includes(k.trigger)) &&
    (k.op === "-" || k.op === f.op)
  );
}

if (import.meta.main) {
  const [backend, ring, path] = Deno.args;
  if (!backend || !ring || !path) {
    console.error("usage: deno run -A tests/_fuzz_known.ts BACKEND RING REPORT.json");
    Deno.exit(2);
  }
  const known = (await loadKnown()).backends[backend]?.[ring];
  if (!known) {
    console.error(`tests/fuzz_known.json has no entries for ${backend} (${ring} ring)`);
    Deno.exit(2);
  }
  const report: FuzzReport = JSON.parse(await Deno.readTextFile(path));
  const counts = new Map<KnownFinding, number>();
  const unknown: FuzzFinding[] = [];
  for (const f of report.findings) {
    const k = knownEntry(f, known);
    if (k) counts.set(k, (counts.get(k) ?? 0) + 1);
    else unknown.push(f);
  }
  console.log(
    `${backend}, ${ring} ring: ${report.cases} cases in ${(report.elapsedMs / 1000).toFixed(1)} s, ` +
      `${report.findings.length} findings, ${unknown.length} not known`,
  );
  for (const [k, n] of counts) {
    console.log(`  known  ${String(n).padStart(5)}  ${k.kind} ${k.case} ${k.trigger} ${k.op}`);
  }
  for (const f of unknown) console.log(`  NEW    ${f.id}  ${f.signature}: ${f.summary}`);
  Deno.exit(unknown.length > 0 ? 1 : 0);
}
