/**
 * `deno task build`: makes sure the native shim for the current `src/os/shim.c`
 * is built (into `build/shim/<hash>/`, where the loader looks), and does
 * nothing when it is up to date. Messages go to stderr; stdout stays empty.
 * No task needs it first: the loader builds the shim on first use.
 *
 * `--sanitize` builds `build/asan/libvirtio_shim.so` instead, with
 * AddressSanitizer and UndefinedBehaviorSanitizer (halting on the first
 * report); load it with `VIRTIO_SHIM_PATH` and libasan in `LD_PRELOAD`
 * (`deno task test:asan` does both).
 *
 * Exit status: 0 built or up to date, 1 when it cannot be built (one line
 * saying what to install).
 *
 * @module
 */

import { compileShim, ensureShimBuilt, SHIM_FILE_NAME } from "./loader.ts";

/** Extra compiler flags of the sanitizer build. */
const SANITIZER_CFLAGS = "-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all";

async function main(): Promise<number> {
  try {
    if (Deno.args.includes("--sanitize")) {
      const url = new URL(`../../build/asan/${SHIM_FILE_NAME}`, import.meta.url);
      if (url.protocol !== "file:") throw new Error("build.ts must run from a local checkout");
      const path = decodeURIComponent(url.pathname);
      Deno.env.set("VIRTIO_SHIM_CFLAGS", SANITIZER_CFLAGS);
      const cc = await compileShim(path);
      console.error(`built ${path} with ${cc} (${SANITIZER_CFLAGS})`);
    } else {
      const build = await ensureShimBuilt();
      if (build.compiler) console.error(`built ${build.path} with ${build.compiler}`);
    }
    return 0;
  } catch (e) {
    console.error(`error: ${(e as Error).message.split("\n")[0]}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main());
