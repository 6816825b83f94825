/**
 * A qemu-storage-daemon that announces a resize to its vhost-user front-end
 * (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG; QEMU 8.1 and later — 7.2, Debian
 * 12's, changes the disk without a word and keeps its old capacity in its
 * config space). In order: `$VIRTIO_QSD_RECENT`, the system's binary when
 * it is recent enough, or Debian bookworm-backports' qemu-utils, downloaded
 * once with apt-get (from the mirror this machine's apt configuration names
 * for bookworm; none named, the tests are skipped) and unpacked (not
 * installed) under `~/.cache/virtio-deno/qsd-backports/` (12 MB). The
 * system's daemon stays what the other tests use.
 */

import { backportsSource } from "./_apt_sources.ts";
import { INSTALL_HINTS } from "./_requirements.ts";
import { removedOnSignal } from "./_support.ts";

const CACHE = `${Deno.env.get("HOME") ?? "/tmp"}/.cache/virtio-deno/qsd-backports`;
const BINARY = `${CACHE}/root/usr/bin/qemu-storage-daemon`;

/** The version a binary reports, or undefined when it does not run. */
export async function qsdVersion(binary: string): Promise<[number, number] | undefined> {
  try {
    const out = await new Deno.Command(binary, { args: ["--version"], stdout: "piped", stderr: "null" }).output();
    const m = /version (\d+)\.(\d+)/.exec(new TextDecoder().decode(out.stdout));
    return out.success && m ? [Number(m[1]), Number(m[2])] : undefined;
  } catch {
    return undefined;
  }
}

async function recentEnough(binary: string): Promise<boolean> {
  const v = await qsdVersion(binary);
  return v !== undefined && (v[0] > 8 || (v[0] === 8 && v[1] >= 1));
}

async function run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim().split("\n").pop()}`);
  }
}

/** Downloads and unpacks bookworm-backports' qemu-utils into the cache. */
async function fetchBackports(): Promise<void> {
  const osRelease = await Deno.readTextFile("/etc/os-release").catch(() => "");
  if (!/VERSION_CODENAME=bookworm/.test(osRelease)) throw new Error("not Debian 12 (bookworm)");
  const work = await Deno.makeTempDir({ prefix: "virtio-qsd-backports-" });
  using _onSignal = removedOnSignal(work);
  try {
    await Deno.mkdir(`${work}/lists/partial`, { recursive: true });
    await Deno.mkdir(`${work}/cache/archives/partial`, { recursive: true });
    await Deno.writeTextFile(`${work}/sources.list`, `${await backportsSource("bookworm")}\n`);
    const apt = [
      `-o`,
      `Dir::Etc::sourcelist=${work}/sources.list`,
      `-o`,
      `Dir::Etc::sourceparts=-`,
      `-o`,
      `Dir::State::Lists=${work}/lists`,
      `-o`,
      `Dir::Cache=${work}/cache`,
      `-o`,
      `Debug::NoLocking=1`,
      `-o`,
      `APT::Sandbox::User=root`,
      `-q`,
    ];
    await run("apt-get", [...apt, "update"]);
    await run("sh", ["-c", `cd '${work}' && apt-get ${apt.map((a) => `'${a}'`).join(" ")} download qemu-utils`]);
    const deb = [...Deno.readDirSync(work)].find((e) => e.name.startsWith("qemu-utils_") && e.name.endsWith(".deb"));
    if (!deb) throw new Error("apt-get download left no qemu-utils package");
    await Deno.remove(`${CACHE}/root`, { recursive: true }).catch(() => {});
    await Deno.mkdir(`${CACHE}/root`, { recursive: true });
    await run("dpkg-deb", ["-x", `${work}/${deb.name}`, `${CACHE}/root`]);
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** Finds (or fetches) a recent qemu-storage-daemon; the reason when there is none. */
async function find(): Promise<{ binary: string } | { why: string }> {
  // Without qemu-storage-daemon at all, nothing is fetched: install it first.
  if (await qsdVersion("qemu-storage-daemon") === undefined && !Deno.env.get("VIRTIO_QSD_RECENT")) {
    return { why: "no qemu-storage-daemon is installed" };
  }
  const env = Deno.env.get("VIRTIO_QSD_RECENT");
  if (env) return (await recentEnough(env)) ? { binary: env } : { why: `VIRTIO_QSD_RECENT=${env} is not 8.1 or later` };
  if (await recentEnough("qemu-storage-daemon")) return { binary: "qemu-storage-daemon" };
  if (await recentEnough(BINARY)) return { binary: BINARY };
  try {
    await fetchBackports();
  } catch (e) {
    return { why: `could not fetch qemu-utils from bookworm-backports: ${e instanceof Error ? e.message : e}` };
  }
  return (await recentEnough(BINARY))
    ? { binary: BINARY }
    : { why: `bookworm-backports' qemu-storage-daemon does not run here` };
}

const found = await find();

/** The binary of a qemu-storage-daemon that announces resizes, or undefined (see {@linkcode RECENT_QSD_WHY}). */
export const RECENT_QSD: string | undefined = "binary" in found ? found.binary : undefined;
/** Why there is none. */
export const RECENT_QSD_WHY: string | undefined = "why" in found ? found.why : undefined;

if (RECENT_QSD_WHY) {
  const msg = `qemu-storage-daemon 8.1+ not found (${RECENT_QSD_WHY}): SKIPPING the tests that need it (${
    INSTALL_HINTS["qemu-storage-daemon-8.1"]
  })`;
  if (Deno.env.get("VIRTIO_REQUIRE_ALL") === "1") throw new Error(msg);
  console.warn(`\n*** ${msg} ***\n`);
}
