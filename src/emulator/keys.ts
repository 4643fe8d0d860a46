// The public keys tokens are checked against, from the files the config names. A file holds a
// PEM public key or certificate (its kid is the file name without extension), a JWK, or a
// JWKS ({"keys": [...]}, each key's own kid). Private key material is refused outright: a
// public-key file that holds a private key means the signing key sits on every node.
import { createPublicKey, type KeyObject } from 'node:crypto'
import { basename, extname } from 'node:path'
import { QkError } from './errors.ts'
import { readTrustedFile, type FileMeta } from './trusted-file.ts'

export interface PublicKey {
  kid: string
  key: KeyObject
  file: string
}

const KEY_CODES = { missing: 'ERR_KEY_INVALID', unsafe: 'ERR_KEY_INVALID' } as const
const PEM_ONLY = /^\s*-----BEGIN (PUBLIC KEY|RSA PUBLIC KEY|CERTIFICATE)-----\r?\n[A-Za-z0-9+/=\r\n]+-----END \1-----\s*$/

export function loadKeys(files: readonly string[], meta?: FileMeta): PublicKey[] {
  return files.flatMap((file) => parseKeyFile(file, readTrustedFile(file, KEY_CODES, meta).toString('utf8')))
}

export function parseKeyFile(file: string, text: string): PublicKey[] {
  const bad = (why: string) => new QkError('ERR_KEY_INVALID', `key file ${file}: ${why}`, { file })
  if (/PRIVATE KEY/.test(text) || /"d"\s*:/.test(text)) throw bad('holds private key material; give the public key only')
  const trimmed = text.trimStart()
  if (trimmed.startsWith('{')) {
    let doc: unknown
    try {
      doc = JSON.parse(trimmed)
    } catch {
      throw bad('is not valid JSON')
    }
    const jwks = isRecord(doc) && Array.isArray(doc['keys']) ? doc['keys'] : [doc]
    return jwks.map((jwk, i) => {
      if (!isRecord(jwk)) throw bad(`entry ${i} is not a JWK object`)
      const kid = typeof jwk['kid'] === 'string' ? jwk['kid'] : basename(file, extname(file))
      try {
        return { kid, key: createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' }), file }
      } catch {
        throw bad(`entry ${i} is not a usable public JWK`)
      }
    })
  }
  if (!/-----BEGIN (PUBLIC KEY|RSA PUBLIC KEY|CERTIFICATE)-----/.test(text)) throw bad('is neither PEM nor JWK')
  // createPublicKey takes the first PEM block anywhere in the text: a root-owned log file that
  // quotes an attacker's key would pass. The file must be that one block and nothing else.
  if (!PEM_ONLY.test(text)) throw bad('must hold exactly one PEM public key block and nothing else')
  try {
    return [{ kid: basename(file, extname(file)), key: createPublicKey(text), file }]
  } catch {
    throw bad('holds no usable PEM public key')
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
