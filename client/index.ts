/**
 * Client kit for futures-sidecar: create a future (MSC4140 2024-05 draft, `future_token`) or a Synapse delayed
 * event (`delay_id`) on the user's homeserver, delegate it to the sidecar with the participant's LiveKit access
 * token, read or revoke the delegation, and keep the future alive by itself while the sidecar cannot be reached.
 *
 * @example
 * ```ts
 * import { Homeserver, KeepAlive, SidecarClient } from './client/index.js';
 *
 * const hs = new Homeserver({ baseUrl: 'https://matrix.example.org', accessToken: matrixAccessToken });
 * const member = { type: 'org.matrix.msc3401.call.member', stateKey: `_${userId}_${deviceId}`, content: {} };
 * const future = await hs.createFuture({
 *   roomId, timeoutMs: 2 * 3600_000, onTimeout: member, actions: { leave: member, connection_lost: member },
 *   sendNow: { ...member, content: membershipContent },
 * });
 * const sidecar = new SidecarClient({ baseUrl: 'https://sfu.example.org/futures-sidecar', liveKitToken });
 * const keepAlive = new KeepAlive({ homeserver: hs, handle: future.handle, timeoutMs: 2 * 3600_000, sidecar });
 * await keepAlive.start();
 * ```
 *
 * @packageDocumentation
 */
export {
  FuturesKitError,
  HomeserverUnreachableError,
  HttpAnswerError,
  MatrixApiError,
  SidecarApiError,
  SidecarUnreachableError,
  UnexpectedResponseError,
} from './errors.js';
export {
  Homeserver,
  type CreateDelayedEventInput,
  type CreateFutureInput,
  type CreateStateFutureInput,
  type DelayedEventCreated,
  type Dialect,
  type EventTemplate,
  type FutureCreated,
  type FutureHandle,
  type HomeserverOptions,
} from './homeserver.js';
export {
  SidecarClient,
  TERMINAL_DELEGATION_STATES,
  type DelegationDetails,
  type DelegationRequest,
  type DelegationResult,
  type DelegationState,
  type DelegationSummary,
  type SidecarClientOptions,
} from './sidecar.js';
export { KeepAlive, type KeepAliveEvent, type KeepAliveMode, type KeepAliveOptions } from './keep-alive.js';
export { systemTimers, type FetchLike, type RetryOptions, type Timers, type TransportOptions } from './transport.js';
