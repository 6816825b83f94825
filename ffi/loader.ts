/**
 * Finds, builds and loads the native shim.
 *
 * Search order:
 * 1. `$VIRTIO_SHIM_PATH`, when set (it must load, or this fails);
 * 2. the project's build folder (`build/libvirtio_shim.so`, made by
 *    `deno task build`), when this module is a local file;
 * 3. a cache folder (`$VIRTIO_SHIM_CACHE`, else `$XDG_CACHE_HOME/virtio-deno`,
 *    else `~/.cache/virtio-deno`), where it is compiled from `shim.c` with
 *    `$CC`, `cc`, `gcc` or `clang` when missing. This is how an import from
 *    a registry (which ships no binaries) gets its shim.
 *
 * @module
 */

import { ShimLoadError } from "../src/errors.ts";
import { type Shim, SHIM_ABI_VERSION, SHIM_SYMBOLS, type ShimLibrary } from "./symbols.ts";

/** File name of the built shim. */
export const SHIM_FILE_NAME = "libvirtio_shim.so";

/**
 * Compiler flags used for every build of the shim (extra ones come from
 * `$VIRTIO_SHIM_CFLAGS`). `-z nodelete` keeps the code mapped even when Deno
 * unloads the library (it does when an isolate is torn down): a waker thread
 * of a device the program never closed must not return into unmapped code.
 */
export const SHIM_CFLAGS: readonly string[] = [
  "-O2",
  "-g",
  "-fPIC",
  "-shared",
  "-Wall",
  "-Wextra",
  "-fvisibility=hidden",
  "-Wl,-z,nodelete",
];

let loaded: ShimLibrary | undefined;
let loading: Promise<ShimLibrary> | undefined;

function envGet(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env for this name: treat as unset
  }
}

function fileExists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function open(path: string): ShimLibrary {
  let lib: ShimLibrary;
  try {
    lib = Deno.dlopen(path, SHIM_SYMBOLS);
  } catch (cause) {
    throw new ShimLoadError(
      `cannot load the native shim from ${path}: ${
        (cause as Error).message
      } (loading it needs --allow-ffi without a path list)`,
      { cause },
    );
  }
  const abi = lib.symbols.vd_abi_version();
  if (abi !== SHIM_ABI_VERSION) {
    lib.close();
    throw new ShimLoadError(
      `the native shim at ${path} has ABI version ${abi}, this module needs ${SHIM_ABI_VERSION}: rebuild it (deno task build) or remove it`,
    );
  }
  return lib;
}

async function readShimSource(): Promise<string> {
  const url = new URL("./shim.c", import.meta.url);
  if (url.protocol === "file:") return await Deno.readTextFile(url);
  const res = await fetch(url);
  if (!res.ok) {
    throw new ShimLoadError(`cannot fetch ${url}: HTTP ${res.status}`);
  }
  return await res.text();
}

function extraCflags(): string[] {
  return (envGet("VIRTIO_SHIM_CFLAGS") ?? "").split(/\s+/).filter((s) => s !== "");
}

async function findCompiler(): Promise<string | undefined> {
  const candidates = [envGet("CC"), "cc", "gcc", "clang"].filter((c) => c !== undefined) as string[];
  for (const cc of candidates) {
    try {
      const out = await new Deno.Command(cc, {
        args: ["--version"],
        stdout: "null",
        stderr: "null",
      }).output();
      if (out.success) return cc;
    } catch {
      // not installed, or no --allow-run for it: try the next one
    }
  }
  return undefined;
}

/**
 * Compiles `shim.c` into `outPath` (atomically: a temporary file renamed into place).
 *
 * @param outPath where the shared object goes
 * @param source the C source (read from `shim.c` when omitted)
 * @returns the compiler that was used
 */
export async function compileShim(
  outPath: string,
  source?: string,
): Promise<string> {
  const cc = await findCompiler();
  if (cc === undefined) {
    throw new ShimLoadError(
      "virtio-deno needs its native shim and found no C compiler ($CC, cc, gcc, clang): " +
        "install one (Debian: apt-get install gcc) so it can build the shim, " +
        "or set VIRTIO_SHIM_PATH to a libvirtio_shim.so built with `deno task build`",
    );
  }
  const src = source ?? await readShimSource();
  const dir = outPath.slice(0, outPath.lastIndexOf("/")) || ".";
  await Deno.mkdir(dir, { recursive: true });
  const srcPath = await Deno.makeTempFile({ dir, suffix: ".c" });
  const tmpOut = `${outPath}.${Deno.pid}.tmp`;
  try {
    await Deno.writeTextFile(srcPath, src);
    const out = await new Deno.Command(cc, {
      args: [
        ...SHIM_CFLAGS,
        ...extraCflags(),
        "-o",
        tmpOut,
        srcPath,
        "-lpthread",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new ShimLoadError(
        `${cc} failed to build the native shim:\n${new TextDecoder().decode(out.stderr)}`,
      );
    }
    await Deno.rename(tmpOut, outPath);
  } finally {
    await Deno.remove(srcPath).catch(() => {});
    await Deno.remove(tmpOut).catch(() => {});
  }
  return cc;
}

async function sourceHash(source: string): Promise<string> {
  const data = new TextEncoder().encode(
    `${source}\n${SHIM_CFLAGS.join(" ")} ${extraCflags().join(" ")}`,
  );
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

function cacheDir(): string | undefined {
  const explicit = envGet("VIRTIO_SHIM_CACHE");
  if (explicit) return explicit;
  const xdg = envGet("XDG_CACHE_HOME");
  if (xdg) return `${xdg}/virtio-deno`;
  const home = envGet("HOME");
  return home ? `${home}/.cache/virtio-deno` : undefined;
}

/** The path of the project's build output, when this module is a local file. */
export function projectShimPath(): string | undefined {
  const url = new URL(`../build/${SHIM_FILE_NAME}`, import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : undefined;
}

async function locateAndLoad(): Promise<ShimLibrary> {
  const explicit = envGet("VIRTIO_SHIM_PATH");
  if (explicit) return open(explicit);
  const project = projectShimPath();
  if (project && fileExists(project)) return open(project);
  const source = await readShimSource();
  const dir = cacheDir();
  if (!dir) {
    throw new ShimLoadError(
      "cannot find the native shim: set VIRTIO_SHIM_PATH, run `deno task build`, or set HOME/VIRTIO_SHIM_CACHE for a cache folder",
    );
  }
  const path = `${dir}/${await sourceHash(source)}/${SHIM_FILE_NAME}`;
  if (!fileExists(path)) await compileShim(path, source);
  return open(path);
}

/**
 * Loads the native shim once per process, building it into the cache if
 * needed. Every connect path calls it; call it yourself to load early (for
 * example outside a test, so that the library does not count as a resource
 * the test opened).
 *
 * @example
 * ```ts
 * import { loadShim } from "./mod.ts";
 * await loadShim();
 * ```
 */
export async function loadShim(): Promise<void> {
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
 * The shim's functions, for code that runs after {@linkcode loadShim} has
 * resolved (every connect path awaits it first).
 *
 * @returns the shim's functions
 */
export function requireShim(): Shim {
  if (!loaded) {
    throw new ShimLoadError(
      "the native shim is not loaded yet: await loadShim() first",
    );
  }
  return loaded.symbols;
}
