import t from 'tap'
import { mkdirSync, rmSync } from 'node:fs'
import { QkError } from '../../src/emulator/errors.ts'
import { carriesVm, findTarget } from '../../src/emulator/target.ts'
import { fakeOps, fakeProc, launcher } from '../helpers/fakeproc.ts'

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
  const found = findTarget(q(root), fakeOps())
  t.same({ pid: found.pid, startTime: found.startTime }, { pid: 500, startTime: '777' })
})

t.test('none: ERR_TARGET_NOT_FOUND', async (t) => {
  t.throws(() => findTarget(q(fakeProc(t, noise)), fakeOps()), { code: 'ERR_TARGET_NOT_FOUND', message: /got 0$/ })
})

t.test('two: ERR_TARGET_AMBIGUOUS naming every pid', async (t) => {
  const root = fakeProc(t, [...noise, launcher(500, U, N), launcher(501, U, N, { argv: ['/usr/bin/virt-launcher', `--kubevirt.vm.uuid=${U}`, `-kubevirt.vm.name=${N}`] })])
  t.throws(() => findTarget(q(root), fakeOps()), { code: 'ERR_TARGET_AMBIGUOUS', message: /got 2: pids 500, 501/, details: { pids: [500, 501] } })
})

t.test('zombies, kernel threads and processes that vanish mid-scan are skipped', async (t) => {
  const root = fakeProc(t, [...noise, launcher(500, U, N, { state: 'Z' }), launcher(501, U, N), launcher(502, U, N)])
  rmSync(`${root}/502/cmdline`) // exited between readdir and open
  t.equal(findTarget(q(root), fakeOps()).pid, 501)
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
  t.equal(findTarget(q(root), fakeOps()).pid, 14)
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
  t.equal(findTarget(q(root), fakeOps()).pid, 600)
})

// Issue 8 item 3c: the scan looked only at the first 4 KiB of the command line, so an argv[0]
// longer than that was judged by its prefix.
t.test('argv[0] is matched whole, however long', async (t) => {
  const evil = `${'x'.repeat(4082)}/virt-launcher-evil`
  const root = fakeProc(t, [launcher(700, U, N, { argv: [evil, '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N] })])
  t.throws(() => findTarget(q(root), fakeOps()), { code: 'ERR_TARGET_NOT_FOUND', message: `expected 1 virt-launcher process with -kubevirt.vm.uuid ${U} -kubevirt.vm.name ${N}, got 0` })
  const long = `${'x'.repeat(5000)}/virt-launcher`
  const ok = fakeProc(t, [launcher(701, U, N, { argv: [long, '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N] })])
  t.equal(findTarget(q(ok), fakeOps()).pid, 701, 'a long path to the real name still matches')
})

// Issue 8 item 3: pidfd_open comes first, then stat and cmdline, then the pidfd again.
t.test('a claimant that dies right after pidfd_open is not pinned: ERR_TARGET_CHANGED', async (t) => {
  const root = fakeProc(t, [...noise, launcher(500, U, N)])
  const dead = new Set<number>()
  const ops = fakeOps({ dead })
  const open = ops.pidfdOpen.bind(ops)
  ops.pidfdOpen = (pid: number) => {
    const fd = open(pid)
    dead.add(pid) // the pid is recycled at this instant
    return fd
  }
  t.throws(() => findTarget(q(root), ops), { code: 'ERR_TARGET_CHANGED', message: 'target pid 500 changed during the check: it exited' })
  t.same(ops.closed, [100], 'its pidfd is closed')
})

// Issue 8 item 4: a claimant counts only once it proves itself; a failed read is an error.
t.test('claimants must prove themselves; read errors are errors, not misses', async (t) => {
  const root = fakeProc(t, [...noise, launcher(500, U, N), launcher(501, U, N), launcher(502, U, N)])
  const holds = (pids: number[]) => (p: { pid: number }) => {
    if (!pids.includes(p.pid)) throw new QkError('ERR_SECRET_MISSING', `no token in ${p.pid}`, { pid: p.pid })
  }
  const ops = fakeOps()
  t.equal(findTarget(q(root), ops, holds([501])).pid, 501, 'strangers 500 and 502 do not block the start')
  t.same(ops.closed, [100, 102], 'the strangers\' pidfds are closed, the target\'s kept')
  t.throws(() => findTarget(q(root), fakeOps(), holds([500, 502])), { code: 'ERR_TARGET_AMBIGUOUS', message: `expected 1 virt-launcher process for VM ${U} holding its token, got 2: pids 500, 502` })
  t.throws(() => findTarget(q(root), fakeOps(), holds([])), { code: 'ERR_TARGET_NOT_FOUND', message: `expected 1 virt-launcher process for VM ${U} holding its token, got 0 of 3 claimants: pids 500, 501, 502` })
  t.throws(() => findTarget(q(root), fakeOps(), () => { throw new QkError('ERR_OS', 'openat2 failed: errno 5') }), { code: 'ERR_OS', message: 'openat2 failed: errno 5' })
  const one = fakeProc(t, [launcher(500, U, N)])
  t.throws(() => findTarget(q(one), fakeOps(), holds([])), { code: 'ERR_SECRET_MISSING', message: 'no token in 500' }, 'a single claimant says why')
  rmSync(`${one}/500/cmdline`)
  mkdirSync(`${one}/500/cmdline`)
  t.throws(() => findTarget(q(one), fakeOps()), { code: 'ERR_OS', message: `cannot read ${one}/500/stat or cmdline of a live claimant` }, 'unreadable cmdline of a live process')
})
