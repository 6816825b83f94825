// Runs inside the guest: connects through a kernel transport, runs the request
// matrix, and writes the expected contents (the model) for the host to compare
// with the image, read independently.
// deno run -A tests/guest/matrix_main.ts --transport vfio-pci --device 0000:00:01.0 --ring packed --mode eventfd \
//   --event-idx on --writes 150 --model-in prev.bin --model-out next.bin --seed 1
import { parseArgs } from "node:util";
import { TARGET_FLAGS, targetOf } from "./_target.ts";
import { type CompletionMode, VirtioBlk } from "../../mod.ts";
import { requestMatrix } from "../_matrix.ts";
import { Rng } from "../_support.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    ...TARGET_FLAGS,
    ring: { type: "string", default: "split" },
    mode: { type: "string", default: "poll" },
    "event-idx": { type: "string", default: "on" },
    writes: { type: "string", default: "150" },
    seed: { type: "string", default: "1" },
    "model-in": { type: "string" },
    "model-out": { type: "string" },
  },
});
const eventIdx = a["event-idx"] !== "off";
const label = `${a.transport} ${a.ring} ${a.mode}`;
const t0 = performance.now();
const target = targetOf(a);
const blk = await VirtioBlk.connect({
  ...target,
  ring: a.ring as "split" | "packed",
  mode: a.mode as CompletionMode,
  features: { eventIdx },
  queueSize: 64,
  bufferPoolSize: 16 << 20,
  requestTimeoutMs: 30_000,
  stallTimeoutMs: 20_000,
});
try {
  console.log(`MATRIX ${label}: capacity ${blk.capacity}, features ${blk.features.names.join(" ")}`);
  if ((a.ring === "packed") !== blk.features.packed) {
    throw new Error(`ring ${a.ring} asked, packed=${blk.features.packed}`);
  }
  // Every device here offers EVENT_IDX, so the negotiated bit must follow the flag.
  if (blk.features.eventIdx !== eventIdx) {
    throw new Error(`event-idx ${a["event-idx"]} asked, negotiated ${blk.features.eventIdx}`);
  }
  const size = Number(blk.capacity);
  const model = a["model-in"] ? await Deno.readFile(a["model-in"]) : new Uint8Array(size);
  if (model.byteLength !== size) throw new Error(`model of ${model.byteLength} bytes for a ${size}-byte device`);
  await requestMatrix(blk, model, Number(a.writes), new Rng(Number(a.seed)));
  if (a["model-out"]) await Deno.writeFile(a["model-out"], model);
  console.log(`MATRIX ${label}: OK in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
} finally {
  await blk.close();
}
