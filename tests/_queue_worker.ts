/**
 * A Worker for tests/worker_queues_test.ts (and the guest tests): attaches
 * the queue handle it is posted and runs one job on it.
 *
 * - `{ job: "writes", handle, mode, first, blocks, count, depth, seed }`:
 *   random block writes, then every block read back and checked through the
 *   same queue; answers `{ gens, verified, mode, numQueues }`.
 * - `{ job: "flood", handle, mode, depth, first }`: writes with `depth` in
 *   flight (to blocks `first`… `first + depth - 1`) until they fail; answers `{ started: true }` once running, then
 *   `{ failures: [{ name, code, at }], later }` (`at`: Date.now() of each
 *   rejection; `later`: what a request made afterwards met).
 * - `{ job: "hold", handle }`: attaches, answers `{ attached: true }` and
 *   keeps the queue (for a test that terminates the Worker).
 */

import { VirtioBlk, type VirtioError } from "../mod.ts";
import { BLOCK, holdsBlock, randomBlockWrites } from "./_block_pattern.ts";

const post = (m: unknown) => (self as unknown as Worker).postMessage(m);

(self as unknown as { onmessage: (e: MessageEvent) => void }).onmessage = async (e: MessageEvent) => {
  const m = e.data;
  try {
    const blk = await VirtioBlk.attach(m.handle, m.mode ? { mode: m.mode } : {});
    if (m.job === "hold") {
      post({ attached: true });
      return;
    }
    if (m.job === "writes") {
      const gens = await randomBlockWrites(
        (off, buf) => blk.write(off, buf),
        (n) => blk.allocBuffer(n),
        m.first,
        m.blocks,
        m.count,
        m.depth,
        m.seed,
      );
      let verified = 0;
      const buf = blk.allocBuffer(BLOCK);
      for (let b = 0; b < m.blocks; b++) {
        await blk.read((m.first + b) * BLOCK, buf);
        if (!holdsBlock(buf, m.first + b, gens[b])) throw new Error(`block ${m.first + b} read back wrong`);
        verified++;
      }
      post({ gens, verified, mode: blk.mode, numQueues: blk.numQueues });
      await blk.close();
      return;
    }
    if (m.job === "flood") {
      const failures: { name: string; code: string; at: number }[] = [];
      const lane = async (i: number) => {
        const buf = blk.allocBuffer(BLOCK);
        for (;;) {
          try {
            await blk.write(((m.first ?? 0) + i) * BLOCK, buf);
          } catch (err) {
            failures.push({ name: (err as Error).name, code: (err as VirtioError).code, at: Date.now() });
            return;
          }
        }
      };
      const lanes = Array.from({ length: m.depth }, (_, i) => lane(i));
      post({ started: true });
      await Promise.all(lanes);
      const later = await blk.read(0, new Uint8Array(BLOCK)).then(() => "resolved", (err) => (err as Error).name);
      post({ failures, later });
      await blk.close();
      return;
    }
    throw new Error(`unknown job ${m.job}`);
  } catch (err) {
    post({ error: `${(err as Error).name}: ${(err as Error).message}` });
  }
};
