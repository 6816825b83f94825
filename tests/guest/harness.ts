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
 * `VIRTIO_SHIM_CACHE=/tmp/shim-cache` (the loader compiles the shim there with
 * `cc`, since the host root is read-only); `GUEST_SHARE=/tmp/guest` is a
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

/** What {@linkcode prepareGuest} produces: the pieces a boot needs. */
export interface GuestAssets {
  /** Kernel release, e.g. `6.12.117+deb12-amd64`. */
  kernelVersion: string;
  /** Path of the kernel image (bzImage). */
  kernel: string;
  /** Path of the gzip'd cpio initramfs. */
  initrd: string;
  /** Base folder for `modprobe -d` (holds `lib/modules/<kernelVersion>`); outside `/tmp`. */
  modulesDir: string;
  /** The cache folder everything lives in. */
  cacheDir: string;
  /** Path of `qemu-system-x86_64`. */
  qemu: string;
  /** The accelerator `runInGuest` uses by default ("kvm" only when a probe boot worked). */
  accel: "kvm" | "tcg";
}

/** Returned by {@linkcode prepareGuest} when the guest cannot be had here. */
export interface GuestSkip {
  /** Why, in words fit for a skipped-test message. */
  skip: string;
}

/** Options of {@linkcode prepareGuest}. */
export interface PrepareOptions {
  /** Cache folder (must be outside `/tmp`); default `$VIRTIO_GUEST_CACHE` or `$HOME/.cache/virtio-deno/guest`. */
  cacheDir?: string;
  /** Kernel package name or kernel release to use; default the newest `linux-image-6.12.*+deb12-amd64`. */
  kernel?: string;
  /** Install missing Debian packages with apt-get (only as root); default true. */
  install?: boolean;
  /** `auto` (default; `$VIRTIO_GUEST_ACCEL`), `kvm` or `tcg`. */
  accel?: "auto" | "kvm" | "tcg";
  /** Progress messages; default prints `[guest] …` to stderr. */
  log?: (message: string) => void;
}

/** Options of {@linkcode runInGuest}. */
export interface RunOptions {
  /**
   * Shell script run inside the chroot (by {@linkcode RunOptions.shell}); its exit status is the result's
   * `exitCode`. Start it with `set -e` to stop at the first failing command.
   */
  script: string;
  /**
   * Extra QEMU arguments (placed before the harness's own devices),
   * e.g. `["-machine", "q35", "-device", "intel-iommu"]`.
   */
  qemuArgs?: string[];
  /** Extra kernel command line, e.g. `"intel_iommu=on"`. */
  append?: string | string[];
  /** Modules to `modprobe` inside the guest before the script (e.g. `vduse`, `vhost_vdpa`, `vfio-pci`). */
  modules?: string[];
  /** Kill QEMU after this long; default 90 000 ms. */
  timeoutMs?: number;
  /** Guest memory in MiB; default 2048. */
  memoryMiB?: number;
  /** Guest CPUs; default 2. */
  smp?: number;
  /** Working folder of the script; default the current folder when it is not under `/tmp`, else `/`. */
  cwd?: string;
  /** Extra environment variables for the script. */
  env?: Record<string, string>;
  /** Shell that runs the script; default `/bin/sh`. */
  shell?: string;
  /**
   * A host folder shared read-write with the guest at `/tmp/guest` (`$GUEST_SHARE`), to pass files
   * either way; default a temporary folder removed after the run.
   */
  shareDir?: string;
  /** Overrides the accelerator chosen by {@linkcode prepareGuest}. */
  accel?: "kvm" | "tcg";
  /** QEMU `-cpu` model; default `host` under KVM, `max` under TCG. */
  cpu?: string;
  /**
   * Where the native shim comes from: `"host"` (default) compiles `src/os/shim.c` on the host into the cache
   * (see {@linkcode buildHostShim}) and sets `VIRTIO_SHIM_PATH` in the guest, because compiling it under TCG
   * takes several seconds more; `"guest"` leaves it to the loader inside the guest
   * (`VIRTIO_SHIM_CACHE=/tmp/shim-cache`).
   * An explicit `env.VIRTIO_SHIM_PATH` wins over both.
   */
  shim?: "host" | "guest";
  /**
   * 9p cache mode of the host root: `"loose"` (default) keeps what the guest read in its page cache, which makes
   * running `deno` 3–5× faster under TCG but may show stale content for host files changed during the run;
   * `"none"` always reads through. The `/tmp/guest` share is never cached.
   */
  rootCache?: "loose" | "none";
  /** Keep the kernel's `quiet` (default true); false shows the whole boot log. */
  quiet?: boolean;
  /** Stream each console line to stderr as it arrives; default `$VIRTIO_GUEST_ECHO === "1"`. */
  echo?: boolean;
  /** Called for each console line as it arrives. */
  onLine?: (line: string) => void;
  /** A label for messages; default `guest`. */
  name?: string;
  /** Progress messages; default prints `[guest] …` to stderr. */
  log?: (message: string) => void;
}

