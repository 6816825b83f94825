/**
 * A reusable QEMU guest for tests that need real kernel devices (VDUSE
 * vhost-vdpa, VFIO), following the recipe in `/work/shared/GUEST.md`.
 *
 * - {@linkcode prepareGuest} makes sure the Debian packages are there, fetches
 *   Debian's newest `linux-image-6.12.*+deb12-amd64`, unpacks it into a cache
 *   folder outside `/tmp` (default `$HOME/.cache/virtio-deno/guest/`), runs
 *   `depmod` and builds a busybox initramfs with the 9p modules. Everything is
 *   cached by kernel version; a second call only checks the cache. When a piece
 *   cannot be had it resolves to `{ skip: reason }` rather than throwing.
 * - {@linkcode runInGuest} boots that kernel (KVM when `/dev/kvm` really
 *   works, else TCG), mounts the host root read-only over virtio-9p, chroots
 *   into it and runs a shell script there (so `/work/main` and `deno` are at
 *   their host paths), then powers off. It returns the script's exit status
 *   and the full console log.
 *
 * Inside the chroot: `/tmp`, `/run` and `/dev/shm` are tmpfs; proc, sysfs,
 * devtmpfs and devpts are mounted; `PATH` starts with the folder of the host's
 * `deno`; `HOME=/tmp/home`, `DENO_DIR=/tmp/deno-dir`,
 * `VIRTIO_SHIM_CACHE=/tmp/shim-cache` (where a shim built from source would go,
 * since the host root is read-only: the loader uses the prebuilt one); `GUEST_SHARE=/tmp/guest` is a
 * writable 9p folder shared with the host (see {@linkcode RunOptions.shareDir});
 * `GUEST_MODULES_DIR`/`GUEST_KERNEL_VERSION` are what `modprobe -d … -S …`
 * needs (the {@linkcode RunOptions.modules} option does that for you).
 *
 * Environment overrides: `VIRTIO_GUEST_CACHE` (cache folder),
 * `VIRTIO_GUEST_KERNEL` (a package name or kernel version such as
 * `6.12.117+deb12-amd64`), `VIRTIO_GUEST_ACCEL` (`auto`, `kvm`, `tcg`),
 * `VIRTIO_GUEST_ECHO=1` (stream every console line to stderr).
 *
 * @module
 */

import type { GuestAssets, GuestResult, GuestSkip, PrepareOptions, RunOptions } from "./_types.ts";
import { EXIT_MARKER, START_MARKER } from "./_types.ts";
import { defaultLog, exec, isRoot, tail, which } from "./_host.ts";
import { buildInitramfs, busyboxPath } from "./_initramfs.ts";
import { cachedKernels, fetchKernel, kernelCandidates } from "./_kernel.ts";
import { APT_ENV, ensurePackages, PACKAGES } from "./_packages.ts";
import { boot, bootId, kvmWorks } from "./_qemu.ts";

/** Whether a {@linkcode prepareGuest} result is a skip. */
export function isSkip(x: GuestAssets | GuestSkip): x is GuestSkip {
  return "skip" in x;
}
/**
 * Makes sure everything a guest boot needs is here (installing and
 * downloading what is missing), cached on disk by kernel version and in
 * memory per options (later calls in the same process share the first one's
 * promise, so call it from every test that needs a guest).
 *
 * @returns the assets, or `{ skip }` with a reason when they cannot be had
 */
