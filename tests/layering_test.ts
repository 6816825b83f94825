// The structure the folders promise, checked on the import graph:
//   demo.ts → entry points → src/cli → src/testing → src/blk → the Transport interface
//   (and connect.ts) ← src/transport → src/memory, src/virtqueue → src/os →
//   src/virtio, src/process, src/errors.ts
// An import may go down the layers or stay in its folder, never up or across;
// src/blk sees only the transport interface and connect.ts; only src/os calls
// the shim (`vd_*`); nothing outside tests/ imports from tests/.
import assert from "node:assert/strict";
import { removedOnSignal } from "./_support.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Each layer by path prefix, most specific first, with its rank (higher imports lower). */
const LAYERS: readonly [prefix: string, rank: number][] = [
  ["tests/", 100],
  ["bench/", 100],
  ["mod.ts", 90],
  ["testing.ts", 90],
  ["advanced.ts", 90],
  ["cli.ts", 90],
  ["demo.ts", 95], // an example program: a user of the entry points
  ["src/cli/", 80],
  ["src/testing/", 70],
  ["src/blk/", 60],
  ["src/transport/", 50],
  ["src/memory/", 40],
  ["src/virtqueue/", 40],
  ["src/os/", 20],
  ["src/virtio/", 10],
  ["src/process/", 10],
  ["src/errors.ts", 10],
];

function layerOf(path: string): { prefix: string; rank: number } {
  for (const [prefix, rank] of LAYERS) if (path === prefix || path.startsWith(prefix)) return { prefix, rank };
  throw new Error(`${path} belongs to no layer: add it to LAYERS`);
}

/**
 * The project's own entry points: the `exports` of deno.json and the scripts
 * its tasks run from the root (`demo.ts`). A `.ts` a user saves in the
 * checkout (a README example, say) is none of them, and not looked at.
 */
function entryPoints(): string[] {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`));
  const out = new Set<string>();
  for (const target of Object.values(config.exports as Record<string, string>)) out.add(target.replace(/^\.\//, ""));
  for (const task of Object.values(config.tasks as Record<string, string | { command: string }>)) {
    const command = typeof task === "string" ? task : task.command;
    for (const m of command.matchAll(/(?:^|\s)(?:\.\/)?([\w-]+\.ts)\b/g)) out.add(m[1]);
  }
  return [...out].filter((f) => !f.includes("/")).sort();
}

/** The TypeScript files under a folder of the project (src/, tests/, bench/), relative to the root. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(`${ROOT}${dir}`)) {
    const path = `${dir}${e.name}`;
    if (e.isDirectory) {
      if (!e.name.startsWith(".") && e.name !== "node_modules") out.push(...sources(`${path}/`));
    } else if (e.name.endsWith(".ts") && !e.name.startsWith(".")) {
      out.push(path);
    }
  }
  return out;
}

/** The relative imports of a file (static, re-exports and dynamic), resolved to root-relative paths. */
function importsOf(path: string): string[] {
  const text = Deno.readTextFileSync(`${ROOT}${path}`);
  const specs = [
    ...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+"([^"]+)"/gm),
    ...text.matchAll(/\bimport\(\s*"([^"]+)"\s*\)/g),
  ].map((m) => m[1]);
  return specs.filter((s) => s.startsWith(".")).map((s) =>
    new URL(s, new URL(path, `file://${ROOT}`)).pathname.slice(ROOT.length)
  );
}

/** The project's files: its entry points and everything under src/, tests/ and bench/. */
function projectFiles(): string[] {
  return [...entryPoints(), ...sources("src/"), ...sources("tests/"), ...sources("bench/")];
}

const files = projectFiles();

Deno.test("layering: every file belongs to a layer", () => {
  for (const f of files) layerOf(f);
  assert.ok(files.length > 50, `found ${files.length} files`);
  assert.deepEqual(entryPoints(), ["advanced.ts", "cli.ts", "demo.ts", "mod.ts", "testing.ts"]);
});

Deno.test("layering: a .ts a user saves in the checkout (a README example) is not the project's", async () => {
  const mine = `${ROOT}nc_ex5_layering_probe.ts`;
  using _onSignal = removedOnSignal(mine);
  await Deno.writeTextFile(mine, 'import { VirtioBlk } from "./mod.ts";\nconsole.log(VirtioBlk);\n');
  try {
    assert.throws(
      () => layerOf("nc_ex5_layering_probe.ts"),
      /belongs to no layer/,
      "it would fail the check if looked at",
    );
    const now = projectFiles();
    assert.ok(!now.includes("nc_ex5_layering_probe.ts"));
    for (const f of now) layerOf(f);
  } finally {
    await Deno.remove(mine);
  }
});

Deno.test("layering: imports go down the layers or stay in their folder, never up or across", () => {
  const bad: string[] = [];
  for (const from of files) {
    const a = layerOf(from);
    for (const to of importsOf(from)) {
      const b = layerOf(to);
      if (a.prefix === b.prefix || b.rank < a.rank) continue;
      bad.push(`${from} → ${to} (${b.rank >= a.rank ? "up or across" : ""})`);
    }
  }
  assert.deepEqual(bad, [], `imports against the layering:\n${bad.join("\n")}`);
});

Deno.test("layering: the device layer sees only the transport interface and connect.ts", () => {
  const allowed = new Set(["src/transport/transport.ts", "src/transport/connect.ts"]);
  const bad = files.filter((f) => f.startsWith("src/blk/")).flatMap((f) =>
    importsOf(f).filter((t) => t.startsWith("src/transport/") && !allowed.has(t)).map((t) => `${f} → ${t}`)
  );
  assert.deepEqual(bad, []);
});

Deno.test("layering: the virtqueue knows no transport and no device; mod.ts ships no test machinery", () => {
  const bad = [
    ...files.filter((f) => f.startsWith("src/virtqueue/")).flatMap((f) =>
      importsOf(f).filter((t) => !t.startsWith("src/virtqueue/") && t !== "src/errors.ts").map((t) => `${f} → ${t}`)
    ),
    ...importsOf("mod.ts").filter((t) => t.startsWith("src/testing/") || t.startsWith("src/cli/")).map((t) =>
      `mod.ts → ${t}`
    ),
  ];
  assert.deepEqual(bad, []);
});

Deno.test("layering: only src/os calls the shim", () => {
  const bad: string[] = [];
  for (const f of files) {
    if (f.startsWith("src/os/")) continue;
    const lines = Deno.readTextFileSync(`${ROOT}${f}`).split("\n");
    lines.forEach((l, i) => {
      if (/\bvd_[a-z0-9_]+/.test(l)) bad.push(`${f}:${i + 1}: ${l.trim()}`);
    });
  }
  assert.deepEqual(bad, [], `shim calls outside src/os:\n${bad.join("\n")}`);
});

Deno.test("layering: nothing outside tests/ imports from tests/", () => {
  const bad = files.filter((f) => !f.startsWith("tests/")).flatMap((f) =>
    importsOf(f).filter((t) => t.startsWith("tests/")).map((t) => `${f} → ${t}`)
  );
  assert.deepEqual(bad, []);
});

Deno.test("layering: the checker sees what it must (a wrong arrow is caught)", () => {
  // The rules above would be vacuous if the import scan found nothing.
  assert.ok(importsOf("src/blk/virtio_blk.ts").includes("src/transport/connect.ts"));
  assert.ok(importsOf("mod.ts").includes("src/blk/virtio_blk.ts"));
  const up = layerOf("src/transport/connect.ts").rank >= layerOf("src/blk/virtio_blk.ts").rank;
  assert.equal(up, false, "transport sits below blk");
});
