import t from 'tap'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { acquireUidLease, checkUidFree, type LeaseOps } from '../../src/emulator/uid-lease.ts'
import { tempDir } from '../helpers/tokens.ts'
import { refusal } from '../helpers/refusal.ts'

function world(t: Parameters<typeof tempDir>[0], alive: Record<number, string> = {}) {
  const state = `${tempDir(t)}/state`
  mkdirSync(state, { mode: 0o700 })
  let locked = false
  const ops: LeaseOps = {
    tryLock: () => !locked,
    sleep: () => {},
    startTimeOf: (pid) => alive[pid] ?? null,
  }
  return { state, ops, lockOthers: (v: boolean) => { locked = v } }
}
const me = { pid: 500, startTime: '900' }
const pod = { pid: 40, startTime: '77' }
const vm = (uuid: string) => ({ uuid, name: `${uuid}-name` })


t.test('the first launch for a uid takes its lease; the record names VM, pid and start time', async (t) => {
  const w = world(t)
  const l = acquireUidLease(w.state, 20001, vm('vm-a'), me, w.ops)
  l.commit(pod)
  l.release()
  t.same(JSON.parse(readFileSync(`${w.state}/uids/20001`, 'utf8')), { vm: 'vm-a', name: 'vm-a-name', pid: 500, startTime: '900', launcher: { pid: 40, startTime: '77' } })
})

t.test('another VM is refused while the holder lives; free once it exits or its pid is reused', async (t) => {
  const w = world(t, { 500: '900' })
  const first = acquireUidLease(w.state, 20001, vm('vm-a'), me, w.ops)
  first.commit(pod)
  first.release()
  t.same(refusal(() => acquireUidLease(w.state, 20001, vm('vm-b'), { pid: 600, startTime: '1' }, w.ops)), {
    code: 'ERR_UID_IN_USE', message: 'uid 20001 belongs to VM vm-a while its QEMU (pid 500) lives; this launch is for VM vm-b',
  })
  t.equal(refusal(() => checkUidFree(w.state, 20001, 'vm-b', w.ops))?.code, 'ERR_UID_IN_USE', 'explain predicts it')
  t.equal(refusal(() => acquireUidLease(w.state, 20001, vm('vm-a'), { pid: 601, startTime: '2' }, w.ops).release()), undefined, 'the same VM (a restart) may take it')
  const reused = world(t, { 500: '901' })
  const l = acquireUidLease(reused.state, 20001, vm('vm-a'), me, reused.ops)
  l.commit(pod)
  l.release()
  t.equal(refusal(() => acquireUidLease(reused.state, 20001, vm('vm-b'), { pid: 600, startTime: '1' }, reused.ops).release()), undefined,
    'pid 500 now has another start time: the old QEMU is gone')
  t.equal(refusal(() => acquireUidLease(w.state, 20002, vm('vm-b'), { pid: 600, startTime: '1' }, w.ops).release()), undefined, 'other uids are unaffected')
})

t.test('a lock held past the bound is refused, and nothing is written', async (t) => {
  const w = world(t)
  w.lockOthers(true)
  t.same(refusal(() => acquireUidLease(w.state, 20001, vm('vm-a'), me, w.ops)), {
    code: 'ERR_UID_IN_USE', message: 'another launch for uid 20001 has held its lease for over 2000 ms',
  })
  t.notOk(existsSync(`${w.state}/uids/20001`))
})

t.test('a state dir whose uids/ is not ours and 0700 is refused; a missing state dir is made', async (t) => {
  const w = world(t)
  mkdirSync(`${w.state}/uids`, { mode: 0o755 })
  t.same(refusal(() => acquireUidLease(w.state, 20001, vm('vm-a'), me, w.ops)), {
    code: 'ERR_STATE_DIR_UNSAFE', message: `${w.state}/uids must be a directory owned by uid ${process.geteuid?.()} with mode 0700, is uid ${process.geteuid?.()} mode 755`,
  })
  const fresh = `${tempDir(t)}/state`
  acquireUidLease(fresh, 20001, vm('vm-a'), me, w.ops).release()
  t.ok(existsSync(`${fresh}/uids`), 'state dir and uids/ made on first use')
})

t.test('the agent does not wait for a held lock: refused at once, without a sleep', async (t) => {
  const w = world(t)
  w.lockOthers(true)
  let slept = 0
  const ops = { ...w.ops, sleep: () => { slept++ } }
  t.same(refusal(() => acquireUidLease(w.state, 20001, vm('vm-a'), me, ops, 0)), {
    code: 'ERR_UID_IN_USE', message: 'another launch for uid 20001 holds its lease lock; the agent does not wait for it',
  })
  t.equal(slept, 0)
})

t.test('a lease written before name and launcher existed still counts', async (t) => {
  const w = world(t, { 500: '900' })
  mkdirSync(`${w.state}/uids`, { mode: 0o700 })
  writeFileSync(`${w.state}/uids/20001`, JSON.stringify({ vm: 'vm-a', pid: 500, startTime: '900' }))
  t.equal(refusal(() => acquireUidLease(w.state, 20001, vm('vm-b'), { pid: 600, startTime: '1' }, w.ops))?.code, 'ERR_UID_IN_USE')
  writeFileSync(`${w.state}/uids/20001`, JSON.stringify({ vm: 'vm-a', pid: 500, startTime: '900', launcher: { pid: 'x' } }))
  t.same(refusal(() => acquireUidLease(w.state, 20001, vm('vm-b'), { pid: 600, startTime: '1' }, w.ops)), {
    code: 'ERR_INTERNAL', message: `the uid lease ${w.state}/uids/20001 is not a lease record`,
  })
})
