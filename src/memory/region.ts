/**
 * Memory regions the device can reach.
 *
 * A {@linkcode MemfdRegion} is a memfd mapped once into this process; its
 * descriptor is what vhost-user and vhost-vdpa hand to the device side. A
 * {@linkcode HeapRegion} is an ordinary ArrayBuffer, for the in-process mock
 * device, which needs no native code and no permissions. Both hand callers
 * views with an ArrayBuffer of their own, detached when released, so a freed
 * buffer reads as empty on either.
 *
 * @module
 */

import { closeFd, memfdCreate, mmapShared, munmap, PAGE_SIZE, retireMapping, viewAt } from "../os/syscalls.ts";

/** Memory shared with the device. */
export interface SharedRegion {
  /** A name for diagnostics. */
  readonly name: string;
  /** Length in bytes. */
  readonly size: number;
  /** Process virtual address of byte 0 (0 for a heap region). */
  readonly addr: number;
  /** The memfd behind the region, or -1. The region owns it. */
  readonly fd: number;
  /**
   * The I/O virtual address of byte 0 as the device sees it, or -1 while
   * the region is not mapped for the device. Set by the transport.
   */
  iova: number;
  /** A view of the whole region, for the driver's own use (never handed to callers). */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** True once {@linkcode SharedRegion.close} has run. */
  readonly closed: boolean;
  /**
   * A view for a caller, over `[offset, offset + length)`. Where the region
   * allows it the view has an ArrayBuffer of its own, so that it cannot reach
   * outside its range and can be detached alone.
   */
  slice(offset: number, length: number): Uint8Array<ArrayBuffer>;
  /** Detaches a view made by {@linkcode SharedRegion.slice} (it reads as empty from now on). */
  release(view: Uint8Array<ArrayBuffer>): void;
  /**
   * The bytes at `[offset, offset + length)` as the device sees them: what
   * an in-process device (the mock) reads and writes. For memory mapped into
   * this process it is a view of {@linkcode SharedRegion.bytes}.
   */
  deviceBytes(offset: number, length: number): Uint8Array;
  /** Detaches every view, unmaps the memory and closes the descriptor. */
  close(): void;
  /**
   * Like {@linkcode SharedRegion.close}, but leaves zero-filled private
   * memory at the region's addresses (for memory another isolate may still
   * hold views of). Only for memory mapped into this process.
   */
  retire?(): void;
}

/**
 * Rounds `n` up to a multiple of `align` (a power of two).
 *
 * @param n the value
 * @param align the alignment
 * @returns the rounded value
 */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

function detach(buffer: ArrayBuffer): void {
  if (!buffer.detached) buffer.transfer(0);
}

/**
 * Memory mapped into this process, at `addr`: views handed to callers each
 * get their own ArrayBuffer over their range and are detached, with the
 * region's own view, when it lets go of the memory — so a stale view reads
 * as empty instead of touching memory that is gone. The subclasses say who
 * mapped it and what letting go means.
 */
export abstract class MappedRegion implements SharedRegion {
  /** A name for diagnostics. */
  readonly name: string;
  /** Length in bytes. */
  readonly size: number;
  /** Process virtual address of byte 0. */
  readonly addr: number;
  /** IOVA of byte 0 once mapped for the device, else -1. */
  iova: number;
  /** The whole region, for the driver's own use. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  readonly #views = new Set<ArrayBuffer>();
  #closed = false;

  /**
   * Takes a mapping and makes the region's own view of it.
   *
   * @param name for diagnostics
   * @param addr where it is mapped
   * @param size its length
   * @param iova where the device sees it (-1: not yet)
   */
  protected constructor(name: string, addr: number, size: number, iova: number) {
    this.name = name;
    this.addr = addr;
    this.size = size;
    this.iova = iova;
    this.bytes = new Uint8Array(viewAt(addr, size));
  }

  /** The descriptor behind the region, or -1. */
  abstract readonly fd: number;

