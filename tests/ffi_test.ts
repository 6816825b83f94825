import assert from "node:assert/strict";
import { loadShim } from "../src/os/loader.ts";
import { eventfd, eventfdSignal } from "../src/os/eventfd.ts";
import { closeFd } from "../src/os/syscalls.ts";
import { unixConnect } from "../src/os/unix_socket.ts";
import { Waker } from "../src/transport/waker.ts";

await loadShim();

Deno.test("waker: an eventfd signal wakes the event loop and names its token", async () => {
  const waker = await Waker.forQueues([]);
  const efd = eventfd();
  try {
    waker.watchEventfd(efd, 3);
    waker.watchEventfd(efd, 40); // same descriptor, second token: the waker holds its own duplicates
    let woke = false;
    const waiting = waker.wait().then(() => (woke = true));
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(woke, false, "nothing fired yet");
    eventfdSignal(efd);
    await waiting;
    assert.equal(woke, true, "the signal woke the wait");
    assert.equal(waker.hungUp, false);
  } finally {
    closeFd(efd); // closing our copy first is safe: the shim reads only its duplicates
    await waker.close();
  }
});

Deno.test("waker: a socket hang-up is seen without a system call", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s`;
  const listener = Deno.listen({ transport: "unix", path });
  const waker = await Waker.forQueues([]);
  const fd = unixConnect(path);
  assert.ok(fd >= 0);
  try {
    const peer = await listener.accept();
    waker.watchHangup(fd, 100);
    const waiting = waker.wait();
    assert.equal(waker.hungUp, false);
    peer.close();
    await waiting;
    assert.equal(waker.hungUp, true);
  } finally {
    closeFd(fd);
    listener.close();
    await waker.close();
    await Deno.remove(dir, { recursive: true });
  }
});
