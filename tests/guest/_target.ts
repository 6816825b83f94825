/** The transport flags every program the guest runs takes, and the device they name. */

import type { ConnectTarget } from "../../mod.ts";

/** `--transport`, `--path` (vhost-vdpa) and `--device` (vfio-pci), for parseArgs. */
export const TARGET_FLAGS = {
  transport: { type: "string" },
  path: { type: "string" },
  device: { type: "string" },
} as const;

/**
 * The device the flags name.
 *
 * @param a the parsed flags
 * @returns where to connect
 */
export function targetOf(a: { transport?: string; path?: string; device?: string }): ConnectTarget {
  return (a.transport === "vfio-pci"
    ? { transport: "vfio-pci", device: a.device! }
    : { transport: a.transport, path: a.path }) as ConnectTarget;
}
