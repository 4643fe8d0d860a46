import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { chmodSync, chownSync, mkdirSync, symlinkSync, unlinkSync } from 'node:fs'
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

// Issue 8 item 5: key files were checked only at their last component and parsed leniently.
const asRoot = process.getuid?.() === 0 ? {} : { skip: 'needs root: the directories above a key must be root-owned' }

t.test('a root-owned log file that contains the attacker\'s PEM is not a key file: ERR_KEY_INVALID', async (t) => {
  const dir = tempDir(t)
  const log = writeKey(dir, 'daemon.log', `Dec  1 12:00:00 host app[1]: user input follows\n${key.pem}Dec  1 12:00:01 host app[1]: done\n`)
  const own = (_: string, m: { isFile: boolean; mode: number }) => ({ ...m, uid: 0 })
  t.throws(() => loadKeys([log], own), { code: 'ERR_KEY_INVALID', message: `key file ${log}: must hold exactly one PEM public key block and nothing else` })
  t.throws(() => parseKeyFile('k.pem', `${key.pem}${key.pem}`), { code: 'ERR_KEY_INVALID', message: 'key file k.pem: must hold exactly one PEM public key block and nothing else' })
  t.equal(parseKeyFile('k.pem', `\n${key.pem}\n`).length, 1, 'surrounding blank lines are fine')
})

t.test('every directory above a key file is checked, and no component may be a symlink', asRoot, async (t) => {
  const dir = tempDir(t)
  chmodSync(dir, 0o755)
  mkdirSync(`${dir}/keys`, { mode: 0o755 })
  const file = writeKey(`${dir}/keys`, 'k.pem', key.pem)
  t.equal(loadKeys([file]).length, 1)
  chmodSync(`${dir}/keys`, 0o775)
  t.throws(() => loadKeys([file]), { code: 'ERR_KEY_INVALID', message: `${file}: directory ${dir}/keys must not be writable by group or others, mode is 0775` })
  chmodSync(`${dir}/keys`, 0o755)
  const other = writeKey(dir, 'other.pem', key.pem)
  unlinkSync(file)
  symlinkSync(other, file)
  t.throws(() => loadKeys([file]), { code: 'ERR_KEY_INVALID', message: `${file}: ${file} is a symlink; name the file itself` })
  unlinkSync(file)
  writeKey(`${dir}/keys`, 'k.pem', key.pem)
  symlinkSync(`${dir}/keys`, `${dir}/link`)
  t.throws(() => loadKeys([`${dir}/link/k.pem`]), { code: 'ERR_KEY_INVALID', message: `${dir}/link/k.pem: ${dir}/link is a symlink; name the file itself` })
  chownSync(`${dir}/keys`, 65534, 65534)
  t.throws(() => loadKeys([file]), { code: 'ERR_KEY_INVALID', message: `${file}: directory ${dir}/keys must be owned by root, is owned by uid 65534` })
})
