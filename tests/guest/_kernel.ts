/** Guest harness, part: Debian's 6.12 kernel, downloaded and unpacked into the cache, and module dependencies. */

import { exec, exists, tail } from "./_host.ts";
import { APT_ENV } from "./_packages.ts";

/** Kernel packages known to apt, newest first: `[package, kernel release]`. */
export async function kernelCandidates(): Promise<{ pkg: string; kver: string }[]> {
  const out = await exec("apt-cache", ["search", "--names-only", "^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64"]);
  if (out.code !== 0) return [];
  const found: { pkg: string; kver: string; patch: number; signed: boolean }[] = [];
  for (const line of out.stdout.split("\n")) {
    const m = /^(linux-image-(6\.12\.(\d+)\+deb12-amd64)(-unsigned)?) /.exec(line);
    if (m) found.push({ pkg: m[1], kver: m[2], patch: Number(m[3]), signed: m[4] === undefined });
  }
  found.sort((a, b) => b.patch - a.patch || Number(b.signed) - Number(a.signed));
  return found.map(({ pkg, kver }) => ({ pkg, kver }));
}
export async function cachedKernels(cacheDir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(cacheDir)) {
      if (e.isDirectory && await exists(`${cacheDir}/${e.name}/.complete`)) out.push(e.name);
    }
  } catch {
    // no cache yet
  }
  const patch = (v: string) => Number(/^6\.12\.(\d+)/.exec(v)?.[1] ?? 0);
  return out.sort((a, b) => patch(b) - patch(a));
}
/** Downloads and unpacks one kernel package into `<cacheDir>/<kver>` (atomically). */
export async function fetchKernel(
  cacheDir: string,
  pkg: string,
  kver: string,
  log: (m: string) => void,
): Promise<string> {
  const dl = await Deno.makeTempDir({ dir: cacheDir, prefix: `.download-${kver}-` });
  const stage = `${cacheDir}/.stage-${kver}-${Deno.pid}`;
  try {
    log(`downloading ${pkg} with apt-get download…`);
    const out = await exec("apt-get", ["download", "-q", pkg], { cwd: dl, env: APT_ENV });
    if (out.code !== 0) throw new Error(`apt-get download ${pkg} failed:\n${tail(out.stdout + out.stderr, 10)}`);
    let deb: string | undefined;
    for await (const e of Deno.readDir(dl)) if (e.name.endsWith(".deb")) deb = `${dl}/${e.name}`;
    if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
    log(`unpacking ${deb.slice(deb.lastIndexOf("/") + 1)} with dpkg -x…`);
    await Deno.remove(stage, { recursive: true }).catch(() => {});
    await Deno.mkdir(`${stage}/root`, { recursive: true });
    const x = await exec("dpkg", ["-x", deb, `${stage}/root`]);
    if (x.code !== 0) throw new Error(`dpkg -x failed: ${x.stderr}`);
    // bookworm ships /lib/modules and /boot; accept /usr/lib/modules too.
    let modules = `${stage}/root/lib/modules/${kver}`;
    if (!await exists(modules) && await exists(`${stage}/root/usr/lib/modules/${kver}`)) {
      await Deno.mkdir(`${stage}/root/lib/modules`, { recursive: true });
      await Deno.rename(`${stage}/root/usr/lib/modules/${kver}`, modules);
    }
    if (!await exists(modules)) throw new Error(`${pkg} has no lib/modules/${kver}`);
    const vmlinuz = `${stage}/root/boot/vmlinuz-${kver}`;
    if (!await exists(vmlinuz)) throw new Error(`${pkg} has no boot/vmlinuz-${kver}`);
    await Deno.rename(vmlinuz, `${stage}/vmlinuz`);
    log(`depmod -b … ${kver}…`);
    const d = await exec("depmod", ["-b", `${stage}/root`, kver]);
    if (d.code !== 0) throw new Error(`depmod failed: ${d.stderr}`);
    modules = `${stage}/root/lib/modules/${kver}`;
    if (!await exists(`${modules}/modules.dep.bin`)) throw new Error("depmod wrote no modules.dep.bin");
    await Deno.writeTextFile(`${stage}/.complete`, `${pkg}\n`);
    const final = `${cacheDir}/${kver}`;
    try {
      await Deno.rename(stage, final);
    } catch (e) {
      // another process finished first: use theirs
      if (!await exists(`${final}/.complete`)) throw e;
      await Deno.remove(stage, { recursive: true }).catch(() => {});
    }
    return final;
  } finally {
    await Deno.remove(dl, { recursive: true }).catch(() => {});
    await Deno.remove(stage, { recursive: true }).catch(() => {});
  }
}
/** The modules to put into the initramfs, dependencies first, as paths relative to the modules folder. */
export async function moduleClosure(modulesRoot: string, names: string[]): Promise<string[]> {
  const norm = (s: string) => s.replaceAll("-", "_");
  const builtin = new Set<string>();
  try {
    for (const line of (await Deno.readTextFile(`${modulesRoot}/modules.builtin`)).split("\n")) {
      const base = line.slice(line.lastIndexOf("/") + 1).replace(/\.ko$/, "");
      if (base) builtin.add(norm(base));
    }
  } catch {
    // none
  }
  const deps = new Map<string, { path: string; deps: string[] }>();
  const nameOf = (p: string) => norm(p.slice(p.lastIndexOf("/") + 1).replace(/\.ko(\.(xz|zst|gz))?$/, ""));
  for (const line of (await Deno.readTextFile(`${modulesRoot}/modules.dep`)).split("\n")) {
    const i = line.indexOf(":");
    if (i < 0) continue;
    const path = line.slice(0, i);
    deps.set(nameOf(path), { path, deps: line.slice(i + 1).trim().split(/\s+/).filter(Boolean).map(nameOf) });
  }
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    const n = norm(name);
    if (seen.has(n)) return;
    seen.add(n);
    if (builtin.has(n)) return;
    const entry = deps.get(n);
    if (!entry) throw new Error(`module ${name} is neither built in nor in modules.dep`);
    // modules.dep lists a module's dependencies with the ones to load last first
    for (const d of [...entry.deps].reverse()) visit(d);
    order.push(entry.path);
  };
  for (const n of names) visit(n);
  return order;
}
