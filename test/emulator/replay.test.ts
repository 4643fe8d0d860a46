import t from 'tap'
import { createHash } from 'node:crypto'
import { chmodSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { checkNotReplayed, checkStateDir, purgeExpired, recordOnce } from '../../src/emulator/replay.ts'
import { NOW, NOW_S, tempDir } from '../helpers/tokens.ts'

const at = (s: number) => () => new Date(s * 1000)
const clock = () => NOW
const ME = { pid: 500, startTime: '900' }
const rec = (jti: string) => createHash('sha256').update(jti).digest('hex')

t.test('each jti starts one QEMU: ERR_TOKEN_REPLAYED', async (t) => {
  const dir = `${tempDir(t)}/state`
  recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME)
  const message = 'token jti "a" was already used to start a QEMU'
  t.throws(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, { pid: 501, startTime: '77' }), { code: 'ERR_TOKEN_REPLAYED', message })
  t.throws(() => checkNotReplayed(dir, 'a'), { code: 'ERR_TOKEN_REPLAYED', message })
  t.doesNotThrow(() => checkNotReplayed(dir, 'b'))
  recordOnce(dir, { jti: 'b', exp: NOW_S + 50 }, clock, 5, ME)
  t.same(readdirSync(dir).sort(), [rec('a'), rec('b')].sort(), 'exactly the two records, no temporary file left')
})

t.test('records of expired tokens are purged, the others survive', async (t) => {
  const dir = `${tempDir(t)}/state`
  recordOnce(dir, { jti: 'old', exp: NOW_S - 100 }, at(NOW_S - 110), 5, ME)
  recordOnce(dir, { jti: 'edge', exp: NOW_S - 5 }, at(NOW_S - 10), 5, ME)
  recordOnce(dir, { jti: 'new', exp: NOW_S + 50 }, clock, 5, ME)
  t.same(readdirSync(dir).sort(), [rec('edge'), rec('new')].sort(), '"old" expired beyond tolerance; "edge" is exactly at it and stays')
})

t.test('a record is dated by its exp the moment it exists', async (t) => {
  const dir = `${tempDir(t)}/state`
  recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME)
  t.equal(lstatSync(`${dir}/${rec('a')}`).mtimeMs, (NOW_S + 50) * 1000)
})

// Issue 8 item 1: a launch killed between creating its record and dating it used to leave a
// record dated "now", purged tolerance seconds later: the token could start a second QEMU.
// Records are now linked into place already dated; what a kill can leave is a temporary file,
// which never counts as a record and is purged once surely abandoned.
t.test('a launch killed mid-record leaves no record, only a temporary file that never matches', async (t) => {
  const dir = `${tempDir(t)}/state`
  mkdirSync(dir, { mode: 0o700 })
  const temp = `${dir}/.tmp-${'0'.repeat(32)}`
  writeFileSync(temp, '')
  t.doesNotThrow(() => checkNotReplayed(dir, 'a'))
  recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME)
  t.same(readdirSync(dir).sort(), [`.tmp-${'0'.repeat(32)}`, rec('a')].sort(), 'a fresh temporary file is left alone')
  purgeExpired(dir, new Date(Date.now() + 3601 * 1000), 5)
  t.same(readdirSync(dir), [], 'an hour later both are gone (the record expired long before)')
})

// Issue 8 item 1, the attack: the token check passed at NOW, the caller froze the chain until
// after exp + tolerance, another start purged the first use's record. The clock is read again
// once the record exists, so the resumed launch is refused.
t.test('a token that expired before its record existed is refused: ERR_TOKEN_EXPIRED', async (t) => {
  const dir = `${tempDir(t)}/state`
  t.throws(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, at(NOW_S + 56), 5, ME), {
    code: 'ERR_TOKEN_EXPIRED',
    message: '"exp" passed while the launch was checked: expected now <= exp + 5 s, got now = exp + 6 s',
  })
  t.same(readdirSync(dir), [rec('a')], 'the record stays (the token is used up either way)')
  t.doesNotThrow(() => recordOnce(dir, { jti: 'b', exp: NOW_S + 50 }, at(NOW_S + 55), 5, ME), 'exp + tolerance itself is still valid')
})

