/** Guest harness, part: the busybox initramfs that mounts the host root over 9p and runs the script. */

import { exec, exists, runBytes, sha256Hex } from "./_host.ts";
import { moduleClosure } from "./_kernel.ts";
import { EXIT_MARKER } from "./_types.ts";

/** 9p modules the initramfs loads (plus their dependencies), in this order. */
export const INITRAMFS_MODULES = ["netfs", "9pnet", "9pnet_virtio", "9p"];
/** The initramfs's `/init`: mount the host root over 9p, chroot, run, power off. */
export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /host /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
  echo "[init] FAILED: $*"
  echo "${EXIT_MARKER} 255"
  poweroff -f
  sleep 5
}
for m in $(cat /etc/initramfs-modules); do
  insmod /lib/initramfs-modules/$m.ko || fail "insmod $m"
done
cache=loose
for w in $(cat /proc/cmdline); do
  case "$w" in guest.rootcache=*) cache="\${w#guest.rootcache=}" ;; esac
done
mount -t 9p -o "trans=virtio,version=9p2000.L,ro,msize=512000,cache=$cache" host0 /host || fail "mount of the host root"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
mkdir -p /host/tmp/guest
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 share0 /host/tmp/guest || fail "mount of the share folder"
env -i chroot /host /bin/sh /tmp/guest/.run.sh
code=$?
sync
echo "${EXIT_MARKER} $code"
poweroff -f
sleep 5
`;
export async function busyboxPath(): Promise<string | undefined> {
  const out = await exec("dpkg", ["-L", "busybox-static"]);
  const path = out.stdout.split("\n").find((l) => /\/bin\/busybox$/.test(l));
  if (path && await exists(path)) return path;
  return undefined;
}
export async function buildInitramfs(
  kdir: string,
  kver: string,
  busybox: string,
  log: (m: string) => void,
): Promise<string> {
  const modulesRoot = `${kdir}/root/lib/modules/${kver}`;
  const mods = await moduleClosure(modulesRoot, INITRAMFS_MODULES);
  const bb = await Deno.readFile(busybox);
  const key = await sha256Hex(`${INIT_SCRIPT}\n${mods.join("\n")}\n${await sha256Hex(bb)}`);
  const initrd = `${kdir}/initrd-${key}.gz`;
  if (await exists(initrd)) return initrd;
  log(`building initramfs (busybox + ${mods.map((m) => m.replace(/^.*\//, "")).join(", ")})…`);
  const stage = await Deno.makeTempDir({ prefix: "virtio-guest-initramfs-" });
  try {
    for (const d of ["bin", "sbin", "etc", "proc", "sys", "dev", "host", "lib/initramfs-modules"]) {
      await Deno.mkdir(`${stage}/${d}`, { recursive: true });
    }
    await Deno.writeFile(`${stage}/bin/busybox`, bb, { mode: 0o755 });
    await Deno.writeTextFile(`${stage}/init`, INIT_SCRIPT, { mode: 0o755 });
    const names: string[] = [];
    for (const rel of mods) {
      const name = rel.slice(rel.lastIndexOf("/") + 1).replace(/\.ko(\.(xz|zst|gz))?$/, "");
      const src = `${modulesRoot}/${rel}`;
      const dst = `${stage}/lib/initramfs-modules/${name}.ko`;
      let data: Uint8Array;
      if (rel.endsWith(".xz")) {
        data = await decompressWith(busybox, src);
      } else if (rel.endsWith(".zst")) {
        data = await runBytes("zstd", ["-dc", src]);
      } else if (rel.endsWith(".gz")) {
        data = await runBytes("gzip", ["-dc", src]);
      } else {
        data = await Deno.readFile(src);
      }
      await Deno.writeFile(dst, data);
      names.push(name);
    }
    await Deno.writeTextFile(`${stage}/etc/initramfs-modules`, names.join("\n") + "\n");
    const list = await exec("find", [".", "-mindepth", "1"], { cwd: stage });
    if (list.code !== 0) throw new Error(`find failed: ${list.stderr}`);
    const cpio = new Deno.Command("cpio", {
      args: ["-o", "-H", "newc", "--quiet", "-R", "0:0"],
      cwd: stage,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = cpio.stdin.getWriter();
    await w.write(new TextEncoder().encode(list.stdout));
    await w.close();
    const gz = cpio.stdout.pipeThrough(new CompressionStream("gzip"));
    const bytes = new Uint8Array(await new Response(gz).arrayBuffer());
    const status = await cpio.status;
    const err = await new Response(cpio.stderr).text();
    if (!status.success) throw new Error(`cpio failed: ${err}`);
    const tmp = `${initrd}.${Deno.pid}.tmp`;
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, initrd);
    return initrd;
  } finally {
    await Deno.remove(stage, { recursive: true }).catch(() => {});
  }
}
export async function decompressWith(busybox: string, src: string): Promise<Uint8Array> {
  try {
    return await runBytes("xz", ["-dc", src]);
  } catch {
    return await runBytes(busybox, ["unxz", "-c", src]);
  }
}
