/**
 * Finds, builds and loads the native shim.
 *
 * Every build is keyed by a hash of `shim.c` and the compiler flags, so an
 * edited source is never served by a stale binary and an unchanged one is
 * never rebuilt. Search order:
 * 1. `$VIRTIO_SHIM_PATH`, when set (it must load, or this fails);
 * 2. `<dir>/<hash>/libvirtio_shim.so` in the first of these folders that has
 *    it: `$VIRTIO_SHIM_CACHE` when set; else the checkout's `build/shim/`
 *    (when this module is a local file) and then the user cache
 *    (`$XDG_CACHE_HOME/virtio-deno` or `~/.cache/virtio-deno`);
 * 3. otherwise it is compiled there with `$CC`, `cc`, `gcc` or `clang` (into
 *    the first of those folders that is writable). This is also how an
 *    import from a registry (which ships no binaries) gets its shim.
 *
 * @module
 */

import { ShimLoadError } from "../errors.ts";
import { type Shim, SHIM_ABI_VERSION, SHIM_SYMBOLS, type ShimLibrary } from "./symbols.ts";

/** File name of the built shim. */
export const SHIM_FILE_NAME = "libvirtio_shim.so";

/**
 * Compiler flags used for every build of the shim (extra ones come from
 * `$VIRTIO_SHIM_CFLAGS`). `-z nodelete` keeps the code mapped even when Deno
 * unloads the library (it does when an isolate is torn down): a waker thread
 * of a device the program never closed must not return into unmapped code.
 */
const SHIM_CFLAGS: readonly string[] = [
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

/**
 * The key of a build: a hash of the shim's source and the compiler flags.
 *
 * @param source the C source
 * @returns 24 hex digits
 */
export async function shimBuildHash(source: string): Promise<string> {
  const data = new TextEncoder().encode(
    `${source}\n${SHIM_CFLAGS.join(" ")} ${extraCflags().join(" ")}`,
  );
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The checkout's build folder for the shim, when this module is a local file. */
function projectShimDir(): string | undefined {
  const url = new URL("../../build/shim", import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : undefined;
}

/** The folders a build is looked for in (and compiled into), in order. */
function shimDirs(): string[] {
  const explicit = envGet("VIRTIO_SHIM_CACHE");
  if (explicit) return [explicit];
  const dirs: string[] = [];
  const project = projectShimDir();
  if (project) dirs.push(project);
  const xdg = envGet("XDG_CACHE_HOME");
  const home = envGet("HOME");
  if (xdg) dirs.push(`${xdg}/virtio-deno`);
  else if (home) dirs.push(`${home}/.cache/virtio-deno`);
  return dirs;
}

/** Where a shim build is, or is to be made. */
export interface ShimBuild {
  /** The shared object's path. */
  readonly path: string;
  /** The compiler used, when this call compiled it. */
  readonly compiler?: string;
}

/**
 * Makes sure a build of the current `shim.c` exists (compiling it when no
 * folder has one) and says where it is. Does nothing but look when the
 * build is up to date.
 *
 * @returns the build's path, and the compiler when it was compiled now
 * @throws {ShimLoadError} when it must be compiled and cannot be
 */
export async function ensureShimBuilt(): Promise<ShimBuild> {
  const source = await readShimSource();
  const hash = await shimBuildHash(source);
  const dirs = shimDirs();
  if (dirs.length === 0) {
    throw new ShimLoadError(
      "cannot find the native shim: set VIRTIO_SHIM_PATH to a built libvirtio_shim.so, or HOME or VIRTIO_SHIM_CACHE for a cache folder",
    );
  }
  for (const dir of dirs) {
    const path = `${dir}/${hash}/${SHIM_FILE_NAME}`;
    if (fileExists(path)) return { path };
  }
  let lastError: unknown;
  for (const dir of dirs) {
    const path = `${dir}/${hash}/${SHIM_FILE_NAME}`;
    try {
      return { path, compiler: await compileShim(path, source) };
    } catch (e) {
      if (e instanceof ShimLoadError) throw e; // the compiler failed: the next folder will not help
      lastError = e; // a folder we may not write to (a read-only checkout): try the next one
    }
  }
  throw new ShimLoadError(`cannot write the native shim into ${dirs.join(" or ")}`, { cause: lastError });
}

async function locateAndLoad(): Promise<ShimLibrary> {
  const explicit = envGet("VIRTIO_SHIM_PATH");
  if (explicit) return open(explicit);
  return open((await ensureShimBuilt()).path);
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
