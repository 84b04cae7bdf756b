/**
 * The application-service registration a homeserver needs to put us behind it (contract section 8, facts section
 * 6.1): with the keys Synapse actually reads (`io.element.msc4512.*`, `io.element.msc4502.scopes`), not the stable
 * names lk-jwt-service's README shows and Synapse ignores.
 */
import { randomBytes } from 'node:crypto';
import { stringify } from 'yaml';

/** The one prefix Synapse lets an application service claim for now (PR #19972). */
const PROXY_PREFIX = 'rtc/livekit';
/** MSC4502's unstable scope: `is_joined` for any room without joining it. */
const IS_JOINED_SCOPE = 'urn:matrix:client:io.element.msc4502:rooms:is_joined';

export interface RegistrationInput {
  /** Where the homeserver reaches us (proxied requests and its ping). */
  url: string;
  serverName: string;
  id?: string;
  senderLocalpart?: string;
  /** Our tokens when they exist already (LIVEKIT_AS_TOKEN / LIVEKIT_HS_TOKEN); fresh random ones otherwise. */
  asToken?: string;
  hsToken?: string;
}

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const freshToken = () => randomBytes(32).toString('base64url');

export function registrationDocument(input: RegistrationInput): Record<string, unknown> {
  return {
    id: input.id ?? 'futures-sidecar',
    // A string (not null) so that the homeserver can ping us; no event traffic is asked for (no rooms or aliases).
    url: input.url,
    as_token: input.asToken ?? freshToken(),
    hs_token: input.hsToken ?? freshToken(),
    sender_localpart: input.senderLocalpart ?? '_futures_sidecar',
    // Local users only, not exclusive: we act as them for their delayed events and ask about their membership.
    namespaces: { users: [{ exclusive: false, regex: `@.*:${escapeRegex(input.serverName)}` }], aliases: [], rooms: [] },
    // Calls as the user are not limited per IP (a sidecar serves every user of the homeserver from one address).
    rate_limited: false,
    'io.element.msc4512.proxy_prefix': PROXY_PREFIX,
    'io.element.msc4512.proxy_url': input.url,
    'io.element.msc4502.scopes': [IS_JOINED_SCOPE],
  };
}

export function registrationYaml(input: RegistrationInput): string {
  return stringify(registrationDocument(input));
}

export const REGISTRATION_USAGE = `Usage: futures-sidecar registration --url URL [--server-name NAME] [--id ID]
Prints an application-service registration file for the homeserver (Synapse: app_service_config_files, with
experimental_features msc4512_enabled and msc4502_enabled). URL is where the homeserver reaches this daemon. The
tokens are LIVEKIT_AS_TOKEN / LIVEKIT_HS_TOKEN when set, fresh random ones otherwise (then set them from the file,
or point LIVEKIT_AS_REGISTRATION_FILE at it). NAME defaults to LIVEKIT_HS_SERVER_NAME.`;

/** `registration` argv (after the word) and environment -> the input, or the problems. */
export function parseRegistrationArgs(argv: readonly string[], env: Record<string, string | undefined>): RegistrationInput | string[] {
  const flags: Record<string, string> = {};
  const problems: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const m = /^--(url|server-name|id)(?:=(.*))?$/.exec(arg);
    if (!m) {
      problems.push(`unknown argument ${JSON.stringify(arg)}`);
      continue;
    }
    const value = m[2] ?? argv[++i];
    if (value === undefined || value === '') problems.push(`--${m[1]} needs a value`);
    else flags[m[1]!] = value;
  }
  const url = flags.url;
  if (url === undefined) problems.push('--url is required (where the homeserver reaches this daemon, e.g. http://futures-sidecar:8089)');
  else if (!/^https?:\/\/[^/\s]+/i.test(url)) problems.push(`--url must be an http(s) URL, got ${JSON.stringify(url)}`);
  const serverName = flags['server-name'] ?? env.LIVEKIT_HS_SERVER_NAME?.trim();
  if (!serverName) problems.push('--server-name (or LIVEKIT_HS_SERVER_NAME) is required: the registration covers that server\'s users');
  if (problems.length) return problems;
  const asToken = env.LIVEKIT_AS_TOKEN?.trim();
  const hsToken = env.LIVEKIT_HS_TOKEN?.trim();
  return {
    url: url!.replace(/\/+$/, ''),
    serverName: serverName!,
    ...(flags.id ? { id: flags.id } : {}),
    ...(asToken ? { asToken } : {}),
    ...(hsToken ? { hsToken } : {}),
  };
}
