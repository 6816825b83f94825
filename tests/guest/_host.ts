/** Guest harness, part: running host commands and small file helpers. */

export function defaultLog(message: string): void {
  console.error(`[guest] ${message}`);
}
export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}
/** Runs a command; a missing program gives code 127 instead of throwing. */
export async function exec(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string>; stdin?: Uint8Array } = {},
): Promise<Output> {
  try {
    const child = new Deno.Command(cmd, {
      args,
      cwd: opts.cwd,
      env: opts.env,
      stdin: opts.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (opts.stdin) {
      const w = child.stdin.getWriter();
      await w.write(opts.stdin);
      await w.close();
    }
    const out = await child.output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { code: 127, stdout: "", stderr: `${cmd}: not found` };
    throw e;
  }
}
export async function which(bin: string): Promise<string | undefined> {
  for (const dir of (Deno.env.get("PATH") ?? SBIN_PATH).split(":").concat(SBIN_PATH.split(":"))) {
    if (!dir) continue;
    try {
      const st = await Deno.stat(`${dir}/${bin}`);
      if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return `${dir}/${bin}`;
    } catch {
      // not here
    }
  }
  return undefined;
}
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
export function tail(text: string, n = 40): string {
  const lines = text.trimEnd().split("\n");
  return lines.slice(-n).join("\n");
}
export function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}
export async function sha256Hex(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}
export async function runBytes(cmd: string, args: string[]): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}
export const SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
