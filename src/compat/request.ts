/**
 * Decoding of Element Call's `/delegate_delayed_leave` body with lk-jwt-service's semantics (Go's `json.Decoder`
 * with `DisallowUnknownFields` into a struct, then a check for missing values): a body that Go cannot decode is
 * `M_NOT_JSON`, a decoded body with a value missing is `M_BAD_JSON`. As in Go, `null` is the zero value, i.e.
 * missing, and so is an empty string.
 */
import { MatrixError, matrixError } from '../errors.js';

export interface DelayedLeaveRequest {
  room_id: string;
  slot_id: string;
  openid_token: { access_token: string; token_type: string; matrix_server_name: string; expires_in: number };
  member: { id: string; claimed_user_id: string; claimed_device_id: string };
  delay_id: string;
  delay_timeout: number;
  /** Deprecated; never used to choose where we send (a client must not pick our target). */
  delay_cs_api_url: string;
}

/** `/get_token` is `/delegate_delayed_leave`'s shape with the delay fields optional (facts section 1.2). */
export type GetTokenRequest = DelayedLeaveRequest;

/** The legacy `/sfu/get` body (facts section 1.3). */
export interface SfuGetRequest {
  room: string;
  openid_token: DelayedLeaveRequest['openid_token'];
  device_id: string;
  delay_id: string;
  delay_timeout: number;
  delay_cs_api_url: string;
}

export type FieldType = 'string' | 'int' | { [field: string]: FieldType };

const OPENID_TOKEN: Record<string, FieldType> = { access_token: 'string', token_type: 'string', matrix_server_name: 'string', expires_in: 'int' };
const MEMBER: Record<string, FieldType> = { id: 'string', claimed_user_id: 'string', claimed_device_id: 'string' };
const REQUEST: Record<string, FieldType> = {
  room_id: 'string',
  slot_id: 'string',
  openid_token: OPENID_TOKEN,
  member: MEMBER,
  delay_id: 'string',
  delay_timeout: 'int',
  delay_cs_api_url: 'string',
};

export const SFU_GET_REQUEST: Record<string, FieldType> = {
  room: 'string',
  openid_token: OPENID_TOKEN,
  device_id: 'string',
  delay_id: 'string',
  delay_timeout: 'int',
  delay_cs_api_url: 'string',
};
export const GET_TOKEN_REQUEST = REQUEST;

/**
 * An integer field written with a fraction or an exponent (`8000.0`, `8e3`): Go and Rust refuse it, JSON.parse would
 * turn it into the integer. Outside a string a quote is never escaped, so `"name":` here can only be a key.
 */
const INT_WRITTEN_AS_FRACTION = /"(delay_timeout|expires_in)"\s*:\s*-?\d+(?:\.\d*|[eE])/;

const utf8 = new TextDecoder('utf-8', { fatal: true });

const notJson = (message: string) => matrixError('M_NOT_JSON', message);
const badJson = (message: string) => matrixError('M_BAD_JSON', message);

function shown(name: string): string {
  return JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}...` : name);
}

function decodeStruct(value: unknown, fields: Record<string, FieldType>, path: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, type] of Object.entries(fields)) out[name] = typeof type === 'object' ? decodeStruct(null, type, `${path}${name}.`) : type === 'int' ? 0 : '';
  if (value === null) return out;
  if (typeof value !== 'object' || Array.isArray(value)) throw notJson(`${path ? path.slice(0, -1) : 'the body'} must be a JSON object`);
  for (const [name, v] of Object.entries(value as Record<string, unknown>)) {
    const type = Object.hasOwn(fields, name) ? fields[name] : undefined;
    if (type === undefined) throw notJson(`unknown field ${shown(path + name)}`);
    if (v === null) continue;
    if (typeof type === 'object') out[name] = decodeStruct(v, type, `${path}${name}.`);
    else if (type === 'string') {
      if (typeof v !== 'string') throw notJson(`${path}${name} must be a string`);
      out[name] = v;
    } else {
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw notJson(`${path}${name} must be an integer`);
      out[name] = v;
    }
  }
  return out;
}

/**
 * Steps 1 and 2 of lk-jwt-service's checks, before any network call. Bodies that are not UTF-8 are refused as
 * `M_NOT_JSON` too: Go would keep the bytes and hash them differently from any JavaScript string, so no
 * LiveKit name derived from them could match.
 */
export function decodeDelayedLeaveRequest(raw: unknown): DelayedLeaveRequest {
  const req = decodeLkJwtBody<DelayedLeaveRequest>(raw, REQUEST);
  const missing: string[] = [];
  if (!req.room_id) missing.push('room_id');
  if (!req.slot_id) missing.push('slot_id');
  if (!req.openid_token.access_token) missing.push('openid_token.access_token');
  if (!req.openid_token.matrix_server_name) missing.push('openid_token.matrix_server_name');
  if (!req.member.id) missing.push('member.id');
  if (!req.member.claimed_user_id) missing.push('member.claimed_user_id');
  if (!req.member.claimed_device_id) missing.push('member.claimed_device_id');
  if (!req.delay_id) missing.push('delay_id');
  if (missing.length) throw badJson(`Missing ${missing.join(', ')}`);
  if (req.delay_timeout <= 0) throw badJson('delay_timeout must be a positive number of milliseconds');
  return req;
}

/**
 * Step 1 of every lk-jwt-service route: the body decoded into `fields` with absent and null values as zero values.
 * `message` replaces the detailed reason (lk-jwt-service's token routes say only "Error reading request").
 */
export function decodeLkJwtBody<T>(raw: unknown, fields: Record<string, FieldType>, message?: string): T {
  try {
    if (!Buffer.isBuffer(raw) || raw.length === 0) throw notJson('The body must be a JSON object');
    let text: string;
    let parsed: unknown;
    try {
      text = utf8.decode(raw);
      parsed = JSON.parse(text);
    } catch {
      throw notJson('The body is not valid JSON');
    }
    const fraction = INT_WRITTEN_AS_FRACTION.exec(text);
    if (fraction) throw notJson(`${fraction[1]} must be an integer`);
    return decodeStruct(parsed, fields, '') as unknown as T;
  } catch (err) {
    if (message !== undefined && err instanceof MatrixError) throw notJson(message);
    throw err;
  }
}
