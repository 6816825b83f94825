/**
 * Device registers in a mapped PCI BAR: accesses of exactly the given width
 * (volatile in the shim: never merged, split or elided). Every write is
 * preceded by a full fence — the names say so — so that the ring stores
 * before it are visible to the device before the register write that tells
 * it to look.
 *
 * @module
 */

import { requireShim } from "./loader.ts";

/**
 * Reads an 8-bit register.
 *
 * @param addr its process address
 * @returns the value
 */
export function mmioRead8(addr: bigint): number {
  return requireShim().vd_mmio_read8(addr);
}

/**
 * Reads a 16-bit register.
 *
 * @param addr its process address
 * @returns the value
 */
export function mmioRead16(addr: bigint): number {
  return requireShim().vd_mmio_read16(addr);
}

/**
 * Reads a 32-bit register.
 *
 * @param addr its process address
 * @returns the value
 */
export function mmioRead32(addr: bigint): number {
  return requireShim().vd_mmio_read32(addr);
}

/**
 * A full fence, then an 8-bit register write.
 *
 * @param addr its process address
 * @param value the value
 */
export function mmioFenceWrite8(addr: bigint, value: number): void {
  requireShim().vd_mmio_fence_write8(addr, value);
}

/**
 * A full fence, then a 16-bit register write.
 *
 * @param addr its process address
 * @param value the value
 */
export function mmioFenceWrite16(addr: bigint, value: number): void {
  requireShim().vd_mmio_fence_write16(addr, value);
}

/**
 * A full fence, then a 32-bit register write.
 *
 * @param addr its process address
 * @param value the value
 */
export function mmioFenceWrite32(addr: bigint, value: number): void {
  requireShim().vd_mmio_fence_write32(addr, value >>> 0);
}

/**
 * A doorbell: a function writing `value` to the 16-bit register at `addr`
 * after a full fence — one fast FFI call, the hot-path notify of virtio-pci.
 *
 * @param addr the notify register
 * @param value what to write (the queue index)
 * @returns the notifier
 */
export function doorbell16(addr: bigint, value: number): () => void {
  const write = requireShim().vd_mmio_fence_write16;
  return () => write(addr, value);
}
