/**
 * The Matrix steps shared by lk-jwt-service's routes (`/delegate_delayed_leave`, `/get_token`, `/sfu/get`): which
 * servers we serve, who an OpenID token belongs to, and where a server's delayed-event calls may go. Each answers
 * with a value or null and logs why (never a token); the route turns null into its own error text.
 */
import type { Logger } from 'pino';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import { checkHomeserverUrl, type GuardPolicy } from '../homeserver/address-guard.js';
import { MatrixLookupError, MatrixResolver, parseServerName, type CsApiBase } from './matrix-resolver.js';

/** Is this Matrix server one we serve (`SIDECAR_HOMESERVERS`: a listed server name, or `*`)? Decided without I/O. */
export function isServerNameAllowed(serverName: string, config: Pick<Config, 'homeservers'>): boolean {
  if (!parseServerName(serverName)) return false;
  return config.homeservers.any || config.homeservers.serverNames.has(serverName);
}

/** The resolver every lk-jwt-service route shares, built from the configuration. */
export function matrixResolverFor(config: Config, clock?: Clock): MatrixResolver {
  return new MatrixResolver({
    federationOverrides: config.federationUrlOverrides,
    csApiOverrides: config.csApiUrlOverrides,
    allowPrivateAddresses: config.allowPrivateAddresses,
    listedServerNames: config.homeservers.serverNames,
    ...(clock ? { clock } : {}),
  });
}

/**
 * May delayed-event calls for a compat delegation go to this client-server API base URL? An operator's override is
 * trusted as an explicitly listed origin is (http and private addresses allowed): the operator chose it. A URL
 * discovered through `.well-known/matrix/client` comes from the homeserver's own web server, so it gets what `*`
 * gets: https unless http is allowed (--dev), and a public address unless private ones are allowed (--dev too).
 * Host names are checked again at every connection by the homeserver client's guarded lookup.
 */
export function csApiUrlRefusal(base: CsApiBase, config: Pick<Config, 'allowPrivateAddresses' | 'allowHttp'>): string | null {
  let origin: string;
  try {
    origin = new URL(base.url).origin;
  } catch {
    return 'not a URL';
  }
  const policy: GuardPolicy =
    base.how === 'override'
      ? { allow: { any: false, origins: new Set([origin]), serverNames: new Set() }, allowPrivateAddresses: config.allowPrivateAddresses, allowHttp: true }
      : { allow: { any: true, origins: new Set(), serverNames: new Set() }, allowPrivateAddresses: config.allowPrivateAddresses, allowHttp: config.allowHttp };
  return checkHomeserverUrl(base.url, policy);
}

/** The user ID the OpenID token belongs to (on `serverName`), or null when the homeserver does not vouch for it. */
export async function openIdUser(resolver: MatrixResolver, serverName: string, accessToken: string, log: Logger): Promise<string | null> {
  try {
    return await resolver.verifyOpenId(serverName, accessToken);
  } catch (err) {
    if (!(err instanceof MatrixLookupError)) throw err;
    log.info({ server_name: serverName, reason: err.reason }, 'OpenID token not verified');
    return null;
  }
}

/** Where this server's delayed-event calls go, or null when that cannot be found or may not be used. */
export async function usableCsApi(resolver: MatrixResolver, serverName: string, config: Pick<Config, 'allowPrivateAddresses' | 'allowHttp'>, log: Logger): Promise<CsApiBase | null> {
  let csApi: CsApiBase;
  try {
    csApi = await resolver.csApiBaseUrl(serverName);
  } catch (err) {
    if (!(err instanceof MatrixLookupError)) throw err;
    log.info({ server_name: serverName, reason: err.reason }, 'client-server API URL not resolved');
    return null;
  }
  const refused = csApiUrlRefusal(csApi, config);
  if (refused) {
    log.info({ server_name: serverName, reason: refused }, 'client-server API URL refused');
    return null;
  }
  return csApi;
}
