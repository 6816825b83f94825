/**
 * The kernel transports do their work in synchronous ioctls behind the
 * Promise-returning `Transport` interface; this turns such a body
 * into a settled promise, a throw into a rejection.
 *
 * @module
 */

/**
 * Runs `body` now and returns its result as a promise: fulfilled with what it
 * returned, rejected with what it threw.
 *
 * @param body synchronous work
 * @returns the settled promise
 */
export function settle<T>(body: () => T): Promise<T> {
  try {
    return Promise.resolve(body());
  } catch (e) {
    return Promise.reject(e);
  }
}
