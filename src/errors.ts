/**
 * Typed errors. Every error this library throws is a {@linkcode VirtioError}
 * with a stable {@linkcode VirtioError.code}, so callers can tell a device
 * I/O error from a full queue, a bad argument, a misbehaving device, a lost
 * connection or a closed handle without parsing messages.
 *
 * @module
 */

/** The stable codes carried by {@linkcode VirtioError.code}. */
export type VirtioErrorCode =
  | "ERR_INVALID_ARGUMENT"
  | "ERR_QUEUE_FULL"
  | "ERR_DEVICE_IO"
  | "ERR_DEVICE_UNSUPPORTED"
  | "ERR_DEVICE_PROTOCOL"
  | "ERR_CONNECT_FAILED"
  | "ERR_CONNECTION_LOST"
  | "ERR_RECONNECTING"
  | "ERR_INCOMPATIBLE_DEVICE"
  | "ERR_CLOSED"
  | "ERR_READ_ONLY"
  | "ERR_TIMEOUT"
  | "ERR_OS"
  | "ERR_SHIM_LOAD"
  | "ERR_PERMISSION"
  | "ERR_OUT_OF_BUFFER_MEMORY"
  | "ERR_FEATURE_NEGOTIATION";

/**
 * Base class of every error this library throws.
 *
 * @example Telling errors apart
 * ```ts
 * import { VirtioError } from "./mod.ts";
 * try {
 *   throw new VirtioError("ERR_QUEUE_FULL", "queue 0 is full");
 * } catch (e) {
 *   if (e instanceof VirtioError && e.code === "ERR_QUEUE_FULL") {
 *     // wait for completions, then retry
 *   }
 * }
 * ```
 */
export class VirtioError extends Error {
  /** A stable, machine-readable code. */
  readonly code: VirtioErrorCode;
  /**
   * Creates an error with a code and a message.
   *
   * @param code the stable code
   * @param message what happened, for humans
   * @param options the underlying cause, if any
   */
  constructor(
    code: VirtioErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A caller passed an argument the library cannot use (nothing reached the device). */
export class InvalidArgumentError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message which argument and why
   */
  constructor(message: string) {
    super("ERR_INVALID_ARGUMENT", message);
  }
}

/** A write-type request was made on a read-only device (nothing reached the device). */
export class ReadOnlyError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message which request
   */
  constructor(message = "the device is read-only") {
    super("ERR_READ_ONLY", message);
  }
}

/**
 * The virtqueue has no room for the request. Nothing was added; wait for
 * completions and retry. The promise API queues such requests itself.
 */
export class QueueFullError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message which queue
   */
  constructor(message = "the virtqueue is full") {
    super("ERR_QUEUE_FULL", message);
  }
}

/** The device completed a request with VIRTIO_BLK_S_IOERR. */
export class DeviceIoError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message the request that failed
   */
  constructor(message = "the device reported an I/O error") {
    super("ERR_DEVICE_IO", message);
  }
}

/** The device completed a request with VIRTIO_BLK_S_UNSUPP. */
export class DeviceUnsupportedError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message the request that was refused
   */
  constructor(message = "the device does not support this request") {
    super("ERR_DEVICE_UNSUPPORTED", message);
  }
}

/**
 * What a device did wrong, named by {@linkcode DeviceProtocolError.violation}:
 * - in a ring: `used-id-out-of-range`, `used-id-not-in-flight`,
 *   `used-id-stale` (a split ring's used element older than the chain now
 *   holding its id), `used-idx-jump` (the used index moved past what is in
 *   flight), and with `strictUsedLength` `used-len-too-large` and
 *   `short-read`;
 * - in a request: `bad-status` (a status byte other than OK, IOERR, UNSUPP);
 * - in the config space: `bad-config`, `config-refused`, `config-unstable`;
 * - on the vhost-user control channel: `reply-wrong-request`,
 *   `reply-bad-version`, `reply-missing-reply-flag`, `reply-oversized`,
 *   `reply-bad-size`, `reply-unexpected-fds`, `reply-bad-config`,
 *   `request-refused`, `bad-queue-num`, `bad-mem-slots`;
 * - on a PCI or vDPA device: `bad-pci-config`, `msix-refused`,
 *   `driver-ok-refused`.
 */
export type ProtocolViolation =
  | "used-id-out-of-range"
  | "used-id-not-in-flight"
  | "used-id-stale"
  | "used-idx-jump"
  | "used-len-too-large"
  | "short-read"
  | "bad-status"
  | "bad-config"
  | "config-refused"
  | "config-unstable"
  | "reply-wrong-request"
  | "reply-bad-version"
  | "reply-missing-reply-flag"
  | "reply-oversized"
  | "reply-bad-size"
  | "reply-unexpected-fds"
  | "reply-bad-config"
  | "request-refused"
  | "bad-queue-num"
  | "bad-mem-slots"
  | "bad-pci-config"
  | "msix-refused"
  | "driver-ok-refused";

/**
 * The device broke the virtio or vhost-user protocol: an out-of-range or
 * duplicate used id, an impossible length, a malformed reply, an invalid
 * configuration. The affected queue (or the connection) is failed: every
 * request in flight on it rejects with this error, and so does every later
 * request.
 */
export class DeviceProtocolError extends VirtioError {
  /** A stable name for the violation, e.g. `"used-id-out-of-range"`. */
  readonly violation: ProtocolViolation;
  /**
   * Creates the instance.
   *
   * @param violation the stable violation name
   * @param message details for humans
   */
  constructor(violation: ProtocolViolation, message: string) {
    super("ERR_DEVICE_PROTOCOL", `${message} [${violation}]`);
    this.violation = violation;
  }
}

