// Token tooling for operators and tests: what KubeVirt's virt-handler would do on a real node.
// `issueToken` produces exactly what token.ts accepts: iss, aud, sub = VM uuid, vm_name,
// qemu_uid (the VM's host identity, which the issuer allocates), a random jti, iat = now,
// exp = now + ttl; `checkIssue` refuses first what the verifier would refuse, so no dead token
// is minted. Every file problem is typed with its sysexits status (66 input, 73 output).
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto'
import { closeSync, fsyncSync, linkSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs'
import { dirname } from 'node:path'
import { importPKCS8, SignJWT } from 'jose'
import { ID_RE, SHARED } from '../shared/constants.ts'
import { ALGORITHMS, type Config } from './config.ts'
import { errnoOf, QkError } from './errors.ts'
import type { Vm } from './invocation.ts'
import { QEMU_UID_CLAIM, VM_NAME_CLAIM } from './token.ts'

export interface KeygenResult {
  private: string
  public: string
  bits: number
}

/**
 * Both files or neither: each is written whole to a temporary name beside it and synced, then
 * linked to its name (link never replaces an existing file); if the second link fails, the
 * first is removed again.
 */
export function keygen(privatePath: string, publicPath: string, bits: number): KeygenResult {
  if (!Number.isInteger(bits) || bits < 2048 || bits > 8192) throw new QkError('ERR_USAGE', `--bits expected 2048..8192, got ${bits}`)
  if (privatePath === publicPath) throw new QkError('ERR_USAGE', `--private and --public must be two files, got ${privatePath} for both`)
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: bits,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  })
  const tmpPrivate = writeTemp(privatePath, privateKey, 0o600)
  let tmpPublic: string | undefined
  try {
    tmpPublic = writeTemp(publicPath, publicKey, 0o644)
    place(tmpPrivate, privatePath)
    try {
      place(tmpPublic, publicPath)
    } catch (e) {
      unlinkSync(privatePath)
      throw e
    }
  } finally {
    for (const t of [tmpPrivate, tmpPublic]) if (t !== undefined) unlinkQuietly(t)
  }
  return { private: privatePath, public: publicPath, bits }
}

function writeTemp(final: string, text: string, mode: number): string {
  const tmp = `${final}.tmp-${randomBytes(6).toString('hex')}`
  let fd: number
  try {
    fd = openSync(tmp, 'wx', mode)
  } catch (e) {
    throw outputError(final, e)
  }
  try {
    writeSync(fd, text)
    fsyncSync(fd)
  } catch (e) {
    unlinkQuietly(tmp)
    throw outputError(final, e)
  } finally {
    closeSync(fd)
  }
  return tmp
}

function place(tmp: string, final: string): void {
  try {
    linkSync(tmp, final)
  } catch (e) {
    throw outputError(final, e)
  }
}

function outputError(file: string, e: unknown): QkError {
  const dir = dirname(file)
  switch (errnoOf(e)) {
    case 'EEXIST':
      return new QkError('ERR_OUTPUT_EXISTS', `${file} exists; keygen writes new files only`, { file })
    case 'ENOENT':
    case 'ENOTDIR':
      return new QkError('ERR_OUTPUT_UNWRITABLE', `cannot create ${file}: directory ${dir} does not exist`, { file })
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new QkError('ERR_OUTPUT_UNWRITABLE', `cannot create ${file}: directory ${dir} is not writable by uid ${process.getuid?.() ?? '?'} (${errnoOf(e)})`, { file })
    default:
      return new QkError('ERR_OS', `cannot create ${file}: ${errnoOf(e) ?? 'unknown error'}`, { file })
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path)
  } catch {
    // the temporary name is ours and random; nothing else can depend on it
  }
}

