import t from 'tap'
import { writeFileSync } from 'node:fs'
import { pin, readPinned, recheck } from '../../src/emulator/pin.ts'
import { fakeOps, fakeProc, launcher, statLine } from '../helpers/fakeproc.ts'

t.test('pinning proves the pidfd names the process that was scanned', async (t) => {
  const root = fakeProc(t, [launcher(500, 'u', 'n', { startTime: '777' })])
  const ops = fakeOps()
  const p = pin({ pid: 500, startTime: '777' }, root, ops)
  t.equal(p.pid, 500)
  t.doesNotThrow(() => recheck(p, ops))
  t.match(readPinned(p, 'cgroup', ops), /memory/)
})

t.test('a recycled pid is detected by its start time: ERR_TARGET_CHANGED', async (t) => {
  const root = fakeProc(t, [launcher(500, 'u', 'n', { startTime: '777' })])
  const ops = fakeOps()
  t.throws(() => pin({ pid: 500, startTime: '776' }, root, ops), { code: 'ERR_TARGET_CHANGED', message: /start time 777, expected 776/ })
  const p = pin({ pid: 500, startTime: '777' }, root, ops)
  writeFileSync(`${root}/500/stat`, statLine({ pid: 500, argv: [], startTime: '999' }))
  t.throws(() => recheck(p, ops), { code: 'ERR_TARGET_CHANGED' })
  t.throws(() => readPinned(p, 'cgroup', ops), { code: 'ERR_TARGET_CHANGED' })
})

t.test('an exited or zombie target is detected', async (t) => {
  const root = fakeProc(t, [launcher(500, 'u', 'n', { startTime: '777' })])
  t.throws(() => pin({ pid: 500, startTime: '777' }, root, fakeOps({ dead: new Set([500]) })), { code: 'ERR_TARGET_CHANGED', message: /pidfd_open failed/ })
  const ops = fakeOps()
  const p = pin({ pid: 500, startTime: '777' }, root, ops)
  writeFileSync(`${root}/500/stat`, statLine({ pid: 500, argv: [], startTime: '777', state: 'Z' }))
  t.throws(() => recheck(p, ops), { code: 'ERR_TARGET_CHANGED', message: /exited/ })
  t.throws(() => readPinned(p, 'nonexistent', ops), { code: 'ERR_TARGET_CHANGED', message: /cannot be read/ })
})
