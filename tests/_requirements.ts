/** What tests need from the machine, and what to install for it (no side effects: the runner imports it). */

/** Something a test needs from the machine. */
export type Requirement = "qemu-storage-daemon" | "linux-headers";

/** What to install for each requirement (one line, for the skip summary). */
export const INSTALL_HINTS: Record<Requirement, string> = {
  "qemu-storage-daemon": "apt-get install qemu-system-common qemu-utils",
  "linux-headers": "apt-get install linux-libc-dev (the kernel UAPI headers in /usr/include/linux)",
};
