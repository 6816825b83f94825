// The known findings of the real back-ends are written twice, once for people (the README's "Back-end fuzzing"
// table) and once for CI (tests/fuzz_known.json, which .ci/fuzz matches findings against): the two must say the
// same. And the matching itself: a finding is known only by an entry of its kind, case, trigger and type.
import assert from "node:assert/strict";
import { FINDING_KINDS } from "../src/cli/fuzz/check.ts";
import { ILLEGAL_KINDS, LAYOUT_FEATURES } from "../src/cli/fuzz/case.ts";
import { formatSummary, type FuzzFinding, type FuzzReport, SHOWN_FINDINGS } from "../src/cli/fuzz/report.ts";
import { knownEntry, type KnownFinding, loadKnown } from "./_fuzz_known.ts";
import { tempDir } from "./_support.ts";

const README = new URL("../README.md", import.meta.url).pathname;
const OPS = ["read", "write", "flush", "get-id", "discard", "write-zeroes", "unknown"];

/** The rows of the README's known-findings table: back-end, ring, kind, case, trigger, op, verdict. */
async function readmeRows(): Promise<string[][]> {
  const text = await Deno.readTextFile(README);
  const start = text.indexOf("\n## Back-end fuzzing\n");
  assert.ok(start >= 0, "the README has no '## Back-end fuzzing' section");
  const end = text.indexOf("\n## ", start + 5);
  const section = text.slice(start, end < 0 ? undefined : end);
  const lines = section.split("\n");
  const head = lines.findIndex((l) =>
    /^\|\s*back-end\s*\|\s*ring\s*\|\s*kind\s*\|\s*case\s*\|\s*trigger\s*\|\s*op\s*\|/.test(l)
  );
  assert.ok(head >= 0, "no known-findings table (| back-end | ring | kind | case | trigger | op | …) in the section");
  const rows: string[][] = [];
  for (const l of lines.slice(head + 2)) {
    if (!l.startsWith("|")) break;
    rows.push(l.split("|").slice(1, -1).map((c) => c.trim().replace(/^`|`$/g, "")));
  }
  return rows;
}

Deno.test("fuzz known findings: the README's table and tests/fuzz_known.json list the same findings", async () => {
  const known = await loadKnown();
  const fromJson: string[] = [];
  for (const [backend, rings] of Object.entries(known.backends)) {
    for (const [ring, entries] of Object.entries(rings)) {
      for (const k of entries) fromJson.push([backend, ring, k.kind, k.case, k.trigger, k.op, k.verdict].join(" | "));
    }
  }
  const rows = await readmeRows();
  const fromReadme = rows.map((r) => [...r.slice(0, 6), r[r.length - 1]].join(" | "));
  assert.deepEqual(fromReadme.slice().sort(), fromJson.slice().sort());
  assert.ok(fromJson.length > 0);
});

Deno.test("fuzz known findings: every entry names a real kind, case, trigger and type, and says where", async () => {
  const known = await loadKnown();
  for (const [backend, rings] of Object.entries(known.backends)) {
    for (const [ring, entries] of Object.entries(rings)) {
      assert.ok(ring === "split" || ring === "packed", `${backend}: ring ${ring}`);
      for (const k of entries) {
        const at = `${backend} ${ring}: ${JSON.stringify(k)}`;
        assert.ok((FINDING_KINDS as readonly string[]).includes(k.kind), at);
        assert.ok(k.case === "legal" || k.case === "*" || k.case in ILLEGAL_KINDS, at);
        assert.ok(k.trigger === "-" || k.trigger in LAYOUT_FEATURES, at);
        assert.ok(k.op === "-" || OPS.includes(k.op), at);
        assert.ok(k.where.length > 20 && k.verdict.length > 0, at);
      }
    }
  }
});

function finding(p: Partial<FuzzFinding>): FuzzFinding {
  return {
    id: "1:1",
    kind: "hang",
    legal: true,
    summary: "",
    signature: "",
    features: [],
    observations: [],
    requests: [],
    ...p,
  };
}

