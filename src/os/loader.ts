/**
 * Loads the native shim, once per isolate. In order:
 * 1. `$VIRTIO_SHIM_PATH`, when the program may read it and it is set (it
 *    must load, or this fails): a shim of your own, such as the
 *    AddressSanitizer build of `deno task test:asan`;
 * 2. the prebuilt shim this package carries for the platform (linux x86_64
 *    and aarch64, glibc): decoded from its module, checked against its
 *    pinned SHA-256 and loaded from memory (`memory_library.ts`) — no
 *    compiler, no file written, nothing fetched, `--allow-ffi` alone;
 * 3. otherwise, or in a checkout whose `shim.c` was edited since the
 *    prebuilt shims were made, a build from source (`compile.ts`).
 *
 * Then it starts this isolate's event relay (`event_relay.ts`), through
 * which waker threads wake the event loop.
 *
 * @module
 */

import { ShimLoadError } from "../errors.ts";
import { ensureShimBuilt, sha256Hex, shimSource } from "./compile.ts";
import { startEventRelay } from "./event_relay.ts";
import { dlopenFromMemory } from "./memory_library.ts";
import { envIfGranted, permissionErrorOf, requirePermission } from "./permissions.ts";
import { PREBUILT_SHIMS, PREBUILT_SOURCE_SHA256, type PrebuiltShim } from "./prebuilt/manifest.ts";
import { type Shim, SHIM_ABI_VERSION, SHIM_SYMBOLS, type ShimLibrary } from "./symbols.ts";

let loaded: ShimLibrary | undefined;
let loading: Promise<ShimLibrary> | undefined;

/** How the shim in use was found (a statistic for `info` and tests). */
export type ShimOrigin = "path" | "prebuilt" | "source";
let origin: ShimOrigin | undefined;

function checkAbi(lib: ShimLibrary, where: string): ShimLibrary {
  const abi = lib.symbols.vd_abi_version();
  if (abi !== SHIM_ABI_VERSION) {
    lib.close();
    throw new ShimLoadError(
      `the native shim ${where} has ABI version ${abi}, this module needs ${SHIM_ABI_VERSION}: rebuild it (deno task build) or remove it`,
    );
  }
  return lib;
}

function openFile(path: string): ShimLibrary {
  let lib: ShimLibrary;
  try {
    lib = Deno.dlopen(path, SHIM_SYMBOLS);
  } catch (cause) {
    const p = permissionErrorOf(cause, "--allow-ffi", `loading the native shim from ${path}`);
    if (p !== cause) throw p;
    throw new ShimLoadError(`cannot load the native shim from ${path}: ${(cause as Error).message}`, { cause });
  }
  return checkAbi(lib, `at ${path}`);
}

function decodeBase64(text: string): Uint8Array<ArrayBuffer> {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function openPrebuilt(target: string, shim: PrebuiltShim): Promise<ShimLibrary> {
  const bytes = decodeBase64(await shim.base64());
  const sum = await sha256Hex(bytes);
  if (bytes.length !== shim.size || sum !== shim.sha256) {
    throw new ShimLoadError(
      `the prebuilt native shim for ${target} does not match its pinned SHA-256 ` +
        `(${bytes.length} bytes, ${sum}; expected ${shim.size} bytes, ${shim.sha256}): the package is damaged`,
    );
  }
  // The memfd shows in /proc/PID/maps as memfd:libvirtio_shim (not memfd:virtio-…, the name of shared memory).
  return checkAbi(dlopenFromMemory("libvirtio_shim", bytes, SHIM_SYMBOLS), `prebuilt for ${target}`);
}

/** True in a checkout whose shim.c differs from what the prebuilt shims were made from. */
async function sourceEdited(): Promise<boolean> {
  return await sha256Hex(new TextEncoder().encode(await shimSource())) !== PREBUILT_SOURCE_SHA256;
}

async function locateAndLoad(): Promise<ShimLibrary> {
  requirePermission({ name: "ffi" }, "a real device (loading the native shim)");
  const explicit = envIfGranted("VIRTIO_SHIM_PATH");
  if (explicit) {
    origin = "path";
    return openFile(explicit);
  }
  const target = Deno.build.target;
  const prebuilt = PREBUILT_SHIMS[target];
  if (prebuilt && !await sourceEdited()) {
    origin = "prebuilt";
    return await openPrebuilt(target, prebuilt);
  }
  origin = "source";
  return openFile((await ensureShimBuilt()).path);
}

/**
 * Loads the native shim once per isolate (and starts the event relay). Every
 * connect path calls it; call it yourself to load early (for example
 * outside a test, so that the library does not count as a resource the test
 * opened).
 *
 * @throws {PermissionError} without `--allow-ffi` (`ERR_PERMISSION`, naming the flag)
 * @throws {ShimLoadError} when no shim can be loaded (the message says what to do)
 *
 * @example
 * ```ts
 * import { loadShim } from "./mod.ts";
 * await loadShim();
 * ```
 */
export async function loadShim(): Promise<void> {
  await loadShimLibrary();
  relayStarting ??= startEventRelay(loaded!.symbols).catch((e) => {
    relayStarting = undefined;
    throw e;
  });
  await relayStarting;
}

let relayStarting: Promise<void> | undefined;

/**
 * Loads the native shim without starting the event relay: for an isolate
 * that only drives a queue handed over to it (its interrupts are watched by
 * the owner's relay). {@linkcode loadShim} does both.
 */
export async function loadShimLibrary(): Promise<void> {
  if (loaded) return;
  loading ??= locateAndLoad().then((lib) => (loaded = lib)).finally(() => {
    loading = undefined;
  });
  await loading;
}

/** Whether the shim is loaded (the mock transport works without it). */
export function isShimLoaded(): boolean {
  return loaded !== undefined;
}

/**
 * How the loaded shim was found: `"path"` (`$VIRTIO_SHIM_PATH`), `"prebuilt"`
 * (carried by the package) or `"source"` (built from `shim.c`).
 *
 * @returns the origin, or undefined before {@linkcode loadShim} resolved
 */
export function shimOrigin(): ShimOrigin | undefined {
  return loaded ? origin : undefined;
}

/**
 * The shim's functions, for code that runs after {@linkcode loadShim} has
 * resolved (every connect path awaits it first).
 *
 * @returns the shim's functions
 */
export function requireShim(): Shim {
  if (!loaded) {
    throw new ShimLoadError("the native shim is not loaded yet: await loadShim() first");
  }
  return loaded.symbols;
}
