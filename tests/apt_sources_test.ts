// The package mirror comes from this machine's apt configuration only
// (tests/_apt_sources.ts): deb822 and one-line formats, disabled stanzas and
// other suites ignored; none configured, a reason instead of a host.
import assert from "node:assert/strict";
import { aptSources, backportsSource } from "./_apt_sources.ts";
import { tempDir } from "./_support.ts";

async function etcWith(files: Record<string, string>): Promise<AsyncDisposable & { path: string }> {
  const dir = await tempDir("virtio-apt-");
  await Deno.mkdir(`${dir.path}/sources.list.d`);
  for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir.path}/${name}`, text);
  return dir;
}

Deno.test("apt sources: deb822 stanzas and deb lines, with their suites and keyrings; disabled ones skipped", async () => {
  await using etc = await etcWith({
    "sources.list": "# a comment\ndeb [arch=amd64 signed-by=/k/one.gpg] http://mirror.example/debian bookworm main\n",
    "sources.list.d/debian.sources": [
      "Types: deb deb-src",
      "# http://snapshot.example/archive",
      "URIs: http://a.example/debian http://b.example/debian",
      "Suites: bookworm",
      "  bookworm-updates",
      "Components: main",
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg",
      "",
      "Types: deb",
      "URIs: http://off.example/debian",
      "Suites: trixie",
      "Enabled: no",
      "",
      "Types: deb-src",
      "URIs: http://src.example/debian",
      "Suites: bookworm",
    ].join("\n"),
    "sources.list.d/other.list.disabled": "deb http://never.example/x bookworm main\n",
  });
  assert.deepEqual(await aptSources(etc.path), [
    { uri: "http://mirror.example/debian", suites: ["bookworm"], signedBy: "/k/one.gpg" },
    {
      uri: "http://a.example/debian",
      suites: ["bookworm", "bookworm-updates"],
      signedBy: "/usr/share/keyrings/debian-archive-keyring.gpg",
    },
    {
      uri: "http://b.example/debian",
      suites: ["bookworm", "bookworm-updates"],
      signedBy: "/usr/share/keyrings/debian-archive-keyring.gpg",
    },
  ]);
  assert.equal(
    await backportsSource("bookworm", etc.path),
    "deb [signed-by=/k/one.gpg] http://mirror.example/debian bookworm-backports main",
  );
});

Deno.test("apt sources: none configured for the suite, the reason names the files (no fallback host)", async () => {
  await using etc = await etcWith({
    "sources.list.d/security.sources":
      "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n",
  });
  await assert.rejects(
    backportsSource("bookworm", etc.path),
    new RegExp(`apt sources \\(${etc.path}/sources.list, ${etc.path}/sources.list.d/\\) name no bookworm archive`),
  );
  await using empty = await etcWith({});
  assert.deepEqual(await aptSources(empty.path), []);
});
