import t from 'tap'
import { chmodSync, mkdirSync, readdirSync } from 'node:fs'
import { checkNotReplayed, recordOnce } from '../../src/emulator/replay.ts'
import { NOW, NOW_S, tempDir } from '../helpers/tokens.ts'

t.test('each jti starts one QEMU: ERR_TOKEN_REPLAYED', async (t) => {
  const dir = `${tempDir(t)}/state`
  recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, NOW, 5)
  t.throws(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, NOW, 5), { code: 'ERR_TOKEN_REPLAYED' })
  t.throws(() => checkNotReplayed(dir, 'a'), { code: 'ERR_TOKEN_REPLAYED' })
  t.doesNotThrow(() => checkNotReplayed(dir, 'b'))
  recordOnce(dir, { jti: 'b', exp: NOW_S + 50 }, NOW, 5)
  t.equal(readdirSync(dir).length, 2)
})

t.test('records of expired tokens are purged', async (t) => {
  const dir = `${tempDir(t)}/state`
  recordOnce(dir, { jti: 'old', exp: NOW_S - 100 }, new Date((NOW_S - 110) * 1000), 5)
  recordOnce(dir, { jti: 'new', exp: NOW_S + 50 }, NOW, 5)
  t.equal(readdirSync(dir).length, 1)
})

t.test('the state dir must be ours and private: ERR_STATE_DIR_UNSAFE', async (t) => {
  const dir = `${tempDir(t)}/state`
  mkdirSync(dir, { mode: 0o755 })
  chmodSync(dir, 0o755)
  t.throws(() => recordOnce(dir, { jti: 'a', exp: NOW_S + 50 }, NOW, 5), { code: 'ERR_STATE_DIR_UNSAFE' })
})
