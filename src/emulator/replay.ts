// Stage: single use. libvirt writes <qemu:env> values into the domain log, so a token must start
// one QEMU and no more. Each accepted jti becomes a file in a root-only state dir, created with
// O_EXCL (the kernel arbitrates concurrent launches), named by the jti's hash (the jti is
// signed, but a file name is no place for arbitrary strings) and dated by its exp. Records whose
// token has expired, tolerance included, can never match again and are purged.
import { closeSync, constants, futimesSync, lstatSync, mkdirSync, openSync, readdirSync, unlinkSync, type Stats } from 'node:fs'
import { createHash } from 'node:crypto'
import { QkError, errnoOf } from './errors.ts'

export interface ReplayRecord {
  jti: string
  exp: number
}

export function recordOnce(stateDir: string, t: ReplayRecord, now: Date, tolerance: number): void {
  ensureStateDir(stateDir)
  let fd: number
  try {
    fd = openSync(recordPath(stateDir, t.jti), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  } catch (err) {
    if (errnoOf(err) === 'EEXIST') throw replayed(t.jti)
    throw new QkError('ERR_OS', `cannot record jti in ${stateDir}: ${errnoOf(err) ?? 'error'}`, { stateDir })
  }
  try {
    futimesSync(fd, t.exp, t.exp)
  } finally {
    closeSync(fd)
  }
  purgeExpired(stateDir, now, tolerance)
}

/** For `explain`: would this token be refused as replayed? Writes nothing. */
export function checkNotReplayed(stateDir: string, jti: string): void {
  try {
    lstatSync(recordPath(stateDir, jti))
  } catch {
    return
  }
  throw replayed(jti)
}

export function purgeExpired(stateDir: string, now: Date, tolerance: number): void {
  const cutoff = now.getTime() / 1000 - tolerance
  for (const name of readdirSync(stateDir)) {
    if (!/^[0-9a-f]{64}$/.test(name)) continue
    const path = `${stateDir}/${name}`
    try {
      if (lstatSync(path).mtimeMs / 1000 < cutoff) unlinkSync(path)
    } catch {
      // A concurrent launch purged it first.
    }
  }
}

function ensureStateDir(dir: string): void {
  try {
    mkdirSync(dir, { mode: 0o700 })
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw new QkError('ERR_OS', `cannot create state dir ${dir}: ${errnoOf(err) ?? 'error'}`, { dir })
  }
  const st: Stats = lstatSync(dir)
  // Owned by whoever we run as: root in production (the front makes sure), the tester in tests.
  const owner = process.geteuid?.() ?? 0
  if (!st.isDirectory() || st.uid !== owner || (st.mode & 0o077) !== 0) {
    throw new QkError('ERR_STATE_DIR_UNSAFE',
      `${dir} must be a directory owned by uid ${owner} with mode 0700, is uid ${st.uid} mode ${(st.mode & 0o7777).toString(8)}`, { dir })
  }
}

function recordPath(dir: string, jti: string): string {
  return `${dir}/${createHash('sha256').update(jti).digest('hex')}`
}

function replayed(jti: string): QkError {
  return new QkError('ERR_TOKEN_REPLAYED', `token jti ${JSON.stringify(jti.slice(0, 64))} was already used to start a QEMU`)
}
