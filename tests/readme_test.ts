// Every TypeScript example in README.md runs as written (each in its own process).
import assert from "node:assert/strict";
import { missing, removedOnSignal } from "./_support.ts";
import { RECENT_QSD } from "./_qsd_recent.ts";

const root = new URL("..", import.meta.url);
const readme = await Deno.readTextFile(new URL("README.md", root));
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);

Deno.test("README has TypeScript examples", () => {
  assert.ok(blocks.length >= 3);
});

blocks.forEach((code, i) => {
  const needsDaemon = code.includes("QemuStorageDaemon");
  Deno.test({
    name: `README example ${i + 1} runs as written${needsDaemon ? " (qemu-storage-daemon)" : ""}`,
    ignore: needsDaemon && missing("qemu-storage-daemon"),
    fn: async () => {
      const file = await Deno.makeTempFile({ dir: root.pathname, prefix: ".readme-example-", suffix: ".ts" });
      using _onSignal = removedOnSignal(file);
      try {
        await Deno.writeTextFile(file, code);
        // An example that names its daemon through $QSD gets one that announces resizes.
        const wantsRecent = code.includes('Deno.env.get("QSD")') && RECENT_QSD !== undefined;
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", file],
          env: wantsRecent ? { QSD: RECENT_QSD! } : {},
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
        assert.ok(out.success, `example ${i + 1} failed:\n${text}`);
        if (wantsRecent) assert.match(text, /capacity 67108864 -> 134217728/, `example ${i + 1}: the resize was seen`);
      } finally {
        await Deno.remove(file);
      }
    },
  });
});
