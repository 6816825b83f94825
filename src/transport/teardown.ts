/**
 * Closing a transport is a list of release steps that must all run: a step
 * that fails must not leave the fds and mappings after it open.
 *
 * @module
 */

/** Runs release steps, each even when an earlier one threw, and rethrows the first failure at the end. */
export class Teardown {
  #failed = false;
  #first: unknown;

  /**
   * Runs `step`, remembering what it throws.
   *
   * @param step a synchronous release step
   */
  run(step: () => unknown): void {
    try {
      step();
    } catch (e) {
      this.#note(e);
    }
  }

  /**
   * Awaits `step`, remembering what it throws or rejects with.
   *
   * @param step an asynchronous release step
   */
  async runAsync(step: () => Promise<unknown>): Promise<void> {
    try {
      await step();
    } catch (e) {
      this.#note(e);
    }
  }

  /** Throws the first failure of any step, if there was one. */
  finish(): void {
    if (this.#failed) throw this.#first;
  }

  #note(e: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#first = e;
  }
}
