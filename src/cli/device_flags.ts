/**
 * The flags every CLI command shares to reach a device, and the connect
 * that turns them into a {@linkcode VirtioBlk}.
 *
 * @module
 */

import type { CompletionMode } from "../blk/completion_driver.ts";
import type { VirtioBlkConnectOptions } from "../blk/options.ts";
import { VirtioBlk } from "../blk/virtio_blk.ts";
import { InvalidArgumentError } from "../errors.ts";
import {
  type FlagSpec,
  parseChoice,
  type ParsedFlags,
  parseInteger,
  parseQueueSize,
  UsageError,
  userPath,
} from "./args.ts";

/** The transports the CLI reaches. */
const CLI_TRANSPORTS = ["vhost-user", "vhost-vdpa", "vfio-pci"] as const;

/**
 * The shared flags, for a command whose default completion mode is `mode`.
 *
 * @param mode the command's default completion mode
 * @param pathHelp what `--path` means for the command
 * @returns the flag specs
 */
export function deviceFlags(mode: CompletionMode, pathHelp: string): FlagSpec[] {
  return [
    { name: "path", kind: "string", value: "SOCKET", help: pathHelp },
    {
      name: "transport",
      kind: "string",
      value: "T",
      default: "vhost-user",
      help: "vhost-user, vhost-vdpa (--path /dev/vhost-vdpa-N) or vfio-pci (--device)",
    },
    { name: "device", kind: "string", value: "BDF", help: "vfio-pci: the PCI address, e.g. 0000:00:04.0" },
    { name: "queues", kind: "string", value: "N", default: "1", help: "request queues to set up" },
    {
      name: "queue-size",
      kind: "string",
      value: "N",
      default: "256",
      help: "ring entries per queue: a power of two from 4 to 32768",
    },
    {
      name: "mode",
      kind: "string",
      value: "M",
      default: mode,
      help: "poll (a core busy while I/O is pending, lowest latency) or eventfd (sleep on interrupts)",
    },
    {
      name: "spin-us",
      kind: "string",
      value: "N",
      default: "50",
      help: "eventfd mode: microseconds to poll before sleeping",
    },
    {
      name: "indirect",
      kind: "string",
      value: "W",
      default: "auto",
      help: "indirect descriptors: auto (long chains), always (every request: one ring entry each), off",
    },
  ];
}

/**
 * Connect options from the shared flags.
 *
 * @param flags the parsed flags
 * @param mode the command's default completion mode
 * @param overrides values the command decides (a private daemon's socket, a queue size)
 * @returns the options
 * @throws {UsageError} for bad or missing flags
 */
function connectOptions(
  flags: ParsedFlags,
  mode: CompletionMode,
  overrides: DeviceOverrides = {},
): VirtioBlkConnectOptions {
  const transport = parseChoice(flags.transport ?? "vhost-user", "--transport", CLI_TRANSPORTS);
  // A relative path is the user's, from the folder they ran deno task in.
  const path = overrides.path ?? (typeof flags.path === "string" ? userPath(flags.path) : undefined);
  if (transport === "vfio-pci") {
    if (typeof flags.device !== "string") throw new UsageError("--transport vfio-pci needs --device (a PCI address)");
    if (flags.path !== undefined) throw new UsageError("--transport vfio-pci takes --device, not --path");
  } else {
    if (flags.device !== undefined) throw new UsageError(`--device is for --transport vfio-pci, not ${transport}`);
    if (!path) {
      throw new UsageError(
        `--path is required: the ${transport === "vhost-user" ? "vhost-user socket" : "vhost-vdpa device"}`,
      );
    }
  }
  const indirect = parseChoice(flags.indirect ?? "auto", "--indirect", ["auto", "always", "off"] as const);
  const common = {
    numQueues: overrides.numQueues ??
      (flags.queues === undefined ? 1 : parseInteger(flags.queues, "--queues", 1, 65535)),
    queueSize: overrides.queueSize ?? (flags["queue-size"] === undefined ? 256 : parseQueueSize(flags["queue-size"])),
    mode: parseChoice(flags.mode ?? mode, "--mode", ["poll", "eventfd"] as const),
    spinMicros: flags["spin-us"] === undefined ? undefined : parseInteger(flags["spin-us"], "--spin-us", 0, 1e6),
    features: { indirect: indirect !== "off" },
    // "always": every chain of two descriptors or more goes through a table.
    indirectThreshold: indirect === "always" ? 2 : undefined,
    ...(overrides.bufferPoolSize !== undefined ? { bufferPoolSize: overrides.bufferPoolSize } : {}),
  };
  if (transport === "vfio-pci") return { transport, device: flags.device as string, ...common };
  const reconnect = overrides.reconnectSeconds === undefined
    ? undefined
    : { timeoutMs: overrides.reconnectSeconds * 1000 };
  if (reconnect && transport !== "vhost-user") throw new UsageError("--reconnect is for --transport vhost-user");
  return { transport, path: path!, ...common, ...(reconnect ? { reconnect } : {}) };
}

/** Connect options a command decides itself rather than take from a flag. */
export interface DeviceOverrides {
  /** The socket (a private daemon's). */
  path?: string;
  /** Ring entries per queue (sized from the command's own flags). */
  queueSize?: number;
  /** Ride out a back-end restart of this many seconds. */
  reconnectSeconds?: number;
  /** Bytes of device-reachable buffer memory (sized from what the command keeps in flight). */
  bufferPoolSize?: number;
  /** Queues, when the command decides them (fio's --numjobs). */
  numQueues?: number;
  /** The flag that set the number of queues, for messages (default `--queues`). */
  queuesFlag?: string;
}

/**
 * Connects as the shared flags say.
 *
 * @param flags the parsed flags
 * @param mode the command's default completion mode
 * @param overrides values the command decides
 * @returns the device
 */
export async function openDevice(
  flags: ParsedFlags,
  mode: CompletionMode,
  overrides: DeviceOverrides = {},
): Promise<VirtioBlk> {
  try {
    return await VirtioBlk.connect(connectOptions(flags, mode, overrides));
  } catch (e) {
    // An option the device cannot take (more queues than it offers, a ring
    // above its maximum) is a flag the user chose: say which, exit 2.
    if (e instanceof InvalidArgumentError) {
      const flagOf = { ...FLAG_OF_OPTION, ...(overrides.queuesFlag ? { numQueues: overrides.queuesFlag } : {}) };
      throw new UsageError(Object.entries(flagOf).reduce((m, [option, flag]) => m.replaceAll(option, flag), e.message));
    }
    throw e;
  }
}

/** The flag behind each connect option, for messages. */
const FLAG_OF_OPTION: Readonly<Record<string, string>> = {
  numQueues: "--queues",
  queueSize: "--queue-size",
  spinMicros: "--spin-us",
};
