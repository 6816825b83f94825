/**
 * A 4 KiB block's contents as a function of its number and a generation,
 * so that whoever reads it back — another thread, or the image file — can
 * tell which write it holds.
 */

/** Bytes of a block. */
export const BLOCK = 4096;

/**
 * Fills `buf` (one block) with the pattern of `block` at `gen`.
 *
 * @param buf the block's bytes
 * @param block its number on the device
 * @param gen which write this is (1, 2, …)
 */
export function fillBlock(buf: Uint8Array, block: number, gen: number): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, BLOCK / 4);
  let x = (Math.imul(block, 0x9e3779b1) ^ Math.imul(gen, 0x85ebca6b) ^ 0x27d4eb2f) >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
}

/**
 * Whether `buf` holds the pattern of `block` at `gen` (gen 0: never written, all zeroes).
 *
 * @param buf the block's bytes
 * @param block its number
 * @param gen the generation expected
 * @returns true when it does
 */
export function holdsBlock(buf: Uint8Array, block: number, gen: number): boolean {
  if (gen === 0) return buf.every((b) => b === 0);
  const want = new Uint8Array(BLOCK);
  fillBlock(want, block, gen);
  for (let i = 0; i < BLOCK; i++) if (buf[i] !== want[i]) return false;
  return true;
}

/**
 * `count` random block writes over `blocks` blocks from `first`, `depth` in
 * flight (never two on one block at once), through `write`; returns the
 * generation each block was left at.
 *
 * @param write writes one block (a buffer from the device's pool)
 * @param alloc the device's allocBuffer
 * @param first the first block of the range
 * @param blocks the range's length in blocks
 * @param count writes to make
 * @param depth writes in flight
 * @param seed the PRNG's seed
 * @returns the generation per block (0: never written)
 */
export async function randomBlockWrites(
  write: (offset: number, buf: Uint8Array<ArrayBuffer>) => Promise<void>,
  alloc: (size: number) => Uint8Array<ArrayBuffer>,
  first: number,
  blocks: number,
  count: number,
  depth: number,
  seed: number,
): Promise<Uint32Array> {
  const gens = new Uint32Array(blocks);
  const busy = new Uint8Array(blocks);
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % blocks;
  };
  let issued = 0;
  const lane = async () => {
    const buf = alloc(BLOCK);
    while (issued < count) {
      issued++;
      let b = next();
      while (busy[b]) b = next();
      busy[b] = 1;
      const gen = gens[b] + 1;
      fillBlock(buf, first + b, gen);
      await write((first + b) * BLOCK, buf);
      gens[b] = gen;
      busy[b] = 0;
    }
  };
  await Promise.all(Array.from({ length: depth }, lane));
  return gens;
}
