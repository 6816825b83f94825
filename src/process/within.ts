/**
 * Waiting for something for a bounded time, with the timer released either
 * way (Deno's sanitizers, and a process that must not be kept alive by it).
 *
 * @module
 */

/**
 * `promise`'s value, or undefined when it has not settled after `ms`; a
 * rejection within `ms` rejects. The promise itself goes on.
 *
 * @example
 * ```ts ignore
 * const status = await within(child.status, 1000);
 * if (status === undefined) console.error("still running after 1 s");
 * ```
 *
 * @param promise what to wait for
 * @param ms how long
 * @returns its value, or undefined after `ms`
 */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}