/** What {@linkcode runInGuest} returns. */
export interface GuestResult {
  /** The script exited 0 (and QEMU was not killed by the timeout). */
  ok: boolean;
  /** The script's exit status; null when the guest never reported one (crash, timeout). */
  exitCode: number | null;
  /** QEMU was killed because the timeout passed. */
  timedOut: boolean;
  /** The full serial console log followed by QEMU's stderr. */
  log: string;
  /** Wall time of the boot, start to QEMU exit. */
  durationMs: number;
  /** The accelerator used. */
  accel: "kvm" | "tcg";
  /** QEMU's own exit status. */
  qemuExitCode: number;
}

/** The line the guest prints after the script: `GUEST-EXIT <code>`. */
export const EXIT_MARKER = "GUEST-EXIT";

const PACKAGES: { pkg: string; bin: string }[] = [
  { pkg: "qemu-system-x86", bin: "qemu-system-x86_64" },
  { pkg: "busybox-static", bin: "busybox" },
  { pkg: "cpio", bin: "cpio" },
  { pkg: "kmod", bin: "depmod" },
  { pkg: "iproute2", bin: "vdpa" },
];

/** 9p modules the initramfs loads (plus their dependencies), in this order. */
const INITRAMFS_MODULES = ["netfs", "9pnet", "9pnet_virtio", "9p"];

const SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** The initramfs's `/init`: mount the host root over 9p, chroot, run, power off. */
const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /host /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
  echo "[init] FAILED: $*"
  echo "${EXIT_MARKER} 255"
  poweroff -f
  sleep 5
}
for m in $(cat /etc/initramfs-modules); do
  insmod /lib/initramfs-modules/$m.ko || fail "insmod $m"
done
cache=loose
for w in $(cat /proc/cmdline); do
  case "$w" in guest.rootcache=*) cache="\${w#guest.rootcache=}" ;; esac
