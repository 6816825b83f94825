/**
 * Command-line parsing for the CLI and the demo: each command declares its
 * flags (with a default and a line of help each), and gets a help text, a
 * parser that refuses what it does not know, and value checks whose
 * messages say what is expected.
 *
 * Values may start with `-` (`--offset -1` is parsed, then refused as a
 * negative offset rather than taken for a flag).
 *
 * @module
 */

/** A usage error: printed as one line, exit status 2. */
export class UsageError extends Error {
  /** Always `"UsageError"`. */
  override readonly name = "UsageError";
}

/** One flag of a command. */
export interface FlagSpec {
  /** The name, without `--`. */
  readonly name: string;
  /** `"string"` takes a value; `"boolean"` does not. */
  readonly kind: "string" | "boolean";
  /** How the value is shown in help (`N`, `PATH`…). */
  readonly value?: string;
  /** The default, as shown in help. */
  readonly default?: string;
  /** One line of help. */
  readonly help: string;
}

/** A command: its flags, help and examples. */
export interface CommandSpec {
  /** The command's name (`info`, `read`…). */
  readonly name: string;
  /** How it is run, e.g. `deno task read --path SOCKET --length N [flags]`. */
  readonly usage: string;
  /** What it does, a few lines. */
  readonly description: string;
  /** Its flags, in the order help lists them. */
  readonly flags: readonly FlagSpec[];
  /** Command lines that work as written. */
  readonly examples: readonly string[];
}

/** Parsed flags: a string or `true` per flag given. */
export type ParsedFlags = Record<string, string | true | undefined>;

/**
 * Parses `args` against `spec`: `--name value`, `--name=value`, boolean
 * `--name`, and `-h`/`--help` (returned as `help: true`).
 *
 * @param spec the command
 * @param args what follows the command name
 * @returns the flags given
 * @throws {UsageError} for an unknown flag, a missing value, a flag given twice or a stray argument
 */
export function parseFlags(spec: CommandSpec, args: readonly string[]): ParsedFlags {
  const byName = new Map(spec.flags.map((f) => [f.name, f]));
  const out: ParsedFlags = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "-h" || arg === "--help") {
      out.help = true;
      continue;
    }
    if (!arg.startsWith("--")) {
      throw new UsageError(`unexpected argument ${JSON.stringify(arg)} (flags start with --; see --help)`);
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const flag = byName.get(name);
    if (!flag) {
      throw new UsageError(`${spec.name} has no flag --${name} (see deno task ${spec.name} --help)`);
    }
    if (out[name] !== undefined) throw new UsageError(`--${name} is given twice`);
    if (flag.kind === "boolean") {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      out[name] = true;
    } else if (eq >= 0) {
      out[name] = arg.slice(eq + 1);
    } else {
      if (i + 1 >= args.length) throw new UsageError(`--${name} needs a value (${flag.value ?? "a value"})`);
      out[name] = args[++i];
    }
  }
  return out;
}

/**
 * The help text of a command: usage, description, every flag with its
 * default, and examples.
 *
 * @param spec the command
 * @returns the text
 */
export function formatHelp(spec: CommandSpec): string {
  const left = spec.flags.map((f) => `--${f.name}${f.kind === "string" ? ` ${f.value ?? "VALUE"}` : ""}`);
  const width = Math.max(...left.map((l) => l.length), 10) + 2;
  const lines = [`usage: ${spec.usage}`, "", spec.description, "", "flags:"];
  spec.flags.forEach((f, i) => {
    lines.push(`  ${left[i].padEnd(width)}${f.help}${f.default !== undefined ? ` (default: ${f.default})` : ""}`);
  });
  lines.push(`  ${"-h, --help".padEnd(width)}this text`);
  if (spec.examples.length > 0) lines.push("", "examples:", ...spec.examples.map((e) => `  ${e}`));
  return lines.join("\n");
}

