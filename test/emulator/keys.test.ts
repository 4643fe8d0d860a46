import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { loadKeys, parseKeyFile } from '../../src/emulator/keys.ts'
import { jwk, rsaKey, tempDir, writeKey } from '../helpers/tokens.ts'

const key = await rsaKey()

t.test('PEM, JWK and JWKS files, with their kids', async (t) => {
  const dir = tempDir(t)
  const files = [
    writeKey(dir, 'signing-2026.pem', key.pem),
    writeKey(dir, 'one.jwk', JSON.stringify(await jwk(key, 'jwk-kid'))),
    writeKey(dir, 'set.json', JSON.stringify({ keys: [await jwk(key, 'a'), await jwk(key, 'b')] })),
  ]
  const own = (_: string, m: { isFile: boolean; mode: number }) => ({ ...m, uid: 0 })
  t.same(loadKeys(files, own).map((k) => k.kid), ['signing-2026', 'jwk-kid', 'a', 'b'])
})

t.test('private keys, garbage and unsafe files are refused: ERR_KEY_INVALID', async (t) => {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } })
  t.throws(() => parseKeyFile('k.pem', privateKey), { code: 'ERR_KEY_INVALID', message: /private key material/ })
  t.throws(() => parseKeyFile('k.json', JSON.stringify({ kty: 'RSA', n: 'x', e: 'AQAB', d: 'y' })), { code: 'ERR_KEY_INVALID', message: /private/ })
  t.throws(() => parseKeyFile('k.pem', 'hello'), { code: 'ERR_KEY_INVALID', message: /neither PEM nor JWK/ })
  t.throws(() => parseKeyFile('k.pem', '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n'), { code: 'ERR_KEY_INVALID' })
  t.throws(() => parseKeyFile('k.json', '{"kty":'), { code: 'ERR_KEY_INVALID', message: /not valid JSON/ })
  t.throws(() => parseKeyFile('k.json', '{"kty":"RSA"}'), { code: 'ERR_KEY_INVALID', message: /not a usable public JWK/ })
  const dir = tempDir(t)
  const file = writeKey(dir, 'k.pem', key.pem)
  t.throws(() => loadKeys([file], (_, m) => ({ ...m, uid: 1000 })), { code: 'ERR_KEY_INVALID', message: /owned by root/ })
  t.throws(() => loadKeys([file], (_, m) => ({ ...m, uid: 0, mode: 0o100666 })), { code: 'ERR_KEY_INVALID', message: /writable/ })
  t.throws(() => loadKeys([`${dir}/missing.pem`]), { code: 'ERR_KEY_INVALID', message: /ENOENT/ })
})