Deno.test("fuzz known findings: a finding is known only by an entry of its kind, case, trigger and type", () => {
  const entries: KnownFinding[] = [
    {
      kind: "hang",
      case: "legal",
      trigger: "zero-length",
      op: "-",
      where: "a place in the code, long enough",
      verdict: "x",
    },
    {
      kind: "status",
      case: "past-capacity",
      trigger: "-",
      op: "read",
      where: "a place in the code, long enough",
      verdict: "x",
    },
  ];
  assert.equal(knownEntry(finding({ features: ["header-split", "zero-length"] }), entries), entries[0]);
  assert.equal(knownEntry(finding({ features: ["header-split"] }), entries), undefined, "another trigger");
  assert.equal(knownEntry(finding({ kind: "crash", features: ["zero-length"] }), entries), undefined, "another kind");
  assert.equal(knownEntry(finding({ legal: false, illegal: "loop", features: ["zero-length"] }), entries), undefined);
  const status = finding({ kind: "status", legal: false, illegal: "past-capacity", op: "read" });
  assert.equal(knownEntry(status, entries), entries[1]);
  assert.equal(knownEntry({ ...status, op: "write" }, entries), undefined, "another type");
  assert.equal(knownEntry({ ...status, illegal: "data-not-512" }, entries), undefined, "another illegal kind");
});

Deno.test("fuzz summary: findings grouped by signature, most frequent first, and at most SHOWN_FINDINGS one by one", () => {
  const findings: FuzzFinding[] = [];
  for (let i = 0; i < SHOWN_FINDINGS + 5; i++) {
    const kind = i % 3 === 0 ? "hang" : "crash";
    const sig = kind === "hang" ? "hang legal zero-length read" : "crash legal header-split -";
    findings.push(finding({ id: `1:${i}`, kind, signature: sig, summary: `case ${i}` }));
  }
  const report: FuzzReport = {
    target: "/x.sock",
    seed: 1,
    cases: findings.length,
    requested: findings.length,
    legal: findings.length,
    illegal: 0,
    refused: 0,
    refusedBy: {},
    accepted: 0,
    findings,
    ring: "split",
    destructive: true,
    timeoutMs: 2000,
    reconnects: 0,
    restarts: 0,
    elapsedMs: 1,
    notes: [],
  };
  const text = formatSummary(report);
  const crash = findings.filter((f) => f.signature.startsWith("crash")).length;
  const hang = findings.length - crash;
  const at = (s: string) => text.indexOf(s);
  assert.ok(at(`${crash}  crash legal header-split -  (1:1)`) >= 0, text);
  assert.ok(at(`${hang}  hang legal zero-length read  (1:0)`) > at("crash legal header-split -  (1:1)"), text);
  assert.ok(at(`1:${SHOWN_FINDINGS - 1}`) >= 0 && at(`1:${SHOWN_FINDINGS}:`) < 0, text);
  assert.match(text, /… and 5 more \(--json lists them all\)/);
  assert.match(text, /--replay ID --destructive shows one in full/, "a replay needs the run's --destructive");
  assert.match(formatSummary({ ...report, destructive: false, ring: "packed" }), /--replay ID --ring packed shows/);
});

Deno.test("fuzz known findings: the CI check exits 0 when every finding is known, 1 on one that is not", async () => {
  await using dir = await tempDir("virtio-fuzz-known-");
  const known = finding({
    id: "1:5",
    kind: "hang",
    legal: true,
    signature: "hang legal zero-length read",
    features: ["zero-length"],
    op: "read",
  });
  const unknown = finding({ id: "1:9", kind: "data", legal: true, signature: "data legal plain read", op: "read" });
  const check = async (findings: FuzzFinding[]) => {
    await Deno.writeTextFile(`${dir.path}/r.json`, JSON.stringify({ cases: 10, elapsedMs: 1, findings }));
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./_fuzz_known.ts", import.meta.url).pathname,
        "qemu-storage-daemon",
        "split",
        `${dir.path}/r.json`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
  };
  const ok = await check([known]);
  assert.equal(ok.code, 0, ok.stdout);
  assert.match(ok.stdout, /1 findings, 0 not known/);
  const bad = await check([known, unknown]);
  assert.equal(bad.code, 1, bad.stdout);
  assert.match(bad.stdout, /NEW\s+1:9\s+data legal plain read/);
});
