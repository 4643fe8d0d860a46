// Token tooling for operators and tests: what KubeVirt's virt-handler would do on a real node.
// `issueToken` produces exactly what token.ts accepts: iss, aud, sub = VM uuid, vm_name,
// qemu_uid (the VM's host identity, which the issuer allocates), a random jti, iat = now,
// exp = now + ttl.
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { importPKCS8, SignJWT } from 'jose'
import { QkError } from './errors.ts'
import type { Vm } from './invocation.ts'
import { QEMU_UID_CLAIM, VM_NAME_CLAIM } from './token.ts'

export function keygen(privatePath: string, publicPath: string, bits: number): void {
  if (!Number.isInteger(bits) || bits < 2048 || bits > 8192) throw new QkError('ERR_USAGE', `--bits must be 2048..8192, got ${bits}`)
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: bits,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  })
  writeFileSync(privatePath, privateKey, { mode: 0o600, flag: 'wx' })
  writeFileSync(publicPath, publicKey, { mode: 0o644, flag: 'wx' })
}

export interface IssueRequest {
  key: string
  vm: Vm
  qemuUid: number
  ttl: number
  alg: string
  issuer: string
  audience: string
  kid?: string
  now?: Date
}

export async function issueToken(r: IssueRequest): Promise<string> {
  const key = await importPKCS8(r.key, r.alg)
  const iat = Math.floor((r.now ?? new Date()).getTime() / 1000)
  return new SignJWT({ [VM_NAME_CLAIM]: r.vm.name, [QEMU_UID_CLAIM]: r.qemuUid })
    .setProtectedHeader(r.kid === undefined ? { alg: r.alg } : { alg: r.alg, kid: r.kid })
    .setIssuer(r.issuer)
    .setAudience(r.audience)
    .setSubject(r.vm.uuid)
    .setJti(randomUUID())
    .setIssuedAt(iat)
    .setExpirationTime(iat + r.ttl)
    .sign(key)
}

/** "60", "60s", "2m" -> seconds. */
export function parseTtl(s: string): number {
  const m = /^(\d+)(s|m)?$/.exec(s)
  if (m === null) throw new QkError('ERR_USAGE', `--ttl takes 60, 60s or 1m, got ${JSON.stringify(s)}`)
  return Number(m[1]) * (m[2] === 'm' ? 60 : 1)
}
