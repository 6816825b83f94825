/**
 * Asking before touching: the shim's loader looks at what Deno grants
 * (`Deno.permissions.querySync`, which never prompts) before it reads an
 * environment variable or a file, so a program run with `--allow-ffi` alone
 * never meets a `NotCapable` error from inside this library — only a
 * {@linkcode PermissionError} that names the flag.
 *
 * @module
 */

import { PermissionError, type PermissionFlag } from "../errors.ts";

/**
 * Whether a permission is granted now (false where Deno cannot say).
 *
 * @param desc what to ask about
 * @returns true when granted
 */
export function isGranted(desc: Deno.PermissionDescriptor): boolean {
  try {
    return Deno.permissions.querySync(desc).state === "granted";
  } catch {
    return false;
  }
}

/**
 * An environment variable's value when the program may read it and it is
 * set (an empty value counts as unset); undefined otherwise, without asking.
 *
 * @param name the variable
 * @returns its value, or undefined
 */
export function envIfGranted(name: string): string | undefined {
  if (!isGranted({ name: "env", variable: name })) return undefined;
  return Deno.env.get(name) || undefined;
}

const FLAG_OF: Readonly<Record<Deno.PermissionDescriptor["name"], PermissionFlag | undefined>> = {
  ffi: "--allow-ffi",
  read: "--allow-read",
  write: "--allow-write",
  run: "--allow-run",
  env: "--allow-env",
  net: "--allow-net",
  import: "--allow-import",
  sys: undefined,
};

/**
 * Throws a {@linkcode PermissionError} naming the flag unless `desc` is granted.
 *
 * @param desc the permission
 * @param what what needs it, for the message ("loading the native shim")
 */
export function requirePermission(desc: Deno.PermissionDescriptor, what: string): void {
  if (isGranted(desc)) return;
  const flag = FLAG_OF[desc.name] ?? "--allow-ffi";
  throw new PermissionError(flag, `${what} needs ${flag}: run deno with ${flag}`);
}

/**
 * Turns Deno's `NotCapable` (a permission that was not granted) into a
 * {@linkcode PermissionError} naming the flag; other errors pass through.
 *
 * @param e what was thrown
 * @param flag the flag the operation needs
 * @param what what needed it
 * @returns the error to throw
 */
export function permissionErrorOf(e: unknown, flag: PermissionFlag, what: string): unknown {
  if (e instanceof Deno.errors.NotCapable || (e instanceof Error && e.name === "NotCapable")) {
    return new PermissionError(flag, `${what} needs ${flag}: run deno with ${flag}`, { cause: e });
  }
  return e;
}