const SIZE_UNITS: Record<string, number> = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/**
 * Parses a byte count: `4096`, `4k`, `1M`, `2g`, `16KiB` (powers of 1024).
 *
 * @param s the text
 * @param what the flag, for the message
 * @returns bytes (a non-negative safe integer)
 * @throws {UsageError} otherwise
 */
export function parseSize(s: string | true | undefined, what: string): number {
  const text = typeof s === "string" ? s.trim() : "";
  const m = /^(\d+)([kmgt]?)(i?b)?$/i.exec(text);
  if (!m) {
    const hint = text.startsWith("-") ? "a negative size" : `not a size: ${JSON.stringify(text)}`;
    throw new UsageError(`${what} must be a byte count such as 4096, 4k, 1M or 2G; got ${hint}`);
  }
  const n = Number(m[1]) * SIZE_UNITS[m[2].toLowerCase()];
  if (!Number.isSafeInteger(n)) throw new UsageError(`${what}: ${text} is too large`);
  return n;
}

/**
 * Parses an integer in `[min, max]`.
 *
 * @param s the text
 * @param what the flag, for the message
 * @param min the smallest value allowed
 * @param max the largest value allowed
 * @returns the integer
 * @throws {UsageError} otherwise
 */
export function parseInteger(s: string | true | undefined, what: string, min: number, max: number): number {
  const n = typeof s === "string" && /^-?\d+$/.test(s.trim()) ? Number(s) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`${what} must be a whole number from ${min} to ${max}, got ${JSON.stringify(s)}`);
  }
  return n;
}

/**
 * Parses a number of seconds.
 *
 * @param s the text
 * @param what the flag, for the message
 * @param allowZero whether 0 is allowed
 * @returns the seconds
 * @throws {UsageError} otherwise
 */
export function parseSeconds(s: string | true | undefined, what: string, allowZero: boolean): number {
  const n = typeof s === "string" && s.trim() !== "" ? Number(s) : NaN;
  if (!Number.isFinite(n) || n < 0 || (!allowZero && n === 0) || n > 1e7) {
    throw new UsageError(
      `${what} must be a number of seconds ${allowZero ? "from 0" : "greater than 0"} (e.g. 5 or 0.5), got ${
        JSON.stringify(s)
      }`,
    );
  }
  return n;
}

/**
 * Parses one of several words.
 *
 * @param s the text
 * @param what the flag, for the message
 * @param choices the words allowed
 * @returns the word
 * @throws {UsageError} otherwise
 */
export function parseChoice<T extends string>(s: string | true | undefined, what: string, choices: readonly T[]): T {
  if (typeof s === "string" && (choices as readonly string[]).includes(s)) return s as T;
  throw new UsageError(`${what} must be one of ${choices.join(", ")}, got ${JSON.stringify(s)}`);
}

/**
 * Parses a queue size: a power of two from 4 to 32768.
 *
 * @param s the text
 * @returns the size
 * @throws {UsageError} otherwise
 */
export function parseQueueSize(s: string | true | undefined): number {
  const n = typeof s === "string" && /^\d+$/.test(s.trim()) ? Number(s) : NaN;
  if (!(n >= 4 && n <= 32768 && (n & (n - 1)) === 0)) {
    throw new UsageError(`--queue-size must be a power of two from 4 to 32768 (e.g. 256), got ${JSON.stringify(s)}`);
  }
  return n;
}

/**
 * A path the user typed, resolved as they meant it: `deno task` runs the
 * command in the folder of `deno.json`, and says where the user was in
 * `INIT_CWD`; a relative path is taken from there.
 *
 * @param path the path as given
 * @returns the path to open
 */
export function userPath(path: string): string {
  if (path.startsWith("/")) return path;
  let from: string | undefined;
  try {
    from = Deno.env.get("INIT_CWD");
  } catch {
    from = undefined; // no --allow-env: relative to the process's own folder
  }
  return from ? `${from.replace(/\/$/, "")}/${path}` : path;
}
