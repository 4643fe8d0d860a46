// Keys and tokens for tests: generated with jose, written as the files the config names,
// signed against a frozen clock.
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWTPayload } from 'jose'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import type { Test } from 'tap'

export const NOW = new Date('2026-11-22T14:00:00Z')
export const NOW_S = Math.floor(NOW.getTime() / 1000)
export const VM = { uuid: '1234-5678-1234-1234', name: 'testvm' }
/** VM's host identity (its seclabel +UID:+UID, the token's qemu_uid claim). */
export const VM_UID = 20001
export const ISS = 'kubevirt.io/virt-handler'
export const AUD = 'qemu-kube'

export interface KeyPair {
  privateKey: CryptoKey
  publicKey: CryptoKey
  pem: string
}

export async function rsaKey(alg = 'RS256'): Promise<KeyPair> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 })
  return { privateKey, publicKey, pem: await exportSPKI(publicKey) }
}

export async function jwk(k: KeyPair, kid?: string) {
  return { ...(await exportJWK(k.publicKey)), ...(kid ? { kid } : {}) }
}

export function tempDir(t: Test, prefix = 'qk-'): string {
  const dir = mkdtempSync(`${tmpdir()}/${prefix}`)
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

export function writeKey(dir: string, name: string, content: string): string {
  const path = `${dir}/${name}`
  writeFileSync(path, content, { mode: 0o644 })
  return path
}

export interface Claims extends JWTPayload {
  vm_name?: unknown
}

/** A token valid at NOW for VM unless `claims`/`header` say otherwise; `null` drops a claim. */
export async function sign(k: KeyPair, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  const payload: Record<string, unknown> = {
    iss: ISS, aud: AUD, sub: VM.uuid, vm_name: VM.name, qemu_uid: VM_UID, jti: 'jti-1', iat: NOW_S - 5, exp: NOW_S + 50, ...claims,
  }
  for (const [k2, v] of Object.entries(payload)) if (v === null) delete payload[k2]
  return new SignJWT(payload).setProtectedHeader({ alg: 'RS256', ...header }).sign(k.privateKey)
}
