// `probe` against the two real back-ends: a conforming one (exit 0) and
// DPDK's vhost_blk example (exit 1), with the findings that tell them apart.
import assert from "node:assert/strict";
import { QemuStorageDaemon } from "../testing.ts";
import type { ProbeReport } from "../src/cli/probe.ts";
import { DpdkVhostBlk } from "../src/testing/dpdk_vhost_blk.ts";
import { missing } from "./_support.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function probe(path: string, ...flags: string[]): Promise<{ code: number; report: ProbeReport }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "probe", "--path", path, "--json", ...flags],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(text.startsWith("{"), new TextDecoder().decode(out.stderr));
  return { code: out.code, report: JSON.parse(text) };
}

function finding(r: ProbeReport, check: string) {
  const f = r.findings.find((f) => f.check === check);
  assert.ok(f, `no finding "${check}" in ${JSON.stringify(r.findings.map((f) => f.check))}`);
  return f;
}

Deno.test({
  name: "probe: qemu-storage-daemon is conforming (exit 0), and the write test restores the data",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    await using qsd = await QemuStorageDaemon.start({ size: 8 << 20 });
    const tail = new Uint8Array(1 << 20).map((_, i) => (i * 31) & 0xff);
    const image = await Deno.open(qsd.imagePath!, { write: true });
    await image.seek(7 << 20, Deno.SeekMode.Start);
    await image.write(tail);
    image.close();
    const { code, report } = await probe(qsd.socketPath, "--write-test");
    assert.equal(code, 0, JSON.stringify(report, null, 1));
    assert.equal(report.conforming, true);
    assert.equal(finding(report, "seg_max").verdict, "ok");
    assert.match(finding(report, "kick suppression").result, /EVENT_IDX/);
    assert.equal(finding(report, "used length (writes)").verdict, "ok");
    assert.equal(finding(report, "write test").verdict, "ok");
    assert.equal(finding(report, "packed ring").verdict, "not offered");
    const after = (await Deno.readFile(qsd.imagePath!)).subarray(7 << 20);
    assert.deepEqual(after, tail, "the probe restored what it wrote over");
  },
});

Deno.test({
  name: "probe: DPDK's vhost_blk example is not conforming (exit 1): used lengths, dropped requests",
  ignore: missing("dpdk-vhost-blk"),
  fn: async () => {
    await using dpdk = await DpdkVhostBlk.start();
    const { code, report } = await probe(dpdk.socketPath, "--write-test");
    assert.equal(code, 1);
    assert.equal(report.conforming, false);
    assert.equal(finding(report, "used length (writes)").verdict, "non-conforming");
    assert.equal(finding(report, "used length (packed)").verdict, "non-conforming");
    assert.match(finding(report, "seg_max").result, /up to 126 segments complete, of 127 or more are dropped/);
    assert.match(finding(report, "kick suppression").result, /^0 kicks .*it polls the ring/);
    assert.equal(finding(report, "packed ring").verdict, "ok", "with the documented fix");
    assert.equal(finding(report, "write test").verdict, "ok");
  },
});
