/**
 * The Worker of one `fio --numjobs` job (started by `fio_jobs.ts`): it
 * attaches the queue handle it is posted (`VirtioBlk.attach`), runs the
 * workload on that queue alone, and posts its progress once a second and its
 * measurements at the end. Nothing per request crosses threads.
 *
 * @module
 */

import { VirtioBlk } from "../blk/virtio_blk.ts";
import { measureFio } from "./fio.ts";
import type { FioJobMessage, FioJobStart } from "./fio_jobs.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(message: FioJobMessage): void;
};
const abort = new AbortController();

scope.onmessage = async (e: MessageEvent) => {
  if (e.data === "stop") {
    abort.abort();
    return;
  }
  const { handle, job } = e.data as FioJobStart;
  try {
    await using blk = await VirtioBlk.attach(handle);
    const m = await measureFio(blk, {
      ...job,
      signal: abort.signal,
      onProgress: (progress) => scope.postMessage({ progress }),
    });
    scope.postMessage({ result: m.result, read: m.histograms.read.data(), write: m.histograms.write.data() });
  } catch (err) {
    const x = err as Error & { code?: string };
    scope.postMessage({ error: { name: x.name, message: x.message, ...(x.code ? { code: x.code } : {}) } });
  }
};
