/** Guest harness, part: the shapes the harness parts share (no imports, so no cycle). */

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

/** The line the guest prints once it has booted, before the run script starts. */
export const START_MARKER = "GUEST-BOOTED";

/** The line the guest prints after the script: `GUEST-EXIT <code>`. */
export const EXIT_MARKER = "GUEST-EXIT";
