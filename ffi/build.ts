/**
 * `deno task build`: compiles `ffi/shim.c` into `build/libvirtio_shim.so`,
 * where the loader looks first (after `$VIRTIO_SHIM_PATH`).
 *
 * `--sanitize` builds `build/asan/libvirtio_shim.so` instead, with
 * AddressSanitizer and UndefinedBehaviorSanitizer (halting on the first
 * report); load it with `VIRTIO_SHIM_PATH` and libasan in `LD_PRELOAD`
 * (`deno task test:asan` does both).
 *
 * @module
 */

import { compileShim, projectShimPath, SHIM_FILE_NAME } from "./loader.ts";

/** Extra compiler flags of the sanitizer build. */
export const SANITIZER_CFLAGS = "-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all";

if (import.meta.main) {
  const out = projectShimPath();
  if (!out) throw new Error("build.ts must run from a local checkout");
  if (Deno.args.includes("--sanitize")) {
    const path = out.replace(SHIM_FILE_NAME, `asan/${SHIM_FILE_NAME}`);
    Deno.env.set("VIRTIO_SHIM_CFLAGS", SANITIZER_CFLAGS);
    const cc = await compileShim(path);
    console.log(`built ${path} with ${cc} (${SANITIZER_CFLAGS})`);
  } else {
    const cc = await compileShim(out);
    console.log(`built ${out} with ${cc}`);
  }
}
