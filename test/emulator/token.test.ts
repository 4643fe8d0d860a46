import t, { type Test } from 'tap'
import { SignJWT, UnsecuredJWT, generateKeyPair } from 'jose'
import { createPublicKey } from 'node:crypto'
import { verifyToken, type TokenPolicy } from '../../src/emulator/token.ts'
import { AUD, ISS, NOW, NOW_S, VM as VM_NAMES, VM_UID, rsaKey, sign } from '../helpers/tokens.ts'

const VM = { ...VM_NAMES, uid: VM_UID }

const key = await rsaKey()
const other = await rsaKey()
const policy = (over: Partial<TokenPolicy> = {}): TokenPolicy => ({
  issuer: ISS, audience: AUD, algorithms: ['RS256', 'PS256'], maxLifetime: 60, clockTolerance: 5,
  keys: [{ kid: 'main', key: createPublicKey(key.pem), file: 'main.pem' }], ...over,
})
const verify = (jws: string, p = policy(), vm = VM) => verifyToken(jws, vm, p, NOW)

/** Asserts the refusal's code, and that no part of the token leaks into the message. */
async function refused(t: Test, jws: Promise<string> | string, code: string, p?: TokenPolicy, vm = VM) {
  const token = await jws
  const err = await verify(token, p, vm).then(() => undefined, (e: unknown) => e as { code: string; message: string })
  t.equal(err?.code, code, code)
  for (const part of token.split('.')) if (part.length > 8) t.notOk(err?.message.includes(part), 'no token part in the message')
}

t.test('a valid token yields its jti, times and key', async (t) => {
  t.same(await verify(await sign(key)), { jti: 'jti-1', iat: NOW_S - 5, exp: NOW_S + 50, kid: 'main', qemuUid: VM_UID })
  t.equal((await verify(await sign(key, {}, { kid: 'main' }))).kid, 'main')
})

t.test('time: expired, not yet valid, too long-lived', async (t) => {
  await refused(t, sign(key, { iat: NOW_S - 70, exp: NOW_S - 10 }), 'ERR_TOKEN_EXPIRED')
  await refused(t, sign(key, { iat: NOW_S - 30, exp: NOW_S - 2 }), 'ERR_TOKEN_EXPIRED', policy({ clockTolerance: 0 }))
  t.ok(await verify(await sign(key, { iat: NOW_S - 30, exp: NOW_S - 2 })), 'within the clock tolerance')
  await refused(t, sign(key, { iat: NOW_S + 30, exp: NOW_S + 60 }), 'ERR_TOKEN_NOT_YET_VALID')
  await refused(t, sign(key, { nbf: NOW_S + 30 }), 'ERR_TOKEN_NOT_YET_VALID')
  await refused(t, sign(key, { iat: NOW_S - 5, exp: NOW_S + 3600 }), 'ERR_TOKEN_LIFETIME')
})