/** The signing key's PEM text: a missing or unreadable file is 66, a public key is refused. */
export function readSigningKey(file: string): string {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    const errno = errnoOf(e)
    const why = errno === 'ENOENT' ? 'does not exist' : errno === 'EACCES' ? `is not readable by uid ${process.getuid?.() ?? '?'}` : errno === 'EISDIR' ? 'is a directory' : `cannot be read (${errno ?? 'unknown error'})`
    throw new QkError('ERR_INPUT_MISSING', `--key ${file} ${why}`, { file })
  }
  if (/-----BEGIN (RSA )?PUBLIC KEY-----|-----BEGIN CERTIFICATE-----/.test(text)) {
    throw new QkError('ERR_SIGNING_KEY_INVALID', `--key ${file}: expected a PEM private key (BEGIN PRIVATE KEY), got a public key`, { file })
  }
  if (!/-----BEGIN PRIVATE KEY-----/.test(text)) {
    const got = /-----BEGIN ([A-Z ]{1,40})-----/.exec(text)?.[1]
    throw new QkError('ERR_SIGNING_KEY_INVALID', `--key ${file}: expected a PKCS#8 PEM private key (BEGIN PRIVATE KEY), got ${got === undefined ? 'no PEM block' : `BEGIN ${got}`}`, { file })
  }
  return text
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

/** The limits the verifier applies that the issuer can break. */
export type IssueLimits = Pick<Config, 'token_max_lifetime' | 'token_algorithms' | 'vm_uid_range'>

/** Refuses, before signing, what a node with these limits would refuse. */
export function checkIssue(r: Pick<IssueRequest, 'vm' | 'qemuUid' | 'ttl' | 'alg'>, limits: IssueLimits, from: string): void {
  if (!(ALGORITHMS as readonly string[]).includes(r.alg)) {
    throw new QkError('ERR_USAGE', `--alg expected one of ${ALGORITHMS.join(', ')}, got ${JSON.stringify(r.alg.slice(0, 40))}`)
  }
  for (const [flag, v] of [['--vm-uuid', r.vm.uuid], ['--vm-name', r.vm.name]] as const) {
    if (!ID_RE.test(v)) throw new QkError('ERR_ISSUE_REFUSED', `${flag} expected ${SHARED.ID_PATTERN}, got ${JSON.stringify(v.slice(0, 64))} (the verifier refuses it: ERR_ENV_INVALID)`)
  }
  if (r.ttl < 1) throw new QkError('ERR_USAGE', `--ttl expected at least 1 s, got ${r.ttl} s`)
  if (r.ttl > limits.token_max_lifetime) {
    throw new QkError('ERR_ISSUE_REFUSED', `--ttl expected at most token_max_lifetime ${limits.token_max_lifetime} s (${from}), got ${r.ttl} s (the verifier refuses it: ERR_TOKEN_LIFETIME)`)
  }
  if (!limits.token_algorithms.includes(r.alg)) {
    throw new QkError('ERR_ISSUE_REFUSED', `--alg expected one of token_algorithms ${limits.token_algorithms.join(', ')} (${from}), got ${r.alg} (the verifier refuses it: ERR_TOKEN_ALG_NOT_ALLOWED)`)
  }
  const [first, last] = limits.vm_uid_range
  if (r.qemuUid < first || r.qemuUid > last) {
    throw new QkError('ERR_ISSUE_REFUSED', `--qemu-uid expected a uid in vm_uid_range ${first}..${last} (${from}), got ${r.qemuUid} (the verifier refuses it: ERR_CALLER_NOT_ALLOWED)`)
  }
}

export async function issueToken(r: IssueRequest): Promise<string> {
  let key
  try {
    key = await importPKCS8(r.key, r.alg)
  } catch {
    // jose's message may quote the key; ours names only the alg.
    throw new QkError('ERR_SIGNING_KEY_INVALID', `--key: expected a private key usable with ${r.alg} (RS*/PS* need RSA, ES* EC, EdDSA Ed25519), got one that is not`)
  }
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
  const m = /^(\d{1,6})(s|m)?$/.exec(s)
  if (m === null) throw new QkError('ERR_USAGE', `--ttl expected 60, 60s or 1m, got ${JSON.stringify(s.slice(0, 40))}`)
  return Number(m[1]) * (m[2] === 'm' ? 60 : 1)
}
