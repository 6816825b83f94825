/**
 * `info`: the device's configuration and negotiated features.
 *
 * @module
 */

import { VIRTIO_BLK_FEATURE_NAMES } from "../blk/spec.ts";
import type { VirtioBlk } from "../blk/virtio_blk.ts";
import type { ConfigChangeDetail } from "../blk/config_watch.ts";
import { onTermination } from "../process/terminate.ts";
import { describeFeatures } from "../virtio/spec.ts";
import type { CommandSpec, ParsedFlags } from "./args.ts";
import { deviceFlags, openDevice } from "./device_flags.ts";
import { formatBytes } from "./format.ts";

/** What qemu-storage-daemon's vhost-user-blk export (libvhost-user) answers to GET_ID. */
const QSD_ID = "vhost_user_blk";

/** The `info` command. */
export const INFO: CommandSpec = {
  name: "info",
  usage: "deno task info --path SOCKET [--json] [flags]",
  description: "Connects, negotiates features and prints the device's configuration: capacity, block size,\n" +
    "queues, segment limits, features, discard and write-zeroes limits, and its id string. With --watch it\n" +
    "stays connected and prints each configuration change (a resize, a write cache switch) as it arrives,\n" +
    "until Ctrl-C.",
  flags: [
    ...deviceFlags("eventfd", "the vhost-user socket (or /dev/vhost-vdpa-N)"),
    { name: "json", kind: "boolean", help: "print one JSON object instead of text (--watch: one JSON line each)" },
    { name: "watch", kind: "boolean", help: "stay connected and print every configuration change" },
  ],
  examples: [
    "deno task info --path /tmp/x.sock",
    "deno task info --path /tmp/x.sock --json | jq .capacity",
    "deno task info --path /tmp/x.sock --watch --json | jq -c 'select(.event == \"configchange\") | .capacity'",
  ],
};

/**
 * What `info` reports, as a plain object.
 *
 * @param blk a connected device
 * @returns the report
 */
async function deviceInfo(blk: VirtioBlk): Promise<Record<string, unknown>> {
  const c = blk.config;
  return {
    transport: blk.transportType,
    capacity: Number(blk.capacity),
    blockSize: blk.blockSize,
    readOnly: blk.readOnly,
    numQueues: blk.numQueues,
    deviceQueues: c.numQueues,
    queueSize: blk.queueSize,
    maxSegments: blk.maxSegments,
    maxSegmentSize: blk.maxSegmentSize,
    features: describeFeatures(blk.features.bits, VIRTIO_BLK_FEATURE_NAMES),
    featureBits: `0x${blk.features.bits.toString(16)}`,
    topology: c.topology,
    writeback: c.writeback,
    discard: c.discard,
    writeZeroes: c.writeZeroes,
    id: await blk.getId().catch((e) => `(${e.message})`),
  };
}

/**
 * Runs `info`.
 *
 * @param flags the parsed flags
 */
export async function info(flags: ParsedFlags): Promise<void> {
  await using blk = await openDevice(flags, "eventfd");
  const data = await deviceInfo(blk);
  if (flags.watch) return await watch(blk, data, flags.json === true);
  if (flags.json) {
    console.log(JSON.stringify(data, null, 2));
    return;
  }
  printText(blk, data);
}

/** The fields of a configuration a change may touch, for humans. */
function changedFields(d: ConfigChangeDetail): string[] {
  const out: string[] = [];
  const [a, b] = [d.previousConfig, d.config];
  if (a.capacity !== b.capacity) {
    out.push(`capacity ${formatBytes(Number(a.capacity))} -> ${formatBytes(Number(b.capacity))} (${b.capacity} bytes)`);
  }
  if (a.writeback !== b.writeback) {
    out.push(`write cache ${b.writeback ? "writeback" : "writethrough"}`);
  }
  for (const key of ["discard", "writeZeroes", "topology", "numQueues", "segMax", "sizeMax", "blkSize"] as const) {
    if (JSON.stringify(a[key]) !== JSON.stringify(b[key])) out.push(`${key} ${JSON.stringify(b[key])}`);
  }
  return out.length > 0 ? out : ["(no field this driver reads changed)"];
}

/**
 * `info --watch`: the report, then a line per configuration change, until
 * a signal ends the process (the termination hooks close the device).
 */
async function watch(blk: VirtioBlk, data: Record<string, unknown>, json: boolean): Promise<void> {
  const { signal } = blk.configStats();
  if (json) console.log(JSON.stringify({ event: "info", time: new Date().toISOString(), ...data }));
  else printText(blk, data);
  const how = {
    message: "the back-end's change messages",
    interrupt: "the device's configuration interrupt",
    generation: "the config generation, polled",
    callback: "the device's callback",
    none: "nothing: this back-end cannot announce changes",
  }[signal];
  console.error(`watching for configuration changes (through ${how}); Ctrl-C to stop`);
  if (signal === "message" && data.id === QSD_ID) {
    // Its version cannot be asked over vhost-user, and 7.2 offers the channel as 8.1 does.
    console.error(
      "note: this back-end identifies as qemu-storage-daemon's export, which announces changes from QEMU 8.1 on: " +
        "an older one offers the channel but sends nothing, and no change shows here (README.md, Device changes)",
    );
  }
  blk.addEventListener("configchange", (e) => {
    const d = e.detail;
    const time = new Date().toISOString();
    if (json) {
      console.log(JSON.stringify({
        event: "configchange",
        time,
        capacity: Number(d.config.capacity),
        previousCapacity: Number(d.previousCapacity),
        writeback: d.config.writeback,
        config: { ...d.config, capacitySectors: Number(d.config.capacitySectors), capacity: Number(d.config.capacity) },
      }));
    } else {
      console.log(`${time}  ${changedFields(d).join(", ")}`);
    }
  });
  const closed = Promise.withResolvers<void>();
  // The watch itself never keeps a program alive; here, waiting is the point.
  const keepAlive = setInterval(() => {}, 1 << 30);
  using _hook = onTermination(async () => {
    clearInterval(keepAlive);
    await blk.close();
    closed.resolve();
  });
  await closed.promise;
}

function printText(blk: VirtioBlk, data: Record<string, unknown>): void {
  const c = blk.config;
  const cap = data.capacity as number;
  console.log(`transport      ${data.transport}`);
  console.log(`capacity       ${cap} bytes (${formatBytes(cap)})`);
  console.log(`block size     ${data.blockSize}`);
  console.log(`read-only      ${data.readOnly}`);
  console.log(`queues         ${data.numQueues} in use, ${data.deviceQueues} offered, ${data.queueSize} entries each`);
  // No size_max: a segment is as large as a descriptor's 32-bit length allows.
  const each = c.sizeMax === undefined ? "of any size (the device sets no limit)" : `${c.sizeMax} bytes each`;
  console.log(`segments       at most ${data.maxSegments} per request, ${each}`);
  console.log(`features       ${(data.features as string[]).join(" ")} (${data.featureBits})`);
  if (c.topology) console.log(`topology       ${JSON.stringify(c.topology)}`);
  if (c.writeback !== undefined) console.log(`write cache    ${c.writeback ? "writeback" : "writethrough"}`);
  if (c.discard) console.log(`discard        ${JSON.stringify(c.discard)}`);
  if (c.writeZeroes) console.log(`write zeroes   ${JSON.stringify(c.writeZeroes)}`);
  console.log(`id             ${data.id}`);
}
