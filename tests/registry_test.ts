// What a user of the package gets: the exact file set `deno publish --dry-run`
// lists, served over loopback HTTP, imported by URL into a scratch project with
// a fresh Deno cache and no C compiler on PATH.
import assert from "node:assert/strict";
import { missing, tempDir } from "./_support.ts";
import { runDeno } from "./_deno.ts";
import { QemuStorageDaemon } from "../testing.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** The files `deno publish --dry-run` would publish, relative to the checkout. */
async function publishedFiles(): Promise<string[]> {
  const r = await runDeno(["publish", "--dry-run", "--allow-dirty"], { cwd: ROOT, env: { NO_COLOR: "1" } });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const files = [...(r.stdout + r.stderr).matchAll(/^\s+file:\/\/(\S+) \(/gm)].map((m) => m[1].slice(ROOT.length));
  assert.ok(files.includes("mod.ts") && files.includes("src/os/prebuilt/manifest.ts"), files.join(" "));
  return files;
}

const TYPES: Record<string, string> = { ts: "application/typescript", json: "application/json" };

/** The README's "Testing your own code" example, with its imports turned into `base` URLs. */
async function readmeMockExample(base: string): Promise<string> {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const section = readme.slice(readme.indexOf("### Testing your own code"));
  const code = section.slice(section.indexOf("```ts\n") + 6, section.indexOf("```\n", section.indexOf("```ts\n") + 6));
  assert.match(code, /MockBlkDevice/);
  return code.replaceAll('"./mod.ts"', `"${base}/mod.ts"`).replaceAll('"./testing.ts"', `"${base}/testing.ts"`);
}

Deno.test({
  name:
    "registry: imported by URL from the published files, a real device runs with --allow-import and --allow-ffi alone, no compiler; the mock with --allow-import alone",
  ignore: missing("qemu-storage-daemon"),
  fn: async () => {
    const files = new Set(await publishedFiles());
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname.slice(1));
      if (!files.has(path)) return new Response("not published", { status: 404 });
      const type = TYPES[path.slice(path.lastIndexOf(".") + 1)] ?? "text/plain";
      return new Response(await Deno.readFile(`${ROOT}${path}`), { headers: { "content-type": type } });
    });
    try {
      const host = `127.0.0.1:${server.addr.port}`;
      const base = `http://${host}`;
      await using dir = await tempDir("virtio-registry-");
      await using qsd = await QemuStorageDaemon.start({ size: 16 << 20 });
      const env = { PATH: "/nonexistent", HOME: dir.path, DENO_DIR: `${dir.path}/deno-dir`, NO_COLOR: "1" };
      const run = async (name: string, code: string, flags: string[]) => {
        await Deno.writeTextFile(`${dir.path}/${name}`, code);
        return await runDeno(["run", "--no-lock", ...flags, `${dir.path}/${name}`], { env, clearEnv: true });
      };

      const device = `import { VirtioBlk } from "${base}/mod.ts";
await using blk = await VirtioBlk.connect({ transport: "vhost-user", path: ${JSON.stringify(qsd.socketPath)} });
const out = blk.allocBuffer(1 << 20);
for (let i = 0; i < out.length; i++) out[i] = (i * 13 + 1) & 0xff;
await blk.write(0, out);
const back = blk.allocBuffer(1 << 20);
await blk.read(0, back);
console.log("verified", back.every((b, i) => b === out[i]));
`;
      const real = await run("device.ts", device, [`--allow-import=${host}`, "--allow-ffi"]);
      assert.equal(real.code, 0, real.stdout + real.stderr);
      assert.match(real.stdout, /verified true/);

      const mock = await run("mock.ts", await readmeMockExample(base), [`--allow-import=${host}`]);
      assert.equal(mock.code, 0, mock.stdout + mock.stderr);
      assert.equal(mock.stdout.trim(), "7", "the README example's output");

      const denied = await run("device.ts", device, [`--allow-import=${host}`]);
      assert.notEqual(denied.code, 0);
      assert.match(denied.stderr, /PermissionError: .*needs --allow-ffi/);
      assert.doesNotMatch(denied.stderr, /NotCapable/);
    } finally {
      await server.shutdown();
    }
  },
});
