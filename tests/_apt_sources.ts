/**
 * The package sources this machine's apt is configured with, read from its
 * own files: `deb URI SUITE …` lines of `sources.list` and
 * `sources.list.d/*.list`, and the deb822 stanzas (`Types: deb`, `URIs:`,
 * `Suites:`, `Signed-By:`, `Enabled:`) of `sources.list.d/*.sources`. No
 * package host is named in this project: a machine whose apt names none
 * gets none, and what needs one is skipped with the reason.
 */

/** One source of packages. */
export interface AptSource {
  /** The archive's URI, as configured. */
  readonly uri: string;
  /** Its suites (`bookworm`, `bookworm-updates`…). */
  readonly suites: readonly string[];
  /** The keyring it is signed by, when the configuration names a file. */
  readonly signedBy?: string;
}

/** The fields of one deb822 stanza (comments dropped, continuation lines joined). */
function deb822Fields(stanza: string): Map<string, string> {
  const fields = new Map<string, string>();
  let last: string | undefined;
  for (const line of stanza.split("\n")) {
    if (line.startsWith("#")) continue;
    if (/^\s/.test(line) && last !== undefined) {
      fields.set(last, `${fields.get(last)} ${line.trim()}`);
      continue;
    }
    const m = /^([\w-]+):\s*(.*)$/.exec(line);
    if (m) fields.set(last = m[1].toLowerCase(), m[2].trim());
  }
  return fields;
}

/**
 * The sources configured under `etc`.
 *
 * @param etc apt's configuration folder
 * @returns every enabled `deb` source, in file order
 */
export async function aptSources(etc = "/etc/apt"): Promise<AptSource[]> {
  const parts: string[] = [];
  try {
    for (const e of Deno.readDirSync(`${etc}/sources.list.d`)) {
      if (e.name.endsWith(".list") || e.name.endsWith(".sources")) parts.push(`${etc}/sources.list.d/${e.name}`);
    }
  } catch {
    // no sources.list.d
  }
  const out: AptSource[] = [];
  for (const file of [`${etc}/sources.list`, ...parts.sort()]) {
    const text = await Deno.readTextFile(file).catch(() => "");
    if (file.endsWith(".sources")) {
      for (const stanza of text.split(/\n[ \t]*\n/)) {
        const f = deb822Fields(stanza);
        const types = (f.get("types") ?? "").split(/\s+/);
        if (!types.includes("deb") || /^(no|false)$/i.test(f.get("enabled") ?? "")) continue;
        const suites = (f.get("suites") ?? "").split(/\s+/).filter(Boolean);
        const signedBy = f.get("signed-by");
        for (const uri of (f.get("uris") ?? "").split(/\s+/).filter(Boolean)) {
          out.push({ uri, suites, ...(signedBy?.startsWith("/") ? { signedBy } : {}) });
        }
      }
    } else {
      for (const line of text.split("\n")) {
        const m = /^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)/.exec(line);
        if (!m) continue;
        const signedBy = /(?:^|\s)signed-by=(\S+)/.exec(m[1] ?? "")?.[1];
        out.push({ uri: m[2], suites: [m[3]], ...(signedBy ? { signedBy } : {}) });
      }
    }
  }
  return out;
}

/**
 * The `deb` line of `suite`'s backports on the archive this machine's apt
 * takes `suite` from.
 *
 * @param suite a Debian release's code name, e.g. `bookworm`
 * @param etc apt's configuration folder
 * @returns e.g. `deb [signed-by=…] URI bookworm-backports main`
 * @throws {Error} naming the files looked at, when none names that suite
 */
export async function backportsSource(suite: string, etc = "/etc/apt"): Promise<string> {
  const archive = (await aptSources(etc)).find((s) => s.suites.includes(suite));
  if (!archive) {
    throw new Error(
      `this machine's apt sources (${etc}/sources.list, ${etc}/sources.list.d/) name no ${suite} archive`,
    );
  }
  return `deb ${archive.signedBy ? `[signed-by=${archive.signedBy}] ` : ""}${archive.uri} ${suite}-backports main`;
}
