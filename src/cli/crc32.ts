/**
 * CRC-32 (IEEE 802.3, the polynomial of zlib and `cksum -o 3`), computed
 * incrementally with slicing-by-8 tables: `copy --verify` checks what went
 * through a pipe against what it reads back, where the source cannot be
 * read twice.
 *
 * @module
 */

const TABLES = (() => {
  const t = new Uint32Array(8 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    for (let s = 1; s < 8; s++) t[s * 256 + i] = (t[(s - 1) * 256 + i] >>> 8) ^ t[t[(s - 1) * 256 + i] & 0xff];
  }
  return t;
})();

/** An incremental CRC-32. */
export class Crc32 {
  #crc = 0xffffffff;

  /**
   * Adds bytes.
   *
   * @param bytes the data
   */
  update(bytes: Uint8Array): void {
    const t = TABLES;
    let c = this.#crc, i = 0;
    const n = bytes.byteLength;
    for (; i + 8 <= n; i += 8) {
      c ^= bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
      const hi = bytes[i + 4] | (bytes[i + 5] << 8) | (bytes[i + 6] << 16) | (bytes[i + 7] << 24);
      c = t[1792 + (c & 0xff)] ^ t[1536 + ((c >>> 8) & 0xff)] ^ t[1280 + ((c >>> 16) & 0xff)] ^ t[1024 + (c >>> 24)] ^
        t[768 + (hi & 0xff)] ^ t[512 + ((hi >>> 8) & 0xff)] ^ t[256 + ((hi >>> 16) & 0xff)] ^ t[hi >>> 24];
    }
    for (; i < n; i++) c = t[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    this.#crc = c;
  }

  /** The checksum of everything added so far. */
  get value(): number {
    return (this.#crc ^ 0xffffffff) >>> 0;
  }
}
