/** What tests need from the machine, and what to install for it (no side effects: the runner imports it). */

/** Something a test needs from the machine. */
export type Requirement =
  | "qemu-storage-daemon"
  | "qemu-storage-daemon-8.1"
  | "linux-headers"
  | "dpdk-vhost-blk"
  | "c-compiler";

/** What to install for each requirement (one line, for the skip summary). */
export const INSTALL_HINTS: Record<Requirement, string> = {
  "qemu-storage-daemon": "apt-get install qemu-system-common qemu-utils",
  "qemu-storage-daemon-8.1": "qemu-storage-daemon 8.1 or later, the first to announce a resize (on Debian 12 the " +
    "tests unpack qemu-utils from bookworm-backports into ~/.cache/virtio-deno: they need apt-get and the " +
    "Debian mirror; or set VIRTIO_QSD_RECENT to such a binary)",
  "linux-headers": "apt-get install linux-libc-dev (the kernel UAPI headers in /usr/include/linux)",
  "dpdk-vhost-blk": "apt-get install dpdk libdpdk-dev dpdk-doc make pkg-config patch gcc (DPDK's vhost_blk example)",
  "c-compiler": "apt-get install gcc (only the tests that build the native shim from source need one)",
};
