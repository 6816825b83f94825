/**
 * Starting Deno as a child process of a test. Where the suite itself runs
 * under an emulator (CI's aarch64 stage: `qemu-aarch64-static`), a child must
 * run under it too: `$VIRTIO_DENO_LAUNCHER` names the emulator, and its
 * `QEMU_LD_PREFIX` is passed on even to a child with a cleared environment.
 */

/** `name` as an absolute path (found on this process's PATH): a child with its own PATH must still find it. */
function onPath(name: string): string {
  if (name.includes("/")) return name;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch {
      // not here
    }
  }
  return name;
}

const LAUNCHER = Deno.env.get("VIRTIO_DENO_LAUNCHER") ? onPath(Deno.env.get("VIRTIO_DENO_LAUNCHER")!) : undefined;
const QEMU_LD_PREFIX = Deno.env.get("QEMU_LD_PREFIX");

/** Whether the suite runs under an emulator (slow starts: a Deno child costs seconds). */
export const EMULATED: boolean = LAUNCHER !== undefined;

/**
 * A command that runs this Deno with `args` (through the emulator when there is one).
 *
 * @param args Deno's arguments (`run`, flags, the script…)
 * @param options as for `Deno.Command`
 * @returns the command
 */
export function denoCommand(args: string[], options: Deno.CommandOptions = {}): Deno.Command {
  const [program, ...rest] = denoArgv(args);
  return new Deno.Command(program, { ...options, env: denoEnv(options.env), args: rest });
}

/**
 * The argument vector that runs this Deno with `args` (through the emulator
 * when there is one), for a command that runs it in turn (`script`, `sh`).
 *
 * @param args Deno's arguments
 * @returns the program and its arguments
 */
export function denoArgv(args: string[]): string[] {
  return LAUNCHER === undefined ? [Deno.execPath(), ...args] : [LAUNCHER, Deno.execPath(), ...args];
}

/**
 * A child's environment: `env`, plus the emulator's `QEMU_LD_PREFIX` when
 * the suite runs under one (even a child with a cleared environment needs it).
 *
 * @param env the child's own variables
 * @returns them, with what the emulator needs
 */
export function denoEnv(env: Record<string, string> = {}): Record<string, string> {
  return LAUNCHER !== undefined && QEMU_LD_PREFIX ? { ...env, QEMU_LD_PREFIX } : env;
}

/** What a finished child printed, and how it ended. */
export interface DenoRun {
  /** Exit status. */
  readonly code: number;
  /** Its stdout. */
  readonly stdout: string;
  /** Its stderr. */
  readonly stderr: string;
}

/**
 * Runs Deno with `args` to the end.
 *
 * @param args Deno's arguments
 * @param options as for `Deno.Command` (stdout and stderr are piped)
 * @returns the exit status and the output
 */
export async function runDeno(args: string[], options: Deno.CommandOptions = {}): Promise<DenoRun> {
  const out = await denoCommand(args, { ...options, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}