t.test('signature and algorithm', async (t) => {
  await refused(t, sign(other), 'ERR_TOKEN_SIGNATURE')
  const [h, p] = (await sign(key)).split('.')
  const [, , s] = (await sign(other)).split('.')
  await refused(t, `${h}.${p}.${s}`, 'ERR_TOKEN_SIGNATURE')
  await refused(t, sign(key, {}, { kid: 'nope' }), 'ERR_TOKEN_KEY_UNKNOWN')
  await refused(t, new UnsecuredJWT({ sub: VM.uuid }).encode(), 'ERR_TOKEN_MALFORMED')
  const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${p}.x`
  await refused(t, none, 'ERR_TOKEN_ALG_NOT_ALLOWED')
  const hs = await new SignJWT({ sub: VM.uuid }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(key.pem))
  await refused(t, hs, 'ERR_TOKEN_ALG_NOT_ALLOWED')
  const ec = await generateKeyPair('ES256')
  await refused(t, new SignJWT({ sub: VM.uuid }).setProtectedHeader({ alg: 'ES256' }).sign(ec.privateKey), 'ERR_TOKEN_ALG_NOT_ALLOWED')
  await refused(t, sign(key), 'ERR_TOKEN_ALG_NOT_ALLOWED', policy({ algorithms: ['PS256'] }))
})

t.test('with several keys and no kid, each is tried (key rotation)', async (t) => {
  const both = policy({ keys: [{ kid: 'old', key: createPublicKey(other.pem), file: 'old.pem' }, ...policy().keys] })
  t.equal((await verify(await sign(key), both)).kid, 'main')
})

t.test('claims: issuer, audience, required claims', async (t) => {
  await refused(t, sign(key, { iss: 'someone-else' }), 'ERR_TOKEN_CLAIM_INVALID')
  await refused(t, sign(key, { aud: 'other' }), 'ERR_TOKEN_CLAIM_INVALID')
  for (const c of ['iss', 'aud', 'sub', 'jti', 'iat', 'exp', 'vm_name', 'qemu_uid']) await refused(t, sign(key, { [c]: null }), 'ERR_TOKEN_CLAIM_INVALID')
  await refused(t, sign(key, { jti: '' }), 'ERR_TOKEN_CLAIM_INVALID')
})

t.test('the token is bound to this VM', async (t) => {
  await refused(t, sign(key, { sub: 'other-uuid' }), 'ERR_TOKEN_VM_MISMATCH')
  await refused(t, sign(key, { vm_name: 'othervm' }), 'ERR_TOKEN_VM_MISMATCH')
  await refused(t, sign(key), 'ERR_TOKEN_VM_MISMATCH', undefined, { uuid: VM.uuid, name: 'othervm', uid: VM_UID })
})

t.test('malformed input', async (t) => {
  for (const bad of ['', 'abc', 'a.b', 'a.b.c.d', 'a b.c.d', `${'a'.repeat(17000)}.b.c`, '!!!.b.c']) {
    await refused(t, bad, 'ERR_TOKEN_MALFORMED')
  }
})

t.test('the token is bound to the caller\'s uid: VM B\'s token under VM A\'s uid is refused', async (t) => {
  const err = await verify(await sign(key, { qemu_uid: VM_UID + 1 })).then(() => undefined, (e: unknown) => e as { code: string; message: string })
  t.equal(err?.code, 'ERR_TOKEN_UID_MISMATCH')
  t.equal(err?.message, `expected "qemu_uid" = the caller's uid ${VM_UID}, got "${VM_UID + 1}"`)
  await refused(t, sign(key, { qemu_uid: String(VM_UID) }), 'ERR_TOKEN_UID_MISMATCH')
  await refused(t, sign(key), 'ERR_TOKEN_UID_MISMATCH', undefined, { ...VM, uid: 20002 })
})

/** The refusal's exact code and message. */
async function refusedWith(t: Test, jws: Promise<string> | string, code: string, message: string, p?: TokenPolicy) {
  const err = await verify(await jws, p).then(() => undefined, (e: unknown) => e as { code: string; message: string })
  t.same({ code: err?.code, message: err?.message }, { code, message })
}

t.test('refusals say expected against got', async (t) => {
  await refusedWith(t, sign(key, { iss: 'someone-else' }), 'ERR_TOKEN_CLAIM_INVALID', `expected "iss" "${ISS}" (token_issuer), got "someone-else"`)
  await refusedWith(t, sign(key, { aud: 'other' }), 'ERR_TOKEN_CLAIM_INVALID', `expected "aud" "${AUD}" (token_audience), got "other"`)
  await refusedWith(t, sign(key, { jti: null }), 'ERR_TOKEN_CLAIM_INVALID', 'the required "jti" claim is missing')
  await refusedWith(t, sign(key, { iat: NOW_S - 70, exp: NOW_S - 10 }), 'ERR_TOKEN_EXPIRED',
    `expected "exp" >= now - tolerance, got exp ${NOW_S - 10}, now ${NOW_S}, tolerance 5 s`)
  await refusedWith(t, sign(key, { iat: NOW_S + 30, exp: NOW_S + 60 }), 'ERR_TOKEN_NOT_YET_VALID',
    `expected "iat" <= now + tolerance, got iat ${NOW_S + 30}, now ${NOW_S}, tolerance 5 s`)
  await refusedWith(t, sign(key, { nbf: NOW_S + 30 }), 'ERR_TOKEN_NOT_YET_VALID',
    `expected "nbf" <= now + tolerance, got nbf ${NOW_S + 30}, now ${NOW_S}, tolerance 5 s`)
  await refusedWith(t, sign(key, { iat: NOW_S - 5, exp: NOW_S + 3600 }), 'ERR_TOKEN_LIFETIME', 'expected exp - iat <= 60 s, got 3605 s')
  await refusedWith(t, sign(key), 'ERR_TOKEN_ALG_NOT_ALLOWED', 'expected alg one of PS256, got "RS256"', policy({ algorithms: ['PS256'] }))
})
