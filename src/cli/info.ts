/**
 * `info`: the device's configuration and negotiated features.
 *
 * @module
 */

import { VIRTIO_BLK_FEATURE_NAMES } from "../blk/spec.ts";
import type { VirtioBlk } from "../blk/virtio_blk.ts";
import { describeFeatures } from "../virtio/spec.ts";
import type { CommandSpec, ParsedFlags } from "./args.ts";
import { deviceFlags, openDevice } from "./device_flags.ts";
import { formatBytes } from "./format.ts";

/** The `info` command. */
export const INFO: CommandSpec = {
  name: "info",
  usage: "deno task info --path SOCKET [--json] [flags]",
  description: "Connects, negotiates features and prints the device's configuration: capacity, block size,\n" +
    "queues, segment limits, features, discard and write-zeroes limits, and its id string.",
  flags: [
    ...deviceFlags("eventfd", "the vhost-user socket (or /dev/vhost-vdpa-N)"),
    { name: "json", kind: "boolean", help: "print one JSON object instead of text" },
  ],
  examples: [
    "deno task info --path /tmp/x.sock",
    "deno task info --path /tmp/x.sock --json | jq .capacity",
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
  if (flags.json) {
    console.log(JSON.stringify(data, null, 2));
    return;
  }
  const c = blk.config;
  const cap = data.capacity as number;
  console.log(`transport      ${data.transport}`);
  console.log(`capacity       ${cap} bytes (${formatBytes(cap)})`);
  console.log(`block size     ${data.blockSize}`);
  console.log(`read-only      ${data.readOnly}`);
  console.log(`queues         ${data.numQueues} in use, ${data.deviceQueues} offered, ${data.queueSize} entries each`);
  console.log(`segments       at most ${data.maxSegments} per request, ${data.maxSegmentSize} bytes each`);
  console.log(`features       ${(data.features as string[]).join(" ")} (${data.featureBits})`);
  if (c.topology) console.log(`topology       ${JSON.stringify(c.topology)}`);
  if (c.writeback !== undefined) console.log(`write cache    ${c.writeback ? "writeback" : "writethrough"}`);
  if (c.discard) console.log(`discard        ${JSON.stringify(c.discard)}`);
  if (c.writeZeroes) console.log(`write zeroes   ${JSON.stringify(c.writeZeroes)}`);
  console.log(`id             ${data.id}`);
}
