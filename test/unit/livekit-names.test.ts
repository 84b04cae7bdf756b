import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  LEGACY_SLOT_ID,
  goJsonStringArray,
  legacyIdentity,
  legacyRoomName,
  liveKitIdentity,
  liveKitRoomName,
} from '../../src/compat/livekit-names.js';

/** The expected hash computed from a JSON text written out by hand, independently of the encoder under test. */
const hashOfText = (json: string): string => createHash('sha256').update(json, 'utf8').digest('base64').replace(/=+$/, '');

describe('LiveKit names (lk-jwt-service vectors)', () => {
  it('derives the room name of a slot', () => {
    expect(liveKitRoomName('!roomid:example.com', 'slot1234')).toBe('O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc');
  });

  it('derives the legacy room from the m.call#ROOM slot', () => {
    expect(LEGACY_SLOT_ID).toBe('m.call#ROOM');
    expect(liveKitRoomName('!room:example.com', 'm.call#ROOM')).toBe('krj2dgxw2K6EOm9he4GfQJ6JsSVWfJ8a7BkyjZcSmxs');
    expect(legacyRoomName('!room:example.com')).toBe('krj2dgxw2K6EOm9he4GfQJ6JsSVWfJ8a7BkyjZcSmxs');
  });

  it('derives the hashed identity', () => {
    expect(liveKitIdentity('@alice:example.com', 'DEVICE123', 'memberABC')).toBe('J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU');
  });

  it('keeps the legacy identity unhashed as user:device', () => {
    expect(legacyIdentity('@alice:example.com', 'DEVICE')).toBe('@alice:example.com:DEVICE');
  });

  it('uses standard base64 without padding', () => {
    for (let i = 0; i < 50; i++) {
      const name = liveKitRoomName(`!r${i}:example.com`, `slot${i}`);
      expect(name).toMatch(/^[A-Za-z0-9+/]{43}$/);
    }
  });
});

describe("Go's json.Marshal escaping", () => {
  it('escapes <, > and & as \\u003c, \\u003e, \\u0026', () => {
    expect(goJsonStringArray(['<b>', 'a&b'])).toBe('["\\u003cb\\u003e","a\\u0026b"]');
    expect(liveKitRoomName('!<script>:example.com', 'a&b')).toBe(hashOfText('["!\\u003cscript\\u003e:example.com","a\\u0026b"]'));
    expect(liveKitRoomName('!<script>:example.com', 'a&b')).not.toBe(
      createHash('sha256').update(JSON.stringify(['!<script>:example.com', 'a&b'])).digest('base64').replace(/=+$/, ''),
    );
  });

  it('escapes U+2028 and U+2029', () => {
    expect(goJsonStringArray(['a\u2028b\u2029c'])).toBe('["a\\u2028b\\u2029c"]');
    expect(liveKitIdentity('@a\u2028:example.com', 'DEV\u2029', 'm')).toBe(hashOfText('["@a\\u2028:example.com","DEV\\u2029","m"]'));
  });

  it('writes quotes, backslashes and control characters as Go does', () => {
    expect(goJsonStringArray(['"\\', '\n\r\t\b\f', '\u0001\u001f'])).toBe('["\\"\\\\","\\n\\r\\t\\b\\f","\\u0001\\u001f"]');
  });

  it('leaves other non-ASCII characters unescaped, as UTF-8', () => {
    const json = '["!räum:例え.jp","😀"]';
    expect(goJsonStringArray(['!räum:例え.jp', '😀'])).toBe(json);
    expect(liveKitRoomName('!räum:例え.jp', '😀')).toBe(hashOfText(json));
  });

  it('turns a lone surrogate into U+FFFD, as Go decodes it', () => {
    expect(goJsonStringArray(['a\ud800b', '\udc00'])).toBe('["a\ufffdb","\ufffd"]');
  });

  it('escapes every character in the mix at once', () => {
    expect(liveKitIdentity('@<&>:example.com', 'D\u2028', 'm"\u2029')).toBe(
      hashOfText('["@\\u003c\\u0026\\u003e:example.com","D\\u2028","m\\"\\u2029"]'),
    );
  });
});
