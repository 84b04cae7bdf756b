/**
 * Decoding of Element Call's `/delegate_delayed_leave` body with lk-jwt-service's semantics (Go's `json.Decoder`
 * with `DisallowUnknownFields` into a struct, then a check for missing values): a body that Go cannot decode is
 * `M_NOT_JSON`, a decoded body with a value missing is `M_BAD_JSON`. As in Go, `null` is the zero value, i.e.
 * missing, and so is an empty string.
 */
import { matrixError } from '../errors.js';

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

type FieldType = 'string' | 'int' | { [field: string]: FieldType };

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
  if (!Buffer.isBuffer(raw) || raw.length === 0) throw notJson('The body must be a JSON object');
  let parsed: unknown;
  try {
    parsed = JSON.parse(utf8.decode(raw));
  } catch {
    throw notJson('The body is not valid JSON');
  }
  const req = decodeStruct(parsed, REQUEST, '') as unknown as DelayedLeaveRequest;
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
