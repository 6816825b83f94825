/**
 * `deno task build`: compiles `ffi/shim.c` into `build/libvirtio_shim.so`,
 * where the loader looks first (after `$VIRTIO_SHIM_PATH`).
 *
 * @module
 */

import { compileShim, projectShimPath } from "./loader.ts";

if (import.meta.main) {
  const out = projectShimPath();
  if (!out) throw new Error("build.ts must run from a local checkout");
  const cc = await compileShim(out);
  console.log(`built ${out} with ${cc}`);
}