export function prepareGuest(opts: PrepareOptions = {}): Promise<GuestAssets | GuestSkip> {
  const key = JSON.stringify([opts.cacheDir, opts.kernel, opts.install, opts.accel]);
  let p = prepared.get(key);
  if (!p) {
    p = prepareUncached(opts).catch((e) => {
      // missing permissions are a reason to skip; anything else is a bug to see
      if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
        return { skip: `the guest harness lacks a permission: ${e.message}` };
      }
      throw e;
    });
    prepared.set(key, p);
  }
  return p;
}
const prepared = new Map<string, Promise<GuestAssets | GuestSkip>>();
async function prepareUncached(opts: PrepareOptions): Promise<GuestAssets | GuestSkip> {
  const log = opts.log ?? defaultLog;
  const t0 = performance.now();
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
    return { skip: `the guest harness needs x86_64 Linux (this is ${Deno.build.arch} ${Deno.build.os})` };
  }
  const home = Deno.env.get("HOME");
  const cacheDir = opts.cacheDir ?? Deno.env.get("VIRTIO_GUEST_CACHE") ??
    (home ? `${home}/.cache/virtio-deno/guest` : undefined);
  if (!cacheDir) return { skip: "no cache folder: set HOME or VIRTIO_GUEST_CACHE" };
  if (!cacheDir.startsWith("/")) return { skip: `the guest cache folder must be absolute (${cacheDir})` };
  if (cacheDir === "/tmp" || cacheDir.startsWith("/tmp/")) {
    return { skip: `the guest cache folder ${cacheDir} is under /tmp, which the guest hides under a tmpfs` };
  }
  try {
    await Deno.mkdir(cacheDir, { recursive: true });
  } catch (e) {
    return { skip: `cannot create the guest cache folder ${cacheDir}: ${e instanceof Error ? e.message : e}` };
  }

  log("checking Debian packages…");
  const pkgProblem = await ensurePackages(opts.install ?? true, log);
  if (pkgProblem) return { skip: pkgProblem };
  for (const { pkg, bin } of PACKAGES) {
    if (!await which(bin)) return { skip: `${bin} is not on PATH although ${pkg} is installed` };
  }
  const qemu = (await which("qemu-system-x86_64"))!;
  const busybox = await busyboxPath();
  if (!busybox) return { skip: "busybox-static is installed but its /bin/busybox is missing" };

  // Which kernel: explicit, else the newest apt knows, else the newest cached one.
  let kdir: string | undefined;
  let kver: string | undefined;
  const wanted = opts.kernel ?? Deno.env.get("VIRTIO_GUEST_KERNEL");
  const cached = await cachedKernels(cacheDir);
  let candidates = await kernelCandidates();
  if (wanted) {
    const v = wanted.replace(/^linux-image-/, "").replace(/-unsigned$/, "");
    candidates = candidates.filter((c) => c.kver === v);
    if (candidates.length === 0) {
      candidates = [{ pkg: wanted.startsWith("linux-image-") ? wanted : `linux-image-${v}`, kver: v }];
    }
  }
  const newest = candidates[0]?.kver;
  if (newest && cached.includes(newest)) {
    kver = newest;
    kdir = `${cacheDir}/${kver}`;
  } else {
    const errors: string[] = [];
    const tryFetch = async (list: { pkg: string; kver: string }[]) => {
      const first = list[0]?.kver;
      for (const c of list.filter((c) => c.kver === first)) {
        try {
          kdir = await fetchKernel(cacheDir, c.pkg, c.kver, log);
          kver = c.kver;
          return;
        } catch (e) {
          errors.push(e instanceof Error ? e.message : String(e));
        }
      }
    };
    await tryFetch(candidates);
    if (!kdir && isRoot()) {
      log("kernel download failed; running apt-get update and retrying…");
      const u = await exec("apt-get", ["update", "-q"], { env: APT_ENV });
      if (u.code === 0) {
        let fresh = await kernelCandidates();
        if (wanted) fresh = fresh.filter((c) => c.kver === candidates[0]?.kver);
        if (fresh[0] && cached.includes(fresh[0].kver)) {
          kver = fresh[0].kver;
          kdir = `${cacheDir}/${kver}`;
        } else await tryFetch(fresh);
      } else errors.push(`apt-get update failed:\n${tail(u.stdout + u.stderr, 5)}`);
    }
    if (!kdir) {
      const fallback = wanted ? cached.find((v) => v === newest) : cached[0];
      if (fallback) {
        log(`could not fetch a newer kernel; using the cached ${fallback}`);
        kver = fallback;
        kdir = `${cacheDir}/${kver}`;
      } else {
        return {
          skip: candidates.length === 0
            ? "apt knows no linux-image-6.12.*+deb12-amd64 package (no bookworm-security in the sources?)"
            : `could not download a 6.12 kernel:\n${errors.join("\n")}`,
        };
      }
    }
  }
  if (!kdir || !kver) return { skip: "no kernel" };
  log(`kernel ${kver} (${kdir})`);

  let initrd: string;
  try {
    initrd = await buildInitramfs(kdir, kver, busybox, log);
  } catch (e) {
    return { skip: `could not build the initramfs: ${e instanceof Error ? e.message : e}` };
  }

  const want = opts.accel ?? (Deno.env.get("VIRTIO_GUEST_ACCEL") as PrepareOptions["accel"]) ?? "auto";
  const accel = want === "tcg" ? "tcg" : want === "kvm" ? "kvm" : (await kvmWorks(qemu, cacheDir, log)) ? "kvm" : "tcg";
  log(`ready in ${((performance.now() - t0) / 1000).toFixed(1)} s (accelerator ${accel})`);
  return { kernelVersion: kver, kernel: `${kdir}/vmlinuz`, initrd, modulesDir: `${kdir}/root`, cacheDir, qemu, accel };
}
/**
 * Boots the guest, runs `options.script` inside the chroot of the host root,
 * powers off and reports. Never throws for guest-side failures: check `ok`
 * and attach `log` to the failure (see {@linkcode describeFailure}). When KVM
 * turns out not to work for this guest, the run is repeated under TCG (and
 * `assets.accel` becomes `"tcg"`).
 */
