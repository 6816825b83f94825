/**
 * Linux ioctl request numbers (`_IO`, `_IOR`, `_IOW`, `_IOWR` of
 * `<asm-generic/ioctl.h>`, the encoding x86_64 and arm64 share).
 *
 * @module
 */

const NRBITS = 8, TYPEBITS = 8, SIZEBITS = 14;
const NRSHIFT = 0, TYPESHIFT = NRSHIFT + NRBITS, SIZESHIFT = TYPESHIFT + TYPEBITS, DIRSHIFT = SIZESHIFT + SIZEBITS;
const NONE = 0, WRITE = 1, READ = 2;

function ioc(dir: number, type: number, nr: number, size: number): bigint {
  if (size >= 1 << SIZEBITS) throw new RangeError(`ioctl argument of ${size} bytes`);
  return (BigInt(dir) << BigInt(DIRSHIFT)) | (BigInt(size) << BigInt(SIZESHIFT)) | (BigInt(type) << BigInt(TYPESHIFT)) |
    (BigInt(nr) << BigInt(NRSHIFT));
}

/**
 * `_IO(type, nr)`.
 *
 * @param type the ioctl family
 * @param nr the number
 * @returns the request
 */
export function io(type: number, nr: number): bigint {
  return ioc(NONE, type, nr, 0);
}

/**
 * `_IOR(type, nr, size)`: the kernel writes `size` bytes.
 *
 * @param type the ioctl family
 * @param nr the number
 * @param size sizeof the argument
 * @returns the request
 */
export function ior(type: number, nr: number, size: number): bigint {
  return ioc(READ, type, nr, size);
}

/**
 * `_IOW(type, nr, size)`: the kernel reads `size` bytes.
 *
 * @param type the ioctl family
 * @param nr the number
 * @param size sizeof the argument
 * @returns the request
 */
export function iow(type: number, nr: number, size: number): bigint {
  return ioc(WRITE, type, nr, size);
}

/**
 * `_IOWR(type, nr, size)`.
 *
 * @param type the ioctl family
 * @param nr the number
 * @param size sizeof the argument
 * @returns the request
 */
export function iowr(type: number, nr: number, size: number): bigint {
  return ioc(READ | WRITE, type, nr, size);
}
