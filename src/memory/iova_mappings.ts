/**
 * The memory regions a kernel transport has mapped for its device, each at an
 * IOVA from an {@linkcode IovaAllocator}. The transport says how a mapping is
 * programmed (an IOTLB update, a VFIO DMA map) and revoked; this keeps the
 * book of what is mapped where, so that nothing is leaked or unmapped twice.
 *
 * @module
 */

import type { IovaAllocator } from "./iova_allocator.ts";
import type { SharedRegion } from "./region.ts";

/** Programs the device's translation of `region` at `iova`. */
export type ProgramMapping = (region: SharedRegion, iova: number) => void;
/** Removes the device's translation of `[iova, iova + size)`. */
export type RevokeMapping = (iova: number, size: number) => void;

/** The regions mapped for one device, and their IOVAs. */
export class IovaMappings {
  readonly #allocator: IovaAllocator;
  readonly #program: ProgramMapping;
  readonly #revoke: RevokeMapping;
  readonly #mapped = new Map<SharedRegion, { iova: number; size: number }>();

  /**
   * @param allocator where IOVAs come from
   * @param program makes the device see a region at an IOVA
   * @param revoke makes the device stop seeing an IOVA range
   */
  constructor(allocator: IovaAllocator, program: ProgramMapping, revoke: RevokeMapping) {
    this.#allocator = allocator;
    this.#program = program;
    this.#revoke = revoke;
  }

  /**
   * Maps `region` at a fresh IOVA and records it in `region.iova`. When
   * programming fails, the IOVA goes back to the allocator.
   *
   * @param region the region
   */
  map(region: SharedRegion): void {
    const iova = this.#allocator.alloc(region.size);
    try {
      this.#program(region, iova);
    } catch (e) {
      this.#allocator.free(iova, region.size);
      throw e;
    }
    region.iova = iova;
    this.#mapped.set(region, { iova, size: region.size });
  }

  /**
   * Unmaps `region` (nothing if it is not mapped). The IOVA is reused only
   * once the revocation succeeded: a range that may still be translated is
   * never handed out again.
   *
   * @param region the region
   */
  unmap(region: SharedRegion): void {
    const m = this.#mapped.get(region);
    if (!m) return;
    this.#mapped.delete(region);
    region.iova = -1;
    this.#revoke(m.iova, m.size);
    this.#allocator.free(m.iova, m.size);
  }

  /** The regions mapped now. */
  get regions(): SharedRegion[] {
    return [...this.#mapped.keys()];
  }
}