/**
 * The device could not be reached at all: no socket at the path, nothing
 * listening on it, not a socket, no permission. Nothing was ever connected
 * (compare {@linkcode ConnectionLostError}). The message names the cause;
 * {@linkcode ConnectFailedError.errno} has the errno's name.
 */
export class ConnectFailedError extends VirtioError {
  /** The errno's name, e.g. `"ENOENT"` or `"ECONNREFUSED"`. */
  readonly errno: string;
  /** What was connected to (a socket path, a device node, a PCI address). */
  readonly target: string;
  /**
   * Creates the instance.
   *
   * @param target what was connected to
   * @param errno the errno's name
   * @param message the cause, for humans
   * @param options the underlying cause
   */
  constructor(target: string, errno: string, message: string, options?: { cause?: unknown }) {
    super("ERR_CONNECT_FAILED", message, options);
    this.errno = errno;
    this.target = target;
  }
}

/** The connection to the device was lost (the backend closed its socket or died). */
export class ConnectionLostError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message what was lost
   * @param options the underlying cause
   */
  constructor(
    message = "the connection to the device was lost",
    options?: { cause?: unknown },
  ) {
    super("ERR_CONNECTION_LOST", message, options);
  }
}

/**
 * Batch API, with `reconnect` on: the back-end hung up and the driver is
 * reconnecting. Nothing was submitted; retry after the `"reconnect"` event.
 * Requests already in flight are kept and resubmitted; promise-API requests
 * wait instead of failing.
 */
export class ReconnectingError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message what was refused
   */
  constructor(message = "the back-end is gone and the driver is reconnecting: retry after the reconnect event") {
    super("ERR_RECONNECTING", message);
  }
}

/**
 * With `reconnect` on: the back-end came back, but not as the device the
 * driver was using — a feature it relied on is gone, the block size
 * changed, the capacity shrank, fewer queues or segments. Everything
 * pending rejects with this error; the device is unusable afterwards.
 */
export class IncompatibleDeviceError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message what changed
   */
  constructor(message: string) {
    super("ERR_INCOMPATIBLE_DEVICE", message);
  }
}

/** The handle was closed (or is closing); the operation did not reach the device. */
export class ClosedError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message what was closed
   */
  constructor(message = "the device handle is closed") {
    super("ERR_CLOSED", message);
  }
}

/** The device did not answer in time. */
export class TimeoutError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message what timed out
   */
  constructor(message: string) {
    super("ERR_TIMEOUT", message);
  }
}

/** A system call failed. */
export class OsError extends VirtioError {
  /** The errno value (positive). */
  readonly errno: number;
  /** The call that failed. */
  readonly syscall: string;
  /**
   * Creates the instance.
   *
   * @param syscall the call that failed
   * @param errno the positive errno value
   * @param detail extra context
   */
  constructor(syscall: string, errno: number, detail?: string) {
    super(
      "ERR_OS",
      `${syscall} failed: ${errnoName(errno)} (errno ${errno})${detail ? `: ${detail}` : ""}`,
    );
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** The native shim could not be found, built or loaded. */
export class ShimLoadError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message what was tried and what to do
   * @param options the underlying cause
   */
  constructor(message: string, options?: { cause?: unknown }) {
    super("ERR_SHIM_LOAD", message, options);
  }
}

/** The Deno permission flags that {@linkcode PermissionError.flag} may name. */
export type PermissionFlag =
  | "--allow-ffi"
  | "--allow-read"
  | "--allow-write"
  | "--allow-run"
  | "--allow-env"
  | "--allow-net"
  | "--allow-import";

/**
 * The program lacks a Deno permission this needs; the message and
 * {@linkcode PermissionError.flag} name the flag to add. A real device needs
 * `--allow-ffi` and nothing else; the mock device needs no permission.
 *
 * @example
 * ```ts
 * import { PermissionError, VirtioBlk } from "./mod.ts";
 * try {
 *   await VirtioBlk.connect({ transport: "vhost-user", path: "/tmp/x.sock" });
 * } catch (e) {
 *   if (e instanceof PermissionError) console.error(`run again with ${e.flag}`);
 * }
 * ```
 */
export class PermissionError extends VirtioError {
  /** The flag to add, e.g. `--allow-ffi`. */
  readonly flag: PermissionFlag;
  /**
   * Creates the instance.
   *
   * @param flag the flag to add
   * @param message what needs it, naming the flag
   * @param options the underlying cause (Deno's `NotCapable`, when there was one)
   */
  constructor(flag: PermissionFlag, message: string, options?: { cause?: unknown }) {
    super("ERR_PERMISSION", message, options);
    this.flag = flag;
  }
}

/** The memory the device can reach is exhausted (see the `bufferPoolSize` option). */
export class OutOfBufferMemoryError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message how much was asked and how much is left
   */
  constructor(message: string) {
    super("ERR_OUT_OF_BUFFER_MEMORY", message);
  }
}

/** The device lacks a feature the driver requires, or refused the negotiated set. */
export class FeatureNegotiationError extends VirtioError {
  /**
   * Creates the instance.
   *
   * @param message which feature
   */
  constructor(message: string) {
    super("ERR_FEATURE_NEGOTIATION", message);
  }
}

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  32: "EPIPE",
  36: "ENAMETOOLONG",
  38: "ENOSYS",
  88: "ENOTSOCK",
  95: "EOPNOTSUPP",
  98: "EADDRINUSE",
  104: "ECONNRESET",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
};

/**
 * The symbolic name of a Linux errno value (`"EINVAL"`), or `"errno N"`.
 *
 * @param errno a positive errno value
 * @returns its name
 */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}