  /** True once the region let go of the memory. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * A view over `[offset, offset + length)` with an ArrayBuffer of its own.
   *
   * @param offset where it starts
   * @param length its length
   * @returns the view
   */
  slice(offset: number, length: number): Uint8Array<ArrayBuffer> {
    if (this.#closed) throw new RangeError(`region ${this.name} is closed`);
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`[${offset}, +${length}) is outside region ${this.name}`);
    }
    const buffer = viewAt(this.addr + offset, length);
    this.#views.add(buffer);
    return new Uint8Array(buffer);
  }

  /**
   * Detaches a view made by {@linkcode MappedRegion.slice}.
   *
   * @param view the view
   */
  release(view: Uint8Array<ArrayBuffer>): void {
    if (this.#views.delete(view.buffer)) detach(view.buffer);
  }

  /**
   * The bytes as the device sees them (the region's own view).
   *
   * @param offset where they start
   * @param length how many
   * @returns a subarray of {@linkcode MappedRegion.bytes}
   */
  deviceBytes(offset: number, length: number): Uint8Array {
    return this.bytes.subarray(offset, offset + length);
  }

  /** Lets go of the memory (what that means is the subclass's). */
  abstract close(): void;

  /** Detaches every view, once; false when that was done before. */
  protected letGo(): boolean {
    if (this.#closed) return false;
    this.#closed = true;
    for (const b of this.#views) detach(b);
    this.#views.clear();
    detach(this.bytes.buffer);
    return true;
  }
}

/**
 * A memfd-backed region, mapped once (MAP_SHARED, read/write). Its
 * descriptor is what vhost-user and vhost-vdpa hand to the device side.
 */
export class MemfdRegion extends MappedRegion {
  #fd: number;

  /**
   * Creates and maps a region of at least `size` bytes (rounded up to a page).
   *
   * @param name shown in /proc/PID/fd as memfd:NAME
   * @param size the minimum length
   */
  constructor(name: string, size: number) {
    const length = alignUp(Math.max(size, 1), PAGE_SIZE);
    const fd = memfdCreate(name, length);
    let addr: number;
    try {
      addr = mmapShared(fd, length);
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    super(name, addr, length, -1);
    this.#fd = fd;
  }

  /** The memfd (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  /** Detaches every view, unmaps the memory and closes the descriptor. */
  close(): void {
    this.#release(false);
  }

  /**
   * Closes the region, but leaves zero-filled private memory at its
   * addresses instead of unmapping them: for memory a Worker may still hold
   * views of (one that did not let go in time). The memfd and what it held
   * are released; the address range stays taken until the process ends.
   */
  retire(): void {
    this.#release(true);
  }

  #release(retire: boolean): void {
    if (!this.letGo()) return;
    try {
      if (retire) retireMapping(this.addr, this.size);
      else munmap(this.addr, this.size);
    } finally {
      closeFd(this.#fd);
      this.#fd = -1;
    }
  }
}

/**
 * A region another isolate of this process mapped and owns (a queue handed
 * to a Worker: its rings and buffer memory). {@linkcode AttachedRegion.close}
 * detaches every view — after it nothing here can touch the memory — and
 * leaves the mapping to its owner.
 */
export class AttachedRegion extends MappedRegion {
  /** Always -1: the owner keeps the descriptor. */
  readonly fd: number = -1;

  /**
   * A region over memory another isolate mapped.
   *
   * @param name for diagnostics
   * @param addr where the owner mapped it
   * @param size its length
   * @param iova where the device sees it
   */
  constructor(name: string, addr: number, size: number, iova: number) {
    super(name, addr, size, iova);
  }

  /** Detaches every view (they read as empty from now on); the owner unmaps. */
  close(): void {
    this.letGo();
  }
}

/** A caller's view of a {@linkcode HeapRegion}: its own ArrayBuffer, standing in for `[offset, offset + length)`. */
interface HeapView {
  readonly offset: number;
  readonly length: number;
  readonly buffer: ArrayBuffer;
}

/**
 * A region in the JavaScript heap, for the mock device (which runs in this
 * process). It behaves as shared memory does for a caller: each view it
 * hands out has an ArrayBuffer of its own (so it cannot reach past its
 * range), starts with what that memory last held, is what the device reads
 * and writes while it lives, and reads as empty once released — its bytes
 * go back to the region, where the next view over them finds them, but the
 * old view never aliases a new one.
 */
export class HeapRegion implements SharedRegion {
  /** A name for diagnostics. */
  readonly name: string;
  /** Length in bytes. */
  readonly size: number;
  /** Always 0: heap memory has no stable address. */
  readonly addr: number = 0;
  /** Always -1: there is no descriptor. */
  readonly fd: number = -1;
  /** IOVA of byte 0 once mapped for the mock device, else -1. */
  iova: number = -1;
  /** The region's own bytes (outside live views), for the driver's own use. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  // Live views, sorted by offset (they never overlap: the pool hands out disjoint ranges).
  readonly #views: HeapView[] = [];
  #closed = false;

  /**
   * Creates the instance.
   *
   * @param name for diagnostics
   * @param size the length (rounded up to a page)
   */
  constructor(name: string, size: number) {
    this.name = name;
    this.size = alignUp(Math.max(size, 1), PAGE_SIZE);
    this.bytes = new Uint8Array(this.size);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Live caller views (0 means {@linkcode HeapRegion.bytes} is what the device sees everywhere). */
  get liveViews(): number {
    return this.#views.length;
  }

  /** Index of the first live view that ends after `offset`. */
  #search(offset: number): number {
    const v = this.#views;
    let lo = 0, hi = v.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (v[mid].offset + v[mid].length <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  slice(offset: number, length: number): Uint8Array<ArrayBuffer> {
    if (this.#closed) throw new RangeError(`region ${this.name} is closed`);
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`[${offset}, +${length}) is outside region ${this.name}`);
    }
    const i = this.#search(offset);
    const next = this.#views[i];
    if (next !== undefined && next.offset < offset + length) {
      throw new RangeError(`[${offset}, +${length}) overlaps a live view of region ${this.name}`);
    }
    const view = new Uint8Array(new ArrayBuffer(length));
    view.set(this.bytes.subarray(offset, offset + length));
    this.#views.splice(i, 0, { offset, length, buffer: view.buffer });
    return view;
  }

  release(view: Uint8Array<ArrayBuffer>): void {
    const i = this.#views.findIndex((v) => v.buffer === view.buffer);
    if (i < 0) return;
    const [v] = this.#views.splice(i, 1);
    // Its bytes stay in the memory, as they would in shared memory.
    this.bytes.set(new Uint8Array(v.buffer), v.offset);
    detach(v.buffer);
  }

  deviceBytes(offset: number, length: number): Uint8Array {
    if (this.#views.length > 0) {
      const v = this.#views[this.#search(offset)];
      if (v !== undefined && v.offset < offset + length) {
        if (offset >= v.offset && offset + length <= v.offset + v.length) {
          return new Uint8Array(v.buffer, offset - v.offset, length);
        }
        throw new RangeError(
          `[${offset}, +${length}) of heap region ${this.name} spans the edge of a caller's buffer`,
        );
      }
    }
    return this.bytes.subarray(offset, offset + length);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const v of this.#views) detach(v.buffer);
    this.#views.length = 0;
    detach(this.bytes.buffer);
  }
}
