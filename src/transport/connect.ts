/**
 * Turning "where the device is" into a {@linkcode Transport}: the options
 * that name a transport (a union keyed on `transport`) and the one function
 * that connects each. The device layer receives the result and never sees a
 * concrete transport.
 *
 * @module
 */

import { InvalidArgumentError } from "../errors.ts";
import { loadShim, loadShimLibrary } from "../os/loader.ts";
import { type AttachedQueueSpec, AttachedTransport } from "./attached.ts";
import { type InProcessDevice, MockTransport } from "./in_process.ts";
import type { Transport } from "./transport.ts";
import { VfioPciTransport } from "./vfio_pci/transport.ts";
import { VhostUserTransport } from "./vhost_user/transport.ts";
import { VhostVdpaTransport } from "./vhost_vdpa/transport.ts";

/** A vhost-user back-end (qemu-storage-daemon, SPDK, DPDK…) on a Unix socket. */
export interface VhostUserTarget {
  /** The transport. */
  transport: "vhost-user";
  /** The back-end's socket path. */
  path?: string;
  /** Or a socket already connected to it (the driver takes it over and closes it). */
  fd?: number;
}

/** A vhost-vdpa character device (a vDPA device: a SmartNIC/DPU function, or VDUSE). */
export interface VhostVdpaTarget {
  /** The transport. */
  transport: "vhost-vdpa";
  /** The device, e.g. `/dev/vhost-vdpa-0`. */
  path?: string;
  /** Or an already-open descriptor of it (as libvirt passes; the driver takes it over). */
  fd?: number;
}

/** A virtio-blk PCI function bound to vfio-pci. */
export interface VfioPciTarget {
  /** The transport. */
  transport: "vfio-pci";
  /** The PCI address, e.g. `"0000:00:04.0"`. */
  device: string;
}

/** A device model in this process, such as the mock virtio-blk device of `./testing`. */
export interface MockTarget {
  /** The transport. */
  transport: "mock";
  /** The device. */
  device: InProcessDevice;
}

/** A transport made by the caller (a connected {@linkcode Transport}). */
export interface TransportTarget {
  /** The transport object; the device takes it over and closes it. */
  transport: Transport;
}

/** Where the device is: one of the transports, keyed on `transport`. */
export type ConnectTarget = VhostUserTarget | VhostVdpaTarget | VfioPciTarget | MockTarget | TransportTarget;

export type { AttachedQueueSpec };

/**
 * The transport of a queue another isolate of this process handed over
 * (`Transport.handOverQueue` there, posted here as plain data).
 *
 * @param spec what the owner handed over
 * @returns the transport: one queue, the owner's memory
 * @throws {ClosedError} when the owner closed the device already; {@linkcode InvalidArgumentError} when it was attached before
 */
export async function attachTransport(spec: AttachedQueueSpec): Promise<Transport> {
  await loadShimLibrary(); // views of the owner's memory and notifying need the shim; its interrupts are watched there
  return AttachedTransport.attach(spec);
}

/** How the transport is to behave. */
export interface TransportSettings {
  /** Control-path reply timeout (vhost-user); default 10000 ms. */
  requestTimeoutMs?: number;
  /** Whether the device's interrupts will be waited on (vfio-pci routes them only then). */
  interrupts: boolean;
}

/**
 * Connects the transport `target` names.
 *
 * @example
 * ```ts ignore
 * import { connectTransport } from "./connect.ts";
 * const t = await connectTransport({ transport: "vhost-user", path: "/tmp/x.sock" }, { interrupts: true });
 * console.log(t.type, t.maxQueues);
 * await t.close();
 * ```
 *
 * @param target where the device is
 * @param settings timeouts, interrupts
 * @returns the transport, connected
 * @throws {InvalidArgumentError} when the target is incomplete or unknown
 */
export async function connectTransport(target: ConnectTarget, settings: TransportSettings): Promise<Transport> {
  const t = target.transport;
  if (typeof t === "object" && t !== null) return t;
  switch (t) {
    case "mock": {
      const { device } = target as MockTarget;
      if (typeof device !== "object" || device === null) {
        throw new InvalidArgumentError('transport "mock" needs `device`, e.g. a MockBlkDevice from ./testing');
      }
      return new MockTransport(device);
    }
    case "vhost-user": {
      const { path, fd } = target as VhostUserTarget;
      if (fd === undefined && (typeof path !== "string" || path === "")) {
        throw new InvalidArgumentError('transport "vhost-user" needs `path`, the socket of the back-end, or `fd`');
      }
      await loadShim();
      return await VhostUserTransport.connect(fd !== undefined ? { fd } : path!, {
        timeoutMs: settings.requestTimeoutMs,
      });
    }
    case "vhost-vdpa": {
      const { path, fd } = target as VhostVdpaTarget;
      if (fd === undefined && (typeof path !== "string" || path === "")) {
        throw new InvalidArgumentError('transport "vhost-vdpa" needs `path` (e.g. /dev/vhost-vdpa-0) or `fd`');
      }
      await loadShim();
      return await VhostVdpaTransport.connect(path ?? `fd ${fd}`, { fd });
    }
    case "vfio-pci": {
      const { device } = target as VfioPciTarget;
      if (typeof device !== "string") {
        throw new InvalidArgumentError('transport "vfio-pci" needs `device`, the PCI address (e.g. "0000:00:04.0")');
      }
      await loadShim();
      // Interrupts only when they are waited for: poll mode needs none.
      return await VfioPciTransport.connect(device, { interrupts: settings.interrupts });
    }
    default:
      throw new InvalidArgumentError(`unknown transport ${JSON.stringify(t)}`);
  }
}
