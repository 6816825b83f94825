/** Guest harness, part: the Debian packages a guest boot needs, installed when allowed. */

import { exec, isRoot, tail } from "./_host.ts";

export const PACKAGES: { pkg: string; bin: string }[] = [
  { pkg: "qemu-system-x86", bin: "qemu-system-x86_64" },
  { pkg: "busybox-static", bin: "busybox" },
  { pkg: "cpio", bin: "cpio" },
  { pkg: "kmod", bin: "depmod" },
  { pkg: "iproute2", bin: "vdpa" },
];
export async function packageInstalled(pkg: string): Promise<boolean> {
  const out = await exec("dpkg-query", ["-W", "-f=${Status}", pkg]);
  return out.code === 0 && out.stdout.includes("install ok installed");
}
export const APT_ENV = { DEBIAN_FRONTEND: "noninteractive" };
export async function ensurePackages(install: boolean, log: (m: string) => void): Promise<string | undefined> {
  const missing: string[] = [];
  for (const { pkg } of PACKAGES) {
    if (!await packageInstalled(pkg)) missing.push(pkg);
  }
  if (missing.length === 0) return undefined;
  if (!install) return `missing Debian packages ${missing.join(", ")} (installation disabled)`;
  if (!isRoot()) return `missing Debian packages ${missing.join(", ")} (not root, cannot apt-get install them)`;
  log(`installing ${missing.join(" ")} with apt-get…`);
  const args = ["install", "-y", "-q", "--no-install-recommends", ...missing];
  let out = await exec("apt-get", args, { env: APT_ENV });
  if (out.code !== 0) {
    log("apt-get install failed; running apt-get update and retrying…");
    await exec("apt-get", ["update", "-q"], { env: APT_ENV });
    out = await exec("apt-get", args, { env: APT_ENV });
  }
  if (out.code !== 0) {
    return `could not install ${missing.join(", ")} with apt-get (exit ${out.code}):\n${
      tail(out.stdout + out.stderr, 15)
    }`;
  }
  return undefined;
}
