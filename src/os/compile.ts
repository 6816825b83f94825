/**
 * Building the native shim from source: the path for architectures without
 * a prebuilt shim, for shim development in a checkout, and for
 * `deno task build`. The default path (`loader.ts`) never comes here on
 * linux x86_64 and aarch64.
 *
 * Every build is keyed by a hash of `shim.c` and the compiler flags, so an
 * edited source is never served by a stale binary and an unchanged one is
 * never rebuilt. A build is looked for in, and compiled into, the first of:
 * `$VIRTIO_SHIM_CACHE` when set; else the checkout's `build/shim/` (when
 * this module is a local file) and then the user cache
 * (`$XDG_CACHE_HOME/virtio-deno` or `~/.cache/virtio-deno`). Compiling uses
 * `$CC`, `cc`, `gcc` or `clang`, and needs `--allow-read`, `--allow-write`,
 * `--allow-run` and `--allow-env`; a missing one is a
 * {@linkcode PermissionError} naming it.
 *
 * @module
 */

import { PermissionError, ShimLoadError } from "../errors.ts";
import { envIfGranted, isGranted, permissionErrorOf } from "./permissions.ts";

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

/**
 * The source of the shim: `shim.c` beside this module when it is a local
 * file the program may read (a checkout: edits take effect), else the copy
 * the package carries (`prebuilt/source.ts`, generated from the same file).
 *
 * @returns the C source
 */
export async function shimSource(): Promise<string> {
  const url = new URL("./shim.c", import.meta.url);
  if (url.protocol === "file:" && isGranted({ name: "read", path: url })) {
    try {
      return await Deno.readTextFile(url);
    } catch {
      // A package without the file: the carried copy below.
    }
  }
  return (await import("./prebuilt/source.ts")).SHIM_SOURCE;
}

function extraCflags(): string[] {
  return (envIfGranted("VIRTIO_SHIM_CFLAGS") ?? "").split(/\s+/).filter((s) => s !== "");
}

async function findCompiler(): Promise<string | undefined> {
  const candidates = [envIfGranted("CC"), "cc", "gcc", "clang"].filter((c) => c !== undefined) as string[];
  for (const cc of candidates) {
    try {
      const out = await new Deno.Command(cc, { args: ["--version"], stdout: "null", stderr: "null" }).output();
      if (out.success) return cc;
    } catch (e) {
      const p = permissionErrorOf(e, "--allow-run", "building the native shim from source (running a C compiler)");
      if (p instanceof PermissionError) throw p;
      // not installed: try the next one
    }
  }
  return undefined;
}

/**
 * Compiles C source into a shared object at `outPath` (atomically: a
 * temporary file renamed into place).
 *
 * @param outPath where the shared object goes
 * @param options the source (`shim.c` when omitted), the compiler (found when omitted) and the flags
 * @returns the compiler that was used
 */
export async function compileShim(
  outPath: string,
  options: { source?: string; compiler?: string; cflags?: readonly string[] } = {},
): Promise<string> {
  const cc = options.compiler ?? await findCompiler();
  if (cc === undefined) {
    throw new ShimLoadError(
      "virtio-deno found no C compiler ($CC, cc, gcc, clang) to build its native shim for this platform " +
        `(${Deno.build.target}; prebuilt shims cover x86_64 and aarch64 Linux with glibc): ` +
        "install one (Debian: apt-get install gcc), or set VIRTIO_SHIM_PATH to a libvirtio_shim.so built with `deno task build`",
    );
  }
  const src = options.source ?? await shimSource();
  const dir = outPath.slice(0, outPath.lastIndexOf("/")) || ".";
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw permissionErrorOf(e, "--allow-write", `building the native shim into ${dir}`);
  }
  const srcDir = await Deno.makeTempDir({ dir, prefix: ".src-" });
  const srcPath = `${srcDir}/shim.c`;
  const tmpOut = `${outPath}.${Deno.pid}.tmp`;
  try {
    await Deno.writeTextFile(srcPath, src);
    const out = await new Deno.Command(cc, {
      args: [...(options.cflags ?? [...SHIM_CFLAGS, ...extraCflags()]), "-o", tmpOut, srcPath],
      cwd: srcDir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new ShimLoadError(`${cc} failed to build the native shim:\n${new TextDecoder().decode(out.stderr)}`);
    }
    await Deno.rename(tmpOut, outPath);
  } finally {
    await Deno.remove(srcDir, { recursive: true }).catch(() => {});
    await Deno.remove(tmpOut).catch(() => {});
  }
  return cc;
}

/**
 * SHA-256 of bytes.
 *
 * @param bytes what to hash
 * @returns 64 hex digits
 */
export async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The key of a build: a hash of the shim's source and the compiler flags.
 *
 * @param source the C source
 * @returns 24 hex digits
 */
export async function shimBuildHash(source: string): Promise<string> {
  const data = new TextEncoder().encode(`${source}\n${SHIM_CFLAGS.join(" ")} ${extraCflags().join(" ")}`);
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
  const explicit = envIfGranted("VIRTIO_SHIM_CACHE");
  if (explicit) return [explicit];
  const dirs: string[] = [];
  const project = projectShimDir();
  if (project) dirs.push(project);
  const xdg = envIfGranted("XDG_CACHE_HOME");
  const home = envIfGranted("HOME");
  if (xdg) dirs.push(`${xdg}/virtio-deno`);
  else if (home) dirs.push(`${home}/.cache/virtio-deno`);
  return dirs;
}

function fileExists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch (e) {
    const p = permissionErrorOf(e, "--allow-read", `looking for a built native shim at ${path}`);
    if (p instanceof PermissionError) throw p;
    return false;
  }
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
 * @throws {PermissionError} when a permission it needs is missing
 */
export async function ensureShimBuilt(): Promise<ShimBuild> {
  const source = await shimSource();
  const hash = await shimBuildHash(source);
  const dirs = shimDirs();
  if (dirs.length === 0) {
    throw new PermissionError(
      "--allow-env",
      "building the native shim from source needs a cache folder: run deno with --allow-env (for $HOME), " +
        "or set VIRTIO_SHIM_CACHE, or VIRTIO_SHIM_PATH to a built libvirtio_shim.so",
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
      return { path, compiler: await compileShim(path, { source }) };
    } catch (e) {
      if (e instanceof ShimLoadError || e instanceof PermissionError) throw e; // the next folder will not help
      lastError = e; // a folder we may not write to (a read-only checkout): try the next one
    }
  }
  throw new ShimLoadError(`cannot write the native shim into ${dirs.join(" or ")}`, { cause: lastError });
}
