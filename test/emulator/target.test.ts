import t from 'tap'
import { rmSync } from 'node:fs'
import { carriesVm, findTarget } from '../../src/emulator/target.ts'
import { fakeProc, launcher } from '../helpers/fakeproc.ts'

const U = '1234-5678'
const N = 'testvm'
const q = (procRoot: string) => ({ procRoot, launcherName: 'virt-launcher', uuid: U, name: N })
const noise = [
  { pid: 1, argv: ['/sbin/init'] },
  { pid: 2, argv: [] }, // kernel thread: empty cmdline
  { pid: 300, argv: ['/usr/bin/bash', '-c', `virt-launcher -kubevirt.vm.uuid ${U} -kubevirt.vm.name ${N}`] },
  launcher(400, 'other-uuid', 'othervm'),
]

t.test('exactly one launcher for the VM is found, with its start time', async (t) => {
  const root = fakeProc(t, [...noise, launcher(500, U, N, { startTime: '777' })])
  t.same(findTarget(q(root)), { pid: 500, startTime: '777' })
})

t.test('none: ERR_TARGET_NOT_FOUND', async (t) => {
  t.throws(() => findTarget(q(fakeProc(t, noise))), { code: 'ERR_TARGET_NOT_FOUND', message: /got 0$/ })
})

t.test('two: ERR_TARGET_AMBIGUOUS naming every pid', async (t) => {
  const root = fakeProc(t, [...noise, launcher(500, U, N), launcher(501, U, N, { argv: ['/usr/bin/virt-launcher', `--kubevirt.vm.uuid=${U}`, `-kubevirt.vm.name=${N}`] })])
  t.throws(() => findTarget(q(root)), { code: 'ERR_TARGET_AMBIGUOUS', message: /got 2: pids 500, 501/, details: { pids: [500, 501] } })
})

t.test('zombies, kernel threads and processes that vanish mid-scan are skipped', async (t) => {
  const root = fakeProc(t, [...noise, launcher(500, U, N, { state: 'Z' }), launcher(501, U, N), launcher(502, U, N)])
  rmSync(`${root}/502/cmdline`) // exited between readdir and open
  t.equal(findTarget(q(root)).pid, 501)
})

t.test('argv[0] is matched by basename as a whole', async (t) => {
  const argv = (a0: string) => [a0, '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N]
  const root = fakeProc(t, [
    { pid: 10, argv: argv('virt-launcher-evil') },
    { pid: 11, argv: argv('/opt/virt-launcher/x') },
    { pid: 12, argv: argv('xvirt-launcher') },
    { pid: 13, argv: argv('virt-launche') },
    { pid: 14, argv: argv('/usr/local/bin/virt-launcher') },
  ])
  t.equal(findTarget(q(root)).pid, 14)
})

t.test('flags: Go forms, whole arguments, each exactly once', async (t) => {
  const ok = (...args: string[]) => carriesVm(['virt-launcher', ...args], U, N)
  t.ok(ok('-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N))
  t.ok(ok('--kubevirt.vm.uuid', U, '--kubevirt.vm.name', N))
  t.ok(ok(`-kubevirt.vm.uuid=${U}`, `--kubevirt.vm.name=${N}`))
  t.ok(ok('-v', '-kubevirt.vm.name', N, '-x=1', '-kubevirt.vm.uuid', U))
  t.notOk(ok('-kubevirt.vm.uuid', `${U}x`, '-kubevirt.vm.name', N), 'a longer uuid')
  t.notOk(ok('-kubevirt.vm.uuid', U.slice(1), '-kubevirt.vm.name', N), 'a shorter uuid')
  t.notOk(ok(`-kubevirt.vm.uuid=${U} -kubevirt.vm.name=${N}`), 'both in one argument')
  t.notOk(ok('-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N, '-kubevirt.vm.uuid', 'other'), 'two uuids')
  t.notOk(ok('-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N, '-kubevirt.vm.name', N), 'a repeated name')
  t.notOk(ok('---kubevirt.vm.uuid', U, '-kubevirt.vm.name', N), 'three dashes')
  t.notOk(ok('--', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N), 'after --')
  t.notOk(ok('-kubevirt.vm.uuid', U, '-kubevirt.vm.name'), 'a flag without its value')
  t.notOk(ok('-kubevirt.vm.uuid', U), 'no name')
})

t.test('long command lines are read whole', async (t) => {
  const root = fakeProc(t, [launcher(600, U, N, { argv: ['virt-launcher', '-pad', 'x'.repeat(9000), '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N] })])
  t.equal(findTarget(q(root)).pid, 600)
})
