// Stage: single use. libvirt writes <qemu:env> values into the domain log, so a token must start
// one QEMU and no more. Each accepted jti becomes a file in a root-only state dir, named by the
// jti's hash (the jti is signed, but a file name is no place for arbitrary strings) and dated by
// its exp. Records whose token has expired, tolerance included, can never match again and are
// purged. The order of facts, not timing, keeps this sound (a caller can freeze the chain at
// any step, e.g. with a cgroup freezer, for as long as it likes):
//   1. the record is made under a temporary name, dated, then link()ed into place: link fails
//      with EEXIST if the jti is recorded (the kernel arbitrates concurrent launches), and no
//      record is ever visible undated (a kill before its date would leave one purged at once);
//      The record's content names its consumer, `PID STARTTIME\n`: the process that becomes
//      QEMU (the front's, when the agent serves). A record that names the very process asking
//      (same pid, same start time: the chain execs in place) is its own, not a replay: the agent
//      recorded it, then died before its reply, and the front fell back to standalone;
//   2. only then is the clock read again: a purge removes a record only after its token has
//      expired, so a launch that got its record after such a purge sees that expiry here and is
//      refused. A token valid at this moment has its record in place until it expires.
import { closeSync, constants, futimesSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, unlinkSync, writeSync, type Stats } from 'node:fs'
import { createHash, randomBytes } from 'node:crypto'
import { QkError, errnoOf } from './errors.ts'
import { dirname } from 'node:path'
import { checkAncestors, type FileMeta } from './trusted-file.ts'

const STATE_CODES = { missing: 'ERR_STATE_DIR_UNSAFE', unsafe: 'ERR_STATE_DIR_UNSAFE' } as const

export interface ReplayRecord {
  jti: string
  exp: number
}

/** The process a launch is for: it becomes QEMU. Named by the replay record and the uid lease. */
export interface Consumer {
  pid: number
  startTime: string
}

const RECORD = /^[0-9a-f]{64}$/
const TEMP = /^\.tmp-[0-9a-f]{32}$/
/** A temporary file older than this belongs to a launch that was killed; it never counts as a record. */
const TEMP_MAX_AGE_S = 3600

/** Records the jti once; `now` is read after the record exists (see the order above). */
export function recordOnce(stateDir: string, t: ReplayRecord, now: () => Date, tolerance: number, consumer: Consumer): void {
  ensureStateDir(stateDir)
  const temp = `${stateDir}/.tmp-${randomBytes(16).toString('hex')}`
  let fd: number
  try {
    fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  } catch (err) {
    throw new QkError('ERR_OS', `cannot create a record in ${stateDir}: ${errnoOf(err) ?? 'error'}`, { stateDir })
  }
  try {
    try {
      writeSync(fd, consumerLine(consumer))
      futimesSync(fd, t.exp, t.exp)
    } finally {
      closeSync(fd)
    }
    linkSync(temp, recordPath(stateDir, t.jti))
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw new QkError('ERR_OS', `cannot record jti in ${stateDir}: ${errnoOf(err) ?? 'error'}`, { stateDir })
    // Our own record (see 1. above) goes on to the clock; anyone else's is a replay.
    if (!namesConsumer(stateDir, t.jti, consumer)) throw replayed(t.jti)
  } finally {
    try {
      unlinkSync(temp)
    } catch {
      // Purged by a concurrent launch; the record, if linked, stands on its own.
    }
  }
  const late = now().getTime() / 1000
  if (late > t.exp + tolerance) {
    throw new QkError('ERR_TOKEN_EXPIRED',
      `"exp" passed while the launch was checked: expected now <= exp + ${tolerance} s, got now = exp + ${Math.round(late - t.exp)} s`)
  }
  purgeExpired(stateDir, new Date(late * 1000), tolerance)
}

/** Would this token be refused as replayed (the cheap early answer; `explain`)? Writes nothing. */
export function checkNotReplayed(stateDir: string, jti: string, consumer?: Consumer): void {
  try {
    lstatSync(recordPath(stateDir, jti))
  } catch {
    return
  }
  if (consumer !== undefined && namesConsumer(stateDir, jti, consumer)) return
  throw replayed(jti)
}

function consumerLine(c: Consumer): string {
  return `${c.pid} ${c.startTime}\n`
}

/** A record made before records named their consumer (empty) names nobody. */
function namesConsumer(stateDir: string, jti: string, c: Consumer): boolean {
  try {
    return readFileSync(recordPath(stateDir, jti), 'latin1') === consumerLine(c)
  } catch {
    return false
  }
}

export function purgeExpired(stateDir: string, now: Date, tolerance: number): void {
  const nowS = now.getTime() / 1000
  for (const name of readdirSync(stateDir)) {
    const record = RECORD.test(name)
    if (!record && !TEMP.test(name)) continue
    const path = `${stateDir}/${name}`
    try {
      const st = lstatSync(path)
      // A record goes once its token can no longer pass verification; a temporary file once it
      // is surely abandoned (it is dated only just before its link).
      if (record ? st.mtimeMs / 1000 < nowS - tolerance : st.ctimeMs / 1000 < nowS - TEMP_MAX_AGE_S) unlinkSync(path)
    } catch {
      // A concurrent launch purged it first.
    }
  }
}

export function ensureStateDir(dir: string): void {
  // Made only when missing: the agent passes here three times per launch, and a thrown EEXIST
  // costs more than the lstat (checkStateDir inspects whatever is there either way).
  if (lstatSync(dir, { throwIfNoEntry: false }) === undefined) {
    try {
      mkdirSync(dir, { mode: 0o700 })
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw new QkError('ERR_OS', `cannot create state dir ${dir}: ${errnoOf(err) ?? 'error'}`, { dir })
    }
  }
  checkStateDir(dir)
}

/**
 * What a launch would refuse about the state dir, without making it (for `explain`): a missing
 * one passes (a launch makes it) once the directories above it are safe.
 */
export function checkStateDir(dir: string): void {
  // Owned by whoever we run as: root in production (the front makes sure), the tester in tests.
  const owner = process.geteuid?.() ?? 0
  // Whoever can write a directory above the state dir can swap it for one holding no records,
  // and a symlink anywhere on the way leads elsewhere: the same walk as for the config.
  const asOurs: FileMeta = (_, m) => (m.uid === owner ? { ...m, uid: 0 } : m)
  let st: Stats
  try {
    st = lstatSync(dir)
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw new QkError('ERR_STATE_DIR_UNSAFE', `cannot inspect state dir ${dir}: ${errnoOf(err) ?? 'error'}`, { dir })
    // A launch would make it: the directory it is made in must be as safe as its ancestors.
    const parent = dirname(dir)
    checkAncestors(parent, STATE_CODES, asOurs)
    const p = lstatSync(parent)
    const m = asOurs(parent, { uid: p.uid, mode: p.mode, isFile: false })
    if (!p.isDirectory() || m.uid !== 0 || ((m.mode & 0o022) !== 0 && (m.mode & 0o1000) === 0)) {
      throw new QkError('ERR_STATE_DIR_UNSAFE',
        `${dir}: directory ${parent} must be owned by root and not writable by group or others, is uid ${p.uid} mode ${(p.mode & 0o7777).toString(8)}`, { dir })
    }
    return
  }
  checkAncestors(dir, STATE_CODES, asOurs)
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
