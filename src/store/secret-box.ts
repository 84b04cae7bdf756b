import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

/**
 * Seals tokens at rest with AES-256-GCM. Sealed values name their key by a short fingerprint so that values sealed
 * with an older key (SIDECAR_TOKEN_OLD_KEYS) still open after a rotation. Without a key, values pass through as-is.
 */
export class SecretBox {
  private readonly current: { id: string; key: Buffer } | null;
  private readonly byId = new Map<string, Buffer>();

  constructor(key: Buffer | null, oldKeys: Buffer[] = []) {
    this.current = key ? { id: fingerprint(key), key } : null;
    for (const k of [...(key ? [key] : []), ...oldKeys]) this.byId.set(fingerprint(k), k);
  }

  get encrypting(): boolean {
    return this.current !== null;
  }

  seal(plain: string): string {
    if (!this.current) return `plain:${plain}`;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.current.key, iv);
    const body = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return `gcm:${this.current.id}:${Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64')}`;
  }

  open(sealed: string): string {
    if (sealed.startsWith('plain:')) return sealed.slice('plain:'.length);
    const [scheme, id, payload] = sealed.split(':');
    if (scheme !== 'gcm' || !id || payload === undefined) throw new Error('unreadable sealed secret');
    const key = this.byId.get(id);
    if (!key) throw new Error(`secret sealed with an unknown key (fingerprint ${id}); add it to SIDECAR_TOKEN_OLD_KEYS`);
    const raw = Buffer.from(payload, 'base64');
    const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12));
    decipher.setAuthTag(raw.subarray(12, 28));
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
  }
}

function fingerprint(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 8);
}
