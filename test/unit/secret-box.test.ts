import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SecretBox } from '../../src/store/secret-box.js';

const key = () => randomBytes(32);

function flip(sealed: string, byteIndex: number): string {
  const [scheme, id, payload] = sealed.split(':') as [string, string, string];
  const raw = Buffer.from(payload, 'base64');
  raw[byteIndex % raw.length]! ^= 0x01;
  return `${scheme}:${id}:${raw.toString('base64')}`;
}

describe('SecretBox', () => {
  it('opens what it sealed, for any string', () => {
    const box = new SecretBox(key());
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 300 }), (plain) => {
        expect(box.open(box.seal(plain))).toBe(plain);
      }),
      { numRuns: 300 },
    );
  });

  it('seals the same value differently each time and never shows it', () => {
    const box = new SecretBox(key());
    const secret = `syd_${randomBytes(16).toString('hex')}`;
    const a = box.seal(secret);
    const b = box.seal(secret);
    expect(a).not.toBe(b);
    for (const sealed of [a, b]) {
      expect(sealed).toMatch(/^gcm:[0-9a-f]{8}:[A-Za-z0-9+/]+=*$/);
      expect(sealed.includes(secret)).toBe(false);
      expect(sealed.includes(Buffer.from(secret).toString('base64').slice(0, 16))).toBe(false);
    }
  });

  it('passes values through marked plain when no key is set, and still opens them after a key is added', () => {
    const plainBox = new SecretBox(null);
    expect(plainBox.encrypting).toBe(false);
    const sealed = plainBox.seal('ft_token');
    expect(sealed).toBe('plain:ft_token');
    expect(new SecretBox(key()).open(sealed)).toBe('ft_token');
  });

  it('detects tampering with the IV, the tag or the ciphertext', () => {
    const box = new SecretBox(key());
    const sealed = box.seal('a future token that matters');
    const payloadLength = Buffer.from(sealed.split(':')[2]!, 'base64').length;
    for (const index of [0, 11, 12, 27, 28, payloadLength - 1]) {
      expect(() => box.open(flip(sealed, index)), `byte ${index}`).toThrow();
    }
    expect(() => box.open(sealed.slice(0, -4))).toThrow();
  });

  it('refuses a value sealed with another key even when the fingerprint is forged', () => {
    const k1 = key();
    const k2 = key();
    const sealedWithK2 = new SecretBox(k2).seal('token');
    const k1Id = new SecretBox(k1).seal('x').split(':')[1]!;
    const forged = sealedWithK2.replace(/^gcm:[0-9a-f]{8}:/, `gcm:${k1Id}:`);
    expect(() => new SecretBox(k1).open(forged)).toThrow();
  });

  it('opens values sealed with an old key and seals new ones with the current key', () => {
    const oldKey = key();
    const newKey = key();
    const before = new SecretBox(oldKey).seal('old token');
    const rotated = new SecretBox(newKey, [oldKey]);
    expect(rotated.open(before)).toBe('old token');
    const after = rotated.seal('new token');
    expect(after.split(':')[1]).not.toBe(before.split(':')[1]);
    expect(new SecretBox(newKey).open(after)).toBe('new token');
    expect(() => new SecretBox(oldKey).open(after)).toThrow();
  });

  it('names the missing key by fingerprint only: the error shows no key, token or ciphertext', () => {
    const unknownKey = key();
    const secret = `ft_${randomBytes(16).toString('base64url')}`;
    const sealed = new SecretBox(unknownKey).seal(secret);
    let message = '';
    try {
      new SecretBox(key()).open(sealed);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/unknown key \(fingerprint [0-9a-f]{8}\); add it to SIDECAR_TOKEN_OLD_KEYS/);
    for (const s of [secret, unknownKey.toString('base64'), unknownKey.toString('hex'), sealed.split(':')[2]!]) expect(message.includes(s)).toBe(false);
  });

  it('refuses unreadable values without echoing them', () => {
    const box = new SecretBox(key());
    for (const junk of ['', 'gcm:', 'gcm:abcd', 'aes:abcd:xyz', 'secret-looking-value']) {
      let message = '';
      try {
        box.open(junk);
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message, junk).not.toBe('');
      if (junk) expect(message.includes(junk)).toBe(false);
    }
  });
});