done
mount -t 9p -o "trans=virtio,version=9p2000.L,ro,msize=512000,cache=$cache" host0 /host || fail "mount of the host root"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
mkdir -p /host/tmp/guest
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share0 /host/tmp/guest || fail "mount of the share folder"
env -i chroot /host /bin/sh /tmp/guest/.run.sh
code=$?
sync
echo "${EXIT_MARKER} $code"
poweroff -f
sleep 5
`;

function defaultLog(message: string): void {
  console.error(`[guest] ${message}`);
}

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command; a missing program gives code 127 instead of throwing. */
async function exec(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string>; stdin?: Uint8Array } = {},
): Promise<Output> {
  try {
    const child = new Deno.Command(cmd, {
      args,
      cwd: opts.cwd,
      env: opts.env,
      stdin: opts.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (opts.stdin) {
      const w = child.stdin.getWriter();
      await w.write(opts.stdin);
      await w.close();
    }
    const out = await child.output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { code: 127, stdout: "", stderr: `${cmd}: not found` };
    throw e;
  }
}

async function which(bin: string): Promise<string | undefined> {
  for (const dir of (Deno.env.get("PATH") ?? SBIN_PATH).split(":").concat(SBIN_PATH.split(":"))) {
    if (!dir) continue;
    try {
      const st = await Deno.stat(`${dir}/${bin}`);
      if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return `${dir}/${bin}`;
    } catch {
      // not here
    }
  }
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function tail(text: string, n = 40): string {
  const lines = text.trimEnd().split("\n");
  return lines.slice(-n).join("\n");
}

function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

async function packageInstalled(pkg: string): Promise<boolean> {
  const out = await exec("dpkg-query", ["-W", "-f=${Status}", pkg]);
  return out.code === 0 && out.stdout.includes("install ok installed");
}

const APT_ENV = { DEBIAN_FRONTEND: "noninteractive" };

async function ensurePackages(install: boolean, log: (m: string) => void): Promise<string | undefined> {
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

/** Kernel packages known to apt, newest first: `[package, kernel release]`. */
async function kernelCandidates(): Promise<{ pkg: string; kver: string }[]> {
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

async function cachedKernels(cacheDir: string): Promise<string[]> {
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
async function fetchKernel(cacheDir: string, pkg: string, kver: string, log: (m: string) => void): Promise<string> {
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
async function moduleClosure(modulesRoot: string, names: string[]): Promise<string[]> {
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

async function busyboxPath(): Promise<string | undefined> {
  const out = await exec("dpkg", ["-L", "busybox-static"]);
  const path = out.stdout.split("\n").find((l) => /\/bin\/busybox$/.test(l));
  if (path && await exists(path)) return path;
  return undefined;
}

async function sha256Hex(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function buildInitramfs(kdir: string, kver: string, busybox: string, log: (m: string) => void): Promise<string> {
  const modulesRoot = `${kdir}/root/lib/modules/${kver}`;
  const mods = await moduleClosure(modulesRoot, INITRAMFS_MODULES);
  const bb = await Deno.readFile(busybox);
  const key = await sha256Hex(`${INIT_SCRIPT}\n${mods.join("\n")}\n${await sha256Hex(bb)}`);
  const initrd = `${kdir}/initrd-${key}.gz`;
  if (await exists(initrd)) return initrd;
  log(`building initramfs (busybox + ${mods.map((m) => m.replace(/^.*\//, "")).join(", ")})…`);
  const stage = await Deno.makeTempDir({ prefix: "virtio-guest-initramfs-" });
  try {
    for (const d of ["bin", "sbin", "etc", "proc", "sys", "dev", "host", "lib/initramfs-modules"]) {
      await Deno.mkdir(`${stage}/${d}`, { recursive: true });
    }
    await Deno.writeFile(`${stage}/bin/busybox`, bb, { mode: 0o755 });
    await Deno.writeTextFile(`${stage}/init`, INIT_SCRIPT, { mode: 0o755 });
    const names: string[] = [];
    for (const rel of mods) {
      const name = rel.slice(rel.lastIndexOf("/") + 1).replace(/\.ko(\.(xz|zst|gz))?$/, "");
      const src = `${modulesRoot}/${rel}`;
      const dst = `${stage}/lib/initramfs-modules/${name}.ko`;
      let data: Uint8Array;
      if (rel.endsWith(".xz")) {
        data = await decompressWith(busybox, src);
      } else if (rel.endsWith(".zst")) {
        data = await runBytes("zstd", ["-dc", src]);
      } else if (rel.endsWith(".gz")) {
        data = await runBytes("gzip", ["-dc", src]);
      } else {
        data = await Deno.readFile(src);
      }
      await Deno.writeFile(dst, data);
      names.push(name);
    }
    await Deno.writeTextFile(`${stage}/etc/initramfs-modules`, names.join("\n") + "\n");
    const list = await exec("find", [".", "-mindepth", "1"], { cwd: stage });
    if (list.code !== 0) throw new Error(`find failed: ${list.stderr}`);
    const cpio = new Deno.Command("cpio", {
      args: ["-o", "-H", "newc", "--quiet", "-R", "0:0"],
      cwd: stage,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = cpio.stdin.getWriter();
    await w.write(new TextEncoder().encode(list.stdout));
    await w.close();
    const gz = cpio.stdout.pipeThrough(new CompressionStream("gzip"));
    const bytes = new Uint8Array(await new Response(gz).arrayBuffer());
    const status = await cpio.status;
    const err = await new Response(cpio.stderr).text();
    if (!status.success) throw new Error(`cpio failed: ${err}`);
    const tmp = `${initrd}.${Deno.pid}.tmp`;
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, initrd);
    return initrd;
  } finally {
    await Deno.remove(stage, { recursive: true }).catch(() => {});
  }
}

async function runBytes(cmd: string, args: string[]): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}

async function decompressWith(busybox: string, src: string): Promise<Uint8Array> {
  try {
    return await runBytes("xz", ["-dc", src]);
  } catch {
    return await runBytes(busybox, ["unxz", "-c", src]);
  }
}

function bootId(): string {
  try {
    return Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
  } catch {
    return "unknown";
  }
}

/**
 * Whether KVM really runs a guest: boots a 512-byte boot sector that writes to
 * isa-debug-exit (nested KVM here opens fine but then fails with "KVM internal
 * error"). Cached per host boot.
 */
async function kvmWorks(qemu: string, cacheDir: string, log: (m: string) => void): Promise<boolean> {
  try {
    const f = await Deno.open("/dev/kvm", { read: true, write: true });
    f.close();
  } catch {
    return false;
  }
  const stamp = `${cacheDir}/kvm-probe.json`;
  const id = bootId();
  try {
    const cached = JSON.parse(await Deno.readTextFile(stamp));
    if (cached.bootId === id && typeof cached.ok === "boolean") return cached.ok;
  } catch {
    // no probe yet
  }
  log("probing whether KVM works…");
  const sector = new Uint8Array(512);
  // mov al,0x31; out 0xf4,al; cli; hlt; jmp $-2
  sector.set([0xb0, 0x31, 0xe6, 0xf4, 0xfa, 0xf4, 0xeb, 0xfc]);
  sector[510] = 0x55;
  sector[511] = 0xaa;
  const img = await Deno.makeTempFile({ prefix: "kvm-probe-", suffix: ".img" });
  let ok = false;
  try {
    await Deno.writeFile(img, sector);
    const child = new Deno.Command(qemu, {
      args: [
        ...["-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "64", "-nodefaults", "-display", "none"],
        ...["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive", `file=${img},format=raw,if=ide`],
        ...["-no-reboot"],
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), 8000);
    const status = await child.status;
    clearTimeout(timer);
    ok = status.code === ((0x31 << 1) | 1);
  } catch {
    ok = false;
  } finally {
    await Deno.remove(img).catch(() => {});
  }
  log(ok ? "KVM works" : "KVM does not work here; using TCG");
  await Deno.writeTextFile(stamp, JSON.stringify({ bootId: id, ok })).catch(() => {});
  return ok;
}

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

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * Compiles the project's native shim (`src/os/shim.c`, with the loader's flags) on the host into
 * `<cacheDir>/shim/<hash>/libvirtio_shim.so`, once per source and flags, for `VIRTIO_SHIM_PATH` in a guest.
 *
 * @returns the path of the shared object
 */
export async function buildHostShim(assets: Pick<GuestAssets, "cacheDir">): Promise<string> {
  const loader = await import("../../src/os/loader.ts");
  const source = await Deno.readTextFile(new URL("../../src/os/shim.c", import.meta.url));
  const path = `${assets.cacheDir}/shim/${await loader.shimBuildHash(source)}/${loader.SHIM_FILE_NAME}`;
  if (!await exists(path)) await loader.compileShim(path, source);
  return path;
}

function runScript(assets: GuestAssets, opts: RunOptions, cwd: string, shimPath: string | undefined): string {
  const denoDir = Deno.execPath().slice(0, Deno.execPath().lastIndexOf("/"));
  const env: Record<string, string> = {
    PATH: `${denoDir}:${SBIN_PATH}`,
    HOME: "/tmp/home",
    DENO_DIR: "/tmp/deno-dir",
    DENO_NO_UPDATE_CHECK: "1",
    NO_COLOR: "1",
    TERM: "dumb",
    LANG: "C.UTF-8",
    VIRTIO_SHIM_CACHE: "/tmp/shim-cache",
    GUEST_SHARE: "/tmp/guest",
    GUEST_MODULES_DIR: assets.modulesDir,
    GUEST_KERNEL_VERSION: assets.kernelVersion,
    ...(shimPath ? { VIRTIO_SHIM_PATH: shimPath } : {}),
    ...opts.env,
  };
  const lines = ["# generated by tests/guest/harness.ts"];
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad environment variable name ${k}`);
    lines.push(`export ${k}=${shellQuote(v)}`);
  }
  lines.push('mkdir -p "$HOME" "$DENO_DIR"');
  for (const m of opts.modules ?? []) {
    lines.push(
      `modprobe -d "$GUEST_MODULES_DIR" -S "$GUEST_KERNEL_VERSION" ${shellQuote(m)} || ` +
        `{ echo "[guest] modprobe ${m} failed"; exit 254; }`,
    );
  }
  lines.push(`cd ${shellQuote(cwd)} || exit 253`);
  lines.push(`${shellQuote(opts.shell ?? "/bin/sh")} /tmp/guest/.script.sh`);
  lines.push("code=$?", 'echo "$code" > /tmp/guest/.exit-code', 'exit "$code"');
  return lines.join("\n") + "\n";
}

/** Messages on QEMU's stderr that mean KVM cannot run this guest (the run is then repeated under TCG). */
const KVM_FAILURE = /KVM internal error|emulation failure|failed to set MSR|kvm_[a-z_]+: Assertion/;

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
  const result = await boot(assets, options, accel);
  if (result !== "kvm-failed") return result;
  log(`${options.name ?? "guest"}: KVM failed to run the guest; repeating under TCG`);
  assets.accel = "tcg";
  await Deno.writeTextFile(`${assets.cacheDir}/kvm-probe.json`, JSON.stringify({ bootId: bootId(), ok: false }))
    .catch(() => {});
  const cpu = options.cpu?.startsWith("host") ? undefined : options.cpu;
  return await boot(assets, { ...options, cpu }, "tcg") as GuestResult;
}

async function boot(
  assets: GuestAssets,
  options: RunOptions,
  accel: "kvm" | "tcg",
): Promise<GuestResult | "kvm-failed"> {
  const log = options.log ?? defaultLog;
  const name = options.name ?? "guest";
  const timeoutMs = options.timeoutMs ?? 90_000;
  const echo = options.echo ?? Deno.env.get("VIRTIO_GUEST_ECHO") === "1";
  const hostCwd = Deno.cwd();
  const cwd = options.cwd ?? (hostCwd === "/tmp" || hostCwd.startsWith("/tmp/") ? "/" : hostCwd);
  const ownShare = options.shareDir === undefined;
  const share = options.shareDir ?? await Deno.makeTempDir({ prefix: "virtio-guest-share-" });
  await Deno.mkdir(share, { recursive: true });
  await Deno.writeTextFile(`${share}/.script.sh`, options.script);
  let shimPath: string | undefined;
  if ((options.shim ?? "host") === "host" && options.env?.VIRTIO_SHIM_PATH === undefined) {
    try {
      shimPath = await buildHostShim(assets);
    } catch (e) {
      log(`${name}: could not build the shim on the host (${e instanceof Error ? e.message : e}); the guest builds it`);
    }
  }
  await Deno.writeTextFile(`${share}/.run.sh`, runScript(assets, options, cwd, shimPath));
  await Deno.remove(`${share}/.exit-code`).catch(() => {});

  const append = [
    "console=ttyS0",
    "panic=-1",
    `guest.rootcache=${options.rootCache ?? "loose"}`,
    ...(options.quiet ?? true ? ["quiet"] : []),
    ...[options.append ?? []].flat(),
  ].join(" ");
  const cpu = options.cpu ?? (accel === "kvm" ? "host" : "max");
  const args = [
    ...["-accel", accel, "-cpu", cpu],
    ...["-smp", String(options.smp ?? 2), "-m", String(options.memoryMiB ?? 2048)],
    ...["-nodefaults", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"],
    ...["-kernel", assets.kernel, "-initrd", assets.initrd, "-append", append],
    ...(options.qemuArgs ?? []),
    ...["-virtfs", "local,path=/,mount_tag=host0,security_model=none,readonly=on,multidevs=remap"],
    ...["-virtfs", `local,path=${share},mount_tag=share0,security_model=none,multidevs=remap`],
  ];
  log(`${name}: booting ${assets.kernelVersion} (${accel}, timeout ${Math.round(timeoutMs / 1000)} s)…`);
  const t0 = performance.now();
  let console_ = "";
  let qemuStderr = "";
  let timedOut = false;
  let kvmFailed = false;
  let qemuExitCode = -1;
  let fileCode: number | null = null;
  try {
    const child = new Deno.Command(assets.qemu, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
    const kill = () => {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      log(`${name}: timeout after ${Math.round(timeoutMs / 1000)} s, killing QEMU`);
      kill();
    }, timeoutMs);
    const readOut = (async () => {
      let pending = "";
      const emit = (line: string) => {
        if (echo) console.error(`  ${name} ${((performance.now() - t0) / 1000).toFixed(1).padStart(5)} | ${line}`);
        options.onLine?.(line);
      };
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        const text = chunk.replaceAll("\r", "");
        console_ += text;
        pending += text;
        let i;
        while ((i = pending.indexOf("\n")) >= 0) {
          emit(pending.slice(0, i));
          pending = pending.slice(i + 1);
        }
      }
      if (pending) emit(pending);
    })();
    const readErr = (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        qemuStderr += chunk;
        if (echo) console.error(`  ${name} ! ${chunk.trimEnd()}`);
        // KVM's "internal error" leaves QEMU paused, not exited
        if (accel === "kvm" && !kvmFailed && KVM_FAILURE.test(qemuStderr)) {
          kvmFailed = true;
          kill();
        }
      }
    })();
    const status = await child.status;
    clearTimeout(timer);
    await Promise.all([readOut, readErr]);
    qemuExitCode = status.code;
  } finally {
    // read the exit-code file before the share folder goes
    try {
      const t = (await Deno.readTextFile(`${share}/.exit-code`)).trim();
      if (/^\d+$/.test(t)) fileCode = Number(t);
    } catch {
      // none written
    }
    if (ownShare) await Deno.remove(share, { recursive: true }).catch(() => {});
  }
  const durationMs = performance.now() - t0;
  const markers = [...console_.matchAll(new RegExp(`^${EXIT_MARKER} (\\d+)$`, "gm"))];
  const markerCode = markers.length > 0 ? Number(markers[markers.length - 1][1]) : null;
  if (kvmFailed && markerCode === null) return "kvm-failed";
  const exitCode = timedOut ? null : markerCode ?? fileCode;
  const fullLog = console_ + (qemuStderr ? `\n[qemu stderr]\n${qemuStderr}` : "") +
    `\n[qemu exited with ${qemuExitCode}${timedOut ? " after the timeout" : ""}]\n`;
  const ok = !timedOut && exitCode === 0;
  log(
    `${name}: ${ok ? "ok" : "FAILED"} in ${(durationMs / 1000).toFixed(1)} s ` +
      `(script exit ${exitCode ?? "none"}, qemu exit ${qemuExitCode}${timedOut ? ", timed out" : ""})`,
  );
  return { ok, exitCode, timedOut, log: fullLog, durationMs, accel, qemuExitCode };
}

/** A failure message with the tail of the console log (all of it with `lines = Infinity`). */
export function describeFailure(result: GuestResult, what = "guest run", lines = 80): string {
  const why = result.timedOut ? "timed out" : `exited with ${result.exitCode ?? "no status (crashed?)"}`;
  return `${what} ${why}; console log${Number.isFinite(lines) ? ` (last ${lines} lines)` : ""}:\n` +
    tail(result.log, lines);
}
