// Every TypeScript example in README.md runs as written (each in its own process).
import assert from "node:assert/strict";
import { missing, removedOnSignal } from "./_support.ts";
import { RECENT_QSD } from "./_qsd_recent.ts";

const root = new URL("..", import.meta.url);
const readme = await Deno.readTextFile(new URL("README.md", root));
const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
/** Blocks that are a file of an example (```ts worker.ts): written beside each example under that name. */
const files = [...readme.matchAll(/```ts ([\w.-]+\.ts)\n([\s\S]*?)```/g)].map((m) => ({ name: m[1], code: m[2] }));

/** An example's code as a file one folder below the checkout's root (where it runs, beside its files). */
function oneDown(code: string): string {
  return code.replaceAll('"./mod.ts"', '"../mod.ts"').replaceAll('"./testing.ts"', '"../testing.ts"');
}

Deno.test("README has TypeScript examples", () => {
  assert.ok(blocks.length >= 3);
});

blocks.forEach((code, i) => {
  const needsDaemon = code.includes("QemuStorageDaemon");
  Deno.test({
    name: `README example ${i + 1} runs as written${needsDaemon ? " (qemu-storage-daemon)" : ""}`,
    ignore: needsDaemon && missing("qemu-storage-daemon"),
    fn: async () => {
      const dir = await Deno.makeTempDir({ dir: root.pathname, prefix: ".readme-example-" });
      const file = `${dir}/example.ts`;
      using _onSignal = removedOnSignal(dir);
      try {
        await Deno.writeTextFile(file, oneDown(code));
        for (const f of files) await Deno.writeTextFile(`${dir}/${f.name}`, oneDown(f.code));
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
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
});
