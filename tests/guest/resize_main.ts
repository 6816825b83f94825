// Runs inside the guest: connects through a kernel transport, says it is
// ready (a console line `RESIZE-READY <bytes>` and, with --ready-file, a
// file), waits for the device's configuration change, checks the new
// capacity, and writes and reads back 4 KiB at the new end.
// deno run -A tests/guest/resize_main.ts --transport vfio-pci --device 0000:00:01.0 --mode poll --to 33554432
import { parseArgs } from "node:util";
import { TARGET_FLAGS, targetOf } from "./_target.ts";
import { type CompletionMode, type ConfigChangeDetail, VirtioBlk } from "../../mod.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    ...TARGET_FLAGS,
    mode: { type: "string", default: "eventfd" },
    to: { type: "string" },
    "ready-file": { type: "string" },
    "timeout-ms": { type: "string", default: "90000" },
  },
});
const to = Number(a.to);
const label = `${a.transport} ${a.mode}`;
const target = targetOf(a);
const blk = await VirtioBlk.connect({
  ...target,
  mode: a.mode as CompletionMode,
  queueSize: 64,
  bufferPoolSize: 1 << 20,
  requestTimeoutMs: 30_000,
});
try {
  const before = blk.capacity;
  const changed = new Promise<ConfigChangeDetail>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no configchange within ${a["timeout-ms"]} ms`)),
      Number(a["timeout-ms"]),
    );
    blk.addEventListener("configchange", (e) => {
      clearTimeout(timer);
      resolve(e.detail);
    }, { once: true });
  });
  console.log(`RESIZE-READY ${to}`);
  if (a["ready-file"]) await Deno.writeTextFile(a["ready-file"], `${to}\n`);
  const t0 = performance.now();
  const d = await changed;
  const ms = performance.now() - t0;
  if (d.previousCapacity !== before) throw new Error(`previous capacity ${d.previousCapacity}, was ${before}`);
  if (blk.capacity !== BigInt(to)) throw new Error(`capacity ${blk.capacity} after the change, expected ${to}`);
  const buf = blk.allocBuffer(4096);
  for (let i = 0; i < buf.byteLength; i++) buf[i] = (i * 13 + 5) & 0xff;
  await blk.write(to - 4096, buf);
  const back = blk.allocBuffer(4096);
  await blk.read(to - 4096, back);
  for (let i = 0; i < buf.byteLength; i++) {
    if (back[i] !== buf[i]) throw new Error(`byte ${i} at the new end read back as ${back[i]}, wrote ${buf[i]}`);
  }
  console.log(
    `RESIZE ${label}: OK ${before} -> ${blk.capacity} via ${blk.configStats().signal}, seen ${ms.toFixed(0)} ms ` +
      `after ready; wrote and read back 4 KiB at the new end`,
  );
} finally {
  await blk.close();
}
