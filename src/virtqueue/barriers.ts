/**
 * Memory ordering between the driver and a device running on another CPU,
 * named by purpose as Linux names it (`virtio_wmb`, `virtio_rmb`,
 * `virtio_mb` in drivers/virtio/virtio_ring.c). Every access to a ring
 * index, flag word or event index that the other side reads or writes goes
 * through one of these; plain typed-array accesses are for the fields they
 * order (descriptors, ring entries, used elements, status bytes).
 *
 * What they rest on. The rings live in memory mapped into this process and
 * viewed through an ordinary (not shared) ArrayBuffer. ECMAScript defines
 * the memory model only for SharedArrayBuffer; on other buffers it promises
 * nothing about other threads. The guarantees here come from V8: it compiles
 * `Atomics.load`/`Atomics.store` on any integer typed array to the same
 * sequentially consistent machine instructions (on x86-64 a plain load and
 * an `xchg` store; on arm64 `ldar` and `stlr`), keeps them in program order
 * with the plain accesses around them (they are on its effect chain), and
 * never merges, splits or elides them. A device in C with
 * `smp_store_release`/`smp_load_acquire` or stronger pairs with them.
 *
 * @module
 */

/**
 * Publishes a 16-bit index or flag word to the device (`virtio_wmb()` then
 * the store): every earlier store — descriptors, ring entries, the request
 * header — is visible to the device before this one (store-store).
 *
 * @param view the 16-bit view of the ring
 * @param index the word
 * @param value the value
 */
export function publish16(view: Uint16Array, index: number, value: number): void {
  Atomics.store(view, index, value);
}

/**
 * Reads a 16-bit index or flag word the device publishes (the load then
 * `virtio_rmb()`): no later load — used elements, data, status bytes — is
 * satisfied before this one (load-load).
 *
 * @param view the 16-bit view of the ring
 * @param index the word
 * @returns the value
 */
export function observe16(view: Uint16Array, index: number): number {
  return Atomics.load(view, index);
}

/**
 * Reads what the device published, after our own publication
 * (`virtio_mb()` between the two): the load is not satisfied before the
 * store that precedes it becomes visible (store-load). Needed where
 * skipping a notification depends on it: reading the device's event index
 * or NO_NOTIFY flag after publishing the available index, and re-checking
 * the used index after re-enabling interrupts. Both accesses are
 * sequentially consistent, which orders them; a plain load here could read
 * a stale value and lose a wake-up.
 *
 * @param view the 16-bit view of the ring
 * @param index the word
 * @returns the value
 */
export function observe16AfterPublish(view: Uint16Array, index: number): number {
  return Atomics.load(view, index);
}

/**
 * {@linkcode observe16AfterPublish} for two adjacent 16-bit words read as one
 * 32-bit snapshot (a packed ring's event suppression: `off_wrap` and
 * `flags`), so that the two cannot come from different updates.
 *
 * @param view a 32-bit view of the ring
 * @param index the word
 * @returns the value
 */
export function observe32AfterPublish(view: Uint32Array, index: number): number {
  return Atomics.load(view, index);
}