t.test('the state dir must be ours and private: ERR_STATE_DIR_UNSAFE', async (t) => {
  const dir = `${tempDir(t)}/state`
  mkdirSync(dir, { mode: 0o755 })
  chmodSync(dir, 0o755)
  t.throws(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME), {
    code: 'ERR_STATE_DIR_UNSAFE',
    message: `${dir} must be a directory owned by uid ${process.geteuid?.()} with mode 0700, is uid ${process.geteuid?.()} mode 755`,
  })
})

// Issue 8 item 5: the state dir was checked only at its last component.
t.test('every directory above the state dir is checked, and none may be a symlink: ERR_STATE_DIR_UNSAFE', async (t) => {
  const base = tempDir(t)
  mkdirSync(`${base}/open`, { mode: 0o777 })
  chmodSync(`${base}/open`, 0o777)
  t.throws(() => recordOnce(`${base}/open/state`, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME), {
    code: 'ERR_STATE_DIR_UNSAFE', message: `${base}/open/state: directory ${base}/open must not be writable by group or others, mode is 0777`,
  })
  mkdirSync(`${base}/real`, { mode: 0o700 })
  symlinkSync(`${base}/real`, `${base}/link`)
  t.throws(() => recordOnce(`${base}/link/state`, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME), {
    code: 'ERR_STATE_DIR_UNSAFE', message: `${base}/link/state: ${base}/link is a symlink; name the file itself`,
  })
})

// Issue 8 item 9: explain must predict the launch's refusal of an unsafe state dir, making nothing.
t.test('checkStateDir predicts ensureStateDir without creating anything', async (t) => {
  const base = tempDir(t)
  t.doesNotThrow(() => checkStateDir(`${base}/state`), 'a missing state dir under safe directories passes')
  t.same(readdirSync(base), [], 'and is not made')
  mkdirSync(`${base}/state`, { mode: 0o755 })
  chmodSync(`${base}/state`, 0o755)
  const me = process.geteuid?.()
  t.throws(() => checkStateDir(`${base}/state`), { code: 'ERR_STATE_DIR_UNSAFE', message: `${base}/state must be a directory owned by uid ${me} with mode 0700, is uid ${me} mode 755` })
  mkdirSync(`${base}/open`, { mode: 0o777 })
  chmodSync(`${base}/open`, 0o777)
  t.throws(() => checkStateDir(`${base}/open/state`), { code: 'ERR_STATE_DIR_UNSAFE', message: `${base}/open/state: directory ${base}/open must be owned by root and not writable by group or others, is uid ${me} mode 777` })
})

t.test('the record names its consumer; the same consumer asking again owns it, any other is a replay', async (t) => {
  const dir = `${tempDir(t)}/state`
  recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME)
  t.equal(readFileSync(`${dir}/${rec('a')}`, 'latin1'), '500 900\n', 'PID STARTTIME of the consumer')
  t.doesNotThrow(() => checkNotReplayed(dir, 'a', ME), 'the early check: its own record')
  t.doesNotThrow(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, ME), 'the agent recorded it, the same process falls back')
  const message = 'token jti "a" was already used to start a QEMU'
  t.throws(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, clock, 5, { pid: 500, startTime: '901' }), { code: 'ERR_TOKEN_REPLAYED', message },
    'a recycled pid is another process')
  t.throws(() => checkNotReplayed(dir, 'a', { pid: 501, startTime: '900' }), { code: 'ERR_TOKEN_REPLAYED', message })
  t.throws(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 56 }, at(NOW_S + 100), 5, ME), { code: 'ERR_TOKEN_EXPIRED' },
    'its own record still goes on to the clock')
  writeFileSync(`${dir}/${rec('old')}`, '')
  t.throws(() => recordOnce(dir, { jti: 'old', exp: NOW_S + 50 }, clock, 5, ME), { code: 'ERR_TOKEN_REPLAYED' }, 'an empty (older) record names nobody')
})
