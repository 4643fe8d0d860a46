// Stage: the token libvirt handed us in KUBEVIRT_SECRET. It is a compact JWS whose signature,
// issuer, audience, lifetime and VM binding we check. jose's errors carry the whole payload, so
// no jose error object ever leaves this file: each is mapped to one of our codes, with a message
// we write ourselves from the error's code and claim name only.
import { decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose'
import { SHARED } from '../shared/constants.ts'
import { QkError } from './errors.ts'
import type { PublicKey } from './keys.ts'

export const VM_NAME_CLAIM = 'vm_name'
/** The VM's host identity, allocated by the issuer: QEMU runs as uid = gid = this. */
export const QEMU_UID_CLAIM = 'qemu_uid'
const REQUIRED = ['iss', 'aud', 'sub', 'jti', 'iat', 'exp', VM_NAME_CLAIM, QEMU_UID_CLAIM]
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/
export const MAX_TOKEN_LENGTH = SHARED.MAX_TOKEN_BYTES

export interface TokenPolicy {
  issuer: string
  audience: string
  algorithms: readonly string[]
  maxLifetime: number
  clockTolerance: number
  keys: readonly PublicKey[]
}

export interface VerifiedToken {
  jti: string
  iat: number
  exp: number
  kid: string
  qemuUid: number
}

/** What the token must be bound to: the VM libvirt named and the uid libvirt ran us as. */
export interface Binding {
  uuid: string
  name: string
  uid: number
}

export async function verifyToken(
  jws: string, vm: Binding, policy: TokenPolicy, now: Date,
): Promise<VerifiedToken> {
  if (jws.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(jws)) {
    throw new QkError('ERR_TOKEN_MALFORMED', 'KUBEVIRT_SECRET is not a compact JWS (header.payload.signature)')
  }
  const header = decodeHeader(jws)
  if (typeof header.alg !== 'string' || !policy.algorithms.includes(header.alg)) {
    throw new QkError('ERR_TOKEN_ALG_NOT_ALLOWED',
      `expected alg one of ${policy.algorithms.join(', ')}, got ${safe(header.alg)}`)
  }
  const candidates = header.kid === undefined ? policy.keys : policy.keys.filter((k) => k.kid === header.kid)
  if (candidates.length === 0) {
    throw new QkError('ERR_TOKEN_KEY_UNKNOWN', `no configured public key has kid ${safe(header.kid)}`)
  }

  // Without a kid, try each key in config order (key rotation keeps old and new side by side);
  // any failure other than a bad signature is final, because it is the same for every key.
  let payload: JWTPayload | undefined
  let kid = ''
  for (const k of candidates) {
    try {
      ;({ payload } = await jwtVerify(jws, k.key, {
        algorithms: [...policy.algorithms],
        issuer: policy.issuer,
        audience: policy.audience,
        requiredClaims: REQUIRED,
        clockTolerance: policy.clockTolerance,
        currentDate: now,
      }))
      kid = k.kid
      break
    } catch (err) {
      const mapped = mapJoseError(err, policy, now)
      if (mapped.code !== 'ERR_TOKEN_SIGNATURE') throw mapped
    }
  }
  if (payload === undefined) {
    throw new QkError('ERR_TOKEN_SIGNATURE', `signature matches none of the ${candidates.length} candidate key(s)`)
  }
  return checkBinding(payload, vm, policy, now, kid)
}

/** What jose does not know: the lifetime cap, the VM binding, and types of our own claims. */
function checkBinding(
  p: JWTPayload, vm: Binding, policy: TokenPolicy, now: Date, kid: string,
): VerifiedToken {
  const { iat, exp, jti, sub } = p
  const name = p[VM_NAME_CLAIM]
  if (typeof iat !== 'number' || typeof exp !== 'number' || typeof jti !== 'string' || jti.length === 0 || jti.length > 256) {
    throw new QkError('ERR_TOKEN_CLAIM_INVALID', 'expected numeric "iat" and "exp" and a "jti" of 1 to 256 characters')
  }
  if (exp - iat > policy.maxLifetime) {
    throw new QkError('ERR_TOKEN_LIFETIME', `expected exp - iat <= ${policy.maxLifetime} s, got ${exp - iat} s`)
  }
  if (iat > now.getTime() / 1000 + policy.clockTolerance) {
    throw new QkError('ERR_TOKEN_NOT_YET_VALID', `expected "iat" <= now + tolerance, got iat ${iat}, now ${Math.floor(now.getTime() / 1000)}, tolerance ${policy.clockTolerance} s`)
  }
  if (sub !== vm.uuid) {
    throw new QkError('ERR_TOKEN_VM_MISMATCH', `expected "sub" = KUBEVIRT_VM_UUID ${vm.uuid}, got ${safe(sub)}`)
  }
  if (name !== vm.name) {
    throw new QkError('ERR_TOKEN_VM_MISMATCH', `expected "${VM_NAME_CLAIM}" = KUBEVIRT_VM_NAME ${vm.name}, got ${safe(name)}`)
  }
  // The uid libvirt ran us as comes from the domain XML (its <seclabel>), which whoever defines
  // the domain controls; the signed claim is what ties it to this VM. Without this, VM A's uid
  // holding VM B's token would start B's QEMU as A: two VMs sharing one identity.
  const uid = p[QEMU_UID_CLAIM]
  if (uid !== vm.uid) {
    throw new QkError('ERR_TOKEN_UID_MISMATCH', `expected "${QEMU_UID_CLAIM}" = the caller's uid ${vm.uid}, got ${safe(uid)}`)
  }
  return { jti, iat, exp, kid, qemuUid: vm.uid }
}

function decodeHeader(jws: string) {
  try {
    return decodeProtectedHeader(jws)
  } catch {
    throw new QkError('ERR_TOKEN_MALFORMED', 'the token header is not base64url JSON')
  }
}

function mapJoseError(err: unknown, policy: TokenPolicy, now: Date): QkError {
  const code = typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : ''
  const claim = typeof err === 'object' && err !== null && 'claim' in err ? String(err.claim) : ''
  const reason = typeof err === 'object' && err !== null && 'reason' in err ? String(err.reason) : ''
  // Only the one claim a message names is taken from the payload, never the payload itself.
  const payload = typeof err === 'object' && err !== null && 'payload' in err && typeof err.payload === 'object' && err.payload !== null
    ? err.payload as Record<string, unknown> : {}
  const nowS = Math.floor(now.getTime() / 1000)
  switch (code) {
    case 'ERR_JWT_EXPIRED':
      return new QkError('ERR_TOKEN_EXPIRED',
        `expected "exp" >= now - tolerance, got exp ${shownNumber(payload['exp'])}, now ${nowS}, tolerance ${policy.clockTolerance} s`)
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return new QkError('ERR_TOKEN_SIGNATURE', 'signature verification failed')
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return new QkError('ERR_TOKEN_ALG_NOT_ALLOWED', 'the token\'s alg is not allowed')
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      if ((claim === 'nbf' || claim === 'iat') && reason === 'check_failed') {
        return new QkError('ERR_TOKEN_NOT_YET_VALID', `expected "${claim}" <= now + tolerance, got ${claim} ${shownNumber(payload[claim])}, now ${nowS}, tolerance ${policy.clockTolerance} s`)
      }
      if (reason === 'missing') return new QkError('ERR_TOKEN_CLAIM_INVALID', `the required ${safe(claim)} claim is missing`)
      if (claim === 'iss') return new QkError('ERR_TOKEN_CLAIM_INVALID', `expected "iss" ${safe(policy.issuer)} (token_issuer), got ${safe(payload['iss'])}`)
      if (claim === 'aud') return new QkError('ERR_TOKEN_CLAIM_INVALID', `expected "aud" ${safe(policy.audience)} (token_audience), got ${safe(payload['aud'])}`)
      return new QkError('ERR_TOKEN_CLAIM_INVALID', `${safe(claim)} claim has an unexpected value (${safe(reason)})`)
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID':
      return new QkError('ERR_TOKEN_MALFORMED', 'the token is not a valid JWT')
    default:
      // Key type and alg disagree (e.g. an EC key for RS256), or an unknown jose failure.
      return new QkError('ERR_TOKEN_SIGNATURE', `the token cannot be verified with this key (${code || 'unknown'})`)
  }
}

/** A numeric claim as the number it is; anything else quoted like every foreign value. */
function shownNumber(v: unknown): string {
  return typeof v === 'number' && Number.isFinite(v) ? String(v) : safe(v)
}

/** Attacker-chosen values echoed in messages: short, printable, quoted. */
function safe(v: unknown): string {
  if (v === undefined) return '(none)'
  const s = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v)
  return JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}...` : s)
}
