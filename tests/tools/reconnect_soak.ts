// `deno task soak` (second part): the reconnect soak — 60 s of random verified
// writes and reads, 2 queues x 32 deep, against a file-backed
// qemu-storage-daemon that is SIGKILLed 20 times and restarted after 0–500 ms.
// No request may reject; the image, read directly, must match every
// acknowledged write.
// `deno run -A tests/tools/reconnect_soak.ts [seconds] [kills] [qemu-storage-daemon|dpdk] [eventfd|poll]`
import { describeSoak, reconnectSoak, type ReconnectSoakOptions } from "../_reconnect_soak.ts";

const o: ReconnectSoakOptions = {
  seconds: Number(Deno.args[0] ?? 60),
  kills: Number(Deno.args[1] ?? 20),
  backend: (Deno.args[2] ?? "qemu-storage-daemon") as ReconnectSoakOptions["backend"],
  mode: (Deno.args[3] ?? "eventfd") as ReconnectSoakOptions["mode"],
};
const r = await reconnectSoak(o);
console.log(describeSoak(o, r));
if (r.errors.length || r.readMismatches || r.finalMismatches || r.kills !== o.kills || r.reconnects < 1) Deno.exit(1);