export async function runInGuest(assets: GuestAssets, options: RunOptions): Promise<GuestResult> {
  const log = options.log ?? defaultLog;
  const accel = options.accel ?? assets.accel;
  let result = await boot(assets, options, accel);
  if (result !== "kvm-failed" && bootPanicked(result)) {
    // Under TCG with two vCPUs the kernel now and then dies in early boot
    // patching its own text (an int3 from text_poke_bp in another vCPU's
    // path): QEMU's cross-modifying-code emulation, not the test. Nothing of
    // the script ran, so booting again hides nothing.
    log(`${options.name ?? "guest"}: the guest kernel panicked while booting, before the script ran; booting again`);
    result = await boot(assets, options, accel);
  }
  if (result !== "kvm-failed") return result;
  log(`${options.name ?? "guest"}: KVM failed to run the guest; repeating under TCG`);
  assets.accel = "tcg";
  await Deno.writeTextFile(`${assets.cacheDir}/kvm-probe.json`, JSON.stringify({ bootId: bootId(), ok: false }))
    .catch(() => {});
  const cpu = options.cpu?.startsWith("host") ? undefined : options.cpu;
  return await boot(assets, { ...options, cpu }, "tcg") as GuestResult;
}
/** Whether a run ended in a kernel panic before the guest reached its run script. */
function bootPanicked(result: GuestResult): boolean {
  return !result.ok && !result.log.includes(START_MARKER) && /Kernel panic/.test(result.log);
}

/** A failure message with the tail of the console log (all of it with `lines = Infinity`). */
export function describeFailure(result: GuestResult, what = "guest run", lines = 80): string {
  const why = result.timedOut ? "timed out" : `exited with ${result.exitCode ?? "no status (crashed?)"}`;
  return `${what} ${why}; console log${Number.isFinite(lines) ? ` (last ${lines} lines)` : ""}:\n` +
    tail(result.log, lines);
}

export { EXIT_MARKER };
export type { GuestAssets, GuestResult, GuestSkip, PrepareOptions, RunOptions };
