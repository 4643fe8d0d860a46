// collectStatus against fake /proc and cgroup trees: which leases count, what each entry says,
// the v1-before-v2 rule, kubelet's working set, and the refusals.
import t, { type Test } from 'tap'
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { collectStatus, type StatusConfig } from '../../src/emulator/status/collect.ts'
import type { SkippedLease } from '../../src/emulator/status/leases.ts'
import { parseLease } from '../../src/emulator/status/leases.ts'
import { fakeProc, type FakeProcess } from '../helpers/fakeproc.ts'
import { tempDir } from '../helpers/tokens.ts'

const A = '11111111-aaaa-4aaa-8aaa-000000000001'
const B = '22222222-bbbb-4bbb-8bbb-000000000002'
const V1 = ['4:memory:/pods/a', '3:cpu,cpuacct:/pods/a', '2:name=systemd:/pods/a', '0::/pods/a', ''].join('\n')

interface Proc extends FakeProcess {
  uid?: number
  ns?: Record<string, string>
}

/** A node: fake /proc (with status, ns links, uptime), a cgroup tree under ROOT/cg, a state dir. */
function node(t: Test, procs: Proc[], opts: { mountinfo?: (cg: string) => string } = {}) {
  const base = tempDir(t)
  const cg = `${base}/cg`
  const mountinfo = (opts.mountinfo ?? hybrid)(cg)
  const proc = fakeProc(t, procs, { mountinfo })
  writeFileSync(`${proc}/uptime`, '5000.50 9000.00\n')
  for (const p of procs) {
    writeFileSync(`${proc}/${p.pid}/status`, `Name:\tx\nUmask:\t0022\nState:\tS\nUid:\t${p.uid ?? 20001}\t${p.uid ?? 20001}\t0\t0\nGid:\t1\t1\t1\t1\n`)
    mkdirSync(`${proc}/${p.pid}/ns`)
    for (const [ns, ino] of Object.entries(p.ns ?? { mnt: '4026532001', net: '4026532002' })) symlinkSync(`${ns}:[${ino}]`, `${proc}/${p.pid}/ns/${ns}`)
  }
  const state = `${base}/state`
  mkdirSync(`${state}/uids`, { recursive: true, mode: 0o700 })
  const cfg: StatusConfig = { proc_root: proc, cgroup_root: cg, state_dir: state }
  return {
    cfg,
    proc,
    lease: (uid: number | string, rec: unknown) => writeFileSync(`${state}/uids/${uid}`, typeof rec === 'string' ? rec : JSON.stringify(rec)),
    file: (rel: string, text: string) => {
      mkdirSync(dirname(`${cg}/${rel}`), { recursive: true })
      writeFileSync(`${cg}/${rel}`, text)
    },
  }
}

const hybrid = (cg: string) => [
  `32 31 0:29 / ${cg}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct`,
  `35 31 0:32 / ${cg}/memory rw,relatime - cgroup cgroup rw,memory`,
  `40 31 0:37 / ${cg}/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd`,
  `41 31 0:38 / ${cg}/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate`,
  '',
].join('\n')
const unifiedOnly = (cg: string) => `30 23 0:26 / ${cg} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n`

const NOW = 1_790_000_000_123_456_789n
const now = () => NOW
const qemu = (pid: number, more: Partial<Proc> = {}): Proc => ({ pid, argv: ['qemu-system-x86_64', '-name', 'x'], cgroup: V1, ...more })
const launcher = (pid: number, more: Partial<Proc> = {}): Proc => ({ pid, argv: ['virt-launcher'], cgroup: V1, ...more })

function v1Pod(n: ReturnType<typeof node>, dir = 'pods/a') {
  n.file(`cpu,cpuacct/${dir}/cpuacct.usage`, '123456789012345\n')
  n.file(`memory/${dir}/memory.usage_in_bytes`, '1000000\n')
  // inactive_file is this cgroup's own; kubelet subtracts the hierarchical total_inactive_file.
  n.file(`memory/${dir}/memory.stat`, 'cache 5\ninactive_file 999\nactive_file 1\ntotal_inactive_file 300000\n')
  // v2 files that must not be read while v1 carries the controller
  n.file(`unified/${dir}/cpu.stat`, 'usage_usec 7\nuser_usec 3\n')
}

t.test('a live VM with the new lease: every fact, CPU and working set from v1 on a hybrid node', async (t) => {
  const n = node(t, [qemu(300, { startTime: '100000' }), launcher(200, { startTime: '50000' })])
  v1Pod(n)
  n.lease(20001, { vm: A, name: 'vm-a', pid: 300, startTime: '100000', launcher: { pid: 200, startTime: '50000' } })
  const entries = collectStatus(n.cfg, undefined, { now })
  t.same(entries, [{
    uid: 20001,
    vm: A,
    name: 'vm-a',
    qemu: {
      pid: 300, helperPid: null, startTime: '100000', uid: 20001,
      namespaces: { mnt: '4026532001', net: '4026532002', ipc: null, uts: null, cgroup: null, pid: null, user: null },
      uptimeSeconds: 4000, // (500050 - 100000) ticks / 100
    },
    launcher: { pid: 200, alive: true },
    cgroup: '/pods/a',
    cpu: { timestamp: NOW, usageCoreNanoSeconds: 123456789012345n, source: 'v1', dir: `${n.cfg.cgroup_root}/cpu,cpuacct/pods/a` },
    memory: { timestamp: NOW, workingSetBytes: 700000n, source: 'v1', dir: `${n.cfg.cgroup_root}/memory/pods/a` },
    problems: [],
  }])
})

t.test('an old lease (vm, pid, startTime only) is listed without name and launcher', async (t) => {
  const n = node(t, [qemu(300)])
  v1Pod(n)
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  const [e] = collectStatus(n.cfg, undefined, { now })
  t.equal(e?.name, null)
  t.equal(e?.launcher, null)
  t.equal(e?.cpu?.usageCoreNanoSeconds, 123456789012345n)
})

t.test('a lease counts only while its pid has the recorded start time', async (t) => {
  const n = node(t, [qemu(300), qemu(301)])
  v1Pod(n)
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  n.lease(20002, { vm: B, pid: 301, startTime: '999' }) // pid 301 is another process now
  n.lease(20003, { vm: 'gone', pid: 302, startTime: '1302' }) // no such pid
  t.same(collectStatus(n.cfg, undefined, { now }).map((e) => e.vm), [A])
})

t.test('a VM whose pid dies (and is reused) while it is read is dropped, not shown with another process\'s facts', async (t) => {
  const n = node(t, [qemu(300)])
  v1Pod(n)
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  // now() runs between the cgroup read and the closing start-time check.
  const recycle = () => {
    writeFileSync(`${n.proc}/300/stat`, '300 (x) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 9999 1000 10\n')
    return NOW
  }
  t.same(collectStatus(n.cfg, undefined, { now: recycle }), [])
})

t.test('the filter matches a uuid or a name exactly; a malformed one is refused', async (t) => {
  const n = node(t, [qemu(300), qemu(301, { uid: 20002 })])
  v1Pod(n)
  n.lease(20001, { vm: A, name: 'vm-a', pid: 300, startTime: '1300' })
  n.lease(20002, { vm: B, name: 'vm-b', pid: 301, startTime: '1301' })
  t.same(collectStatus(n.cfg, B, { now }).map((e) => e.vm), [B], 'by uuid')
  t.same(collectStatus(n.cfg, 'vm-a', { now }).map((e) => e.vm), [A], 'by name')
  t.same(collectStatus(n.cfg, 'vm', { now }), [], 'no prefix match')
  t.same(collectStatus(n.cfg, undefined, { now }).map((e) => e.vm), [A, B], 'all, in uid order')
  for (const bad of ['', '-vm', 'a/b', 'x'.repeat(254), 'vm\n']) {
    let got: unknown
    try {
      collectStatus(n.cfg, bad)
    } catch (e) {
      got = { name: (e as Error).name, code: (e as { code: string }).code, message: (e as Error).message }
    }
    t.same(got, { name: 'QkError', code: 'ERR_USAGE', message: 'the VM to show must be a uuid or name matching ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$' },
      JSON.stringify(bad.slice(0, 10)))
  }
})

t.test('locks, temp files and torn leases: the others are still listed, the torn one reported', async (t) => {
  const n = node(t, [qemu(300)])
  v1Pod(n)
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  n.lease('20001.lock', '')
  n.lease('20002.300.tmp', '{')
  n.lease(20003, '{"vm":')
  n.lease(20004, { vm: B, pid: -1, startTime: '1' })
  const skipped: SkippedLease[] = []
  t.same(collectStatus(n.cfg, undefined, { now, onSkip: (s) => skipped.push(s) }).map((e) => e.vm), [A])
  t.same(skipped, [{ uid: '20003', reason: 'not JSON' }, { uid: '20004', reason: 'no valid "pid"' }])
})

t.test('no uids directory yet: no VMs', async (t) => {
  const base = tempDir(t)
  t.same(collectStatus({ proc_root: base, cgroup_root: base, state_dir: `${base}/none` }), [])
})

t.test('an unreadable uids directory or mountinfo is ERR_OS naming the path', async (t) => {
  const refusal = (fn: () => unknown) => {
    try {
      fn()
    } catch (e) {
      return { name: (e as Error).name, code: (e as { code: string }).code, message: (e as Error).message }
    }
    return undefined
  }
  const base = tempDir(t)
  writeFileSync(`${base}/uids`, 'a file, not a directory')
  t.same(refusal(() => collectStatus({ proc_root: base, cgroup_root: base, state_dir: base })),
    { name: 'QkError', code: 'ERR_OS', message: `cannot list the uid leases in ${base}/uids: ENOTDIR` })
  const n = node(t, [qemu(300)])
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  rmSync(`${n.proc}/self/mountinfo`)
  t.same(refusal(() => collectStatus(n.cfg)),
    { name: 'QkError', code: 'ERR_OS', message: `cannot read ${n.proc}/self/mountinfo: ENOENT` })
})

t.test('lease records: each rule named', async (t) => {
  const ok = { vm: A, pid: 3, startTime: '7' }
  t.same(parseLease(5, JSON.stringify(ok)), { uid: 5, vm: A, name: null, pid: 3, startTime: '7', launcher: null })
  const cases: [unknown, string][] = [
    ['[]', 'no "vm"'],
    ['null', 'not a JSON object'],
    [{ ...ok, vm: '' }, 'no "vm"'],
    [{ ...ok, pid: 1.5 }, 'no valid "pid"'],
    [{ ...ok, startTime: 7 }, 'no valid "startTime"'],
    [{ ...ok, startTime: '7 8' }, 'no valid "startTime"'],
    [{ ...ok, name: 3 }, '"name" is not a string'],
    [{ ...ok, launcher: { pid: 2 } }, '"launcher" is not {"pid","startTime"}'],
    [{ ...ok, launcher: null }, '"launcher" is not {"pid","startTime"}'],
    [' '.repeat(4097), 'larger than 4096 bytes'],
  ]
  for (const [rec, reason] of cases) t.equal(parseLease(5, typeof rec === 'string' ? rec : JSON.stringify(rec)), reason, reason)
})

t.test('a v2-only node: cpu.stat usage_usec in ns, memory.current minus inactive_file floored at 0', async (t) => {
  const v2 = '0::/kubepods/pod-b\n'
  const n = node(t, [qemu(301, { cgroup: v2, uid: 20002 })], { mountinfo: unifiedOnly })
  n.file('kubepods/pod-b/cpu.stat', 'usage_usec 5000123\nuser_usec 4000000\nsystem_usec 1000123\n')
  n.file('kubepods/pod-b/memory.current', '500\n')
  n.file('kubepods/pod-b/memory.stat', 'anon 100\nfile 400\nactive_file 1\ninactive_file 800\n')
  n.lease(20002, { vm: B, pid: 301, startTime: '1301' })
  const [e] = collectStatus(n.cfg, undefined, { now })
  t.same(e?.cpu, { timestamp: NOW, usageCoreNanoSeconds: 5000123000n, source: 'v2', dir: `${n.cfg.cgroup_root}/kubepods/pod-b` })
  t.same(e?.memory, { timestamp: NOW, workingSetBytes: 0n, source: 'v2', dir: `${n.cfg.cgroup_root}/kubepods/pod-b` })
  t.same(e?.problems, [])
})

t.test('a hybrid node without a v1 memory line falls back to v2, and says what is missing', async (t) => {
  const n = node(t, [qemu(300, { cgroup: '3:cpu,cpuacct:/pods/a\n0::/pods/a\n' })])
  v1Pod(n)
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  const [x] = collectStatus(n.cfg, undefined, { now })
  t.equal(x?.cpu?.source, 'v1')
  t.equal(x?.memory, null, 'the unified tree has no memory.current on a hybrid node')
  t.same(x?.problems, [`memory: cannot read ${n.cfg.cgroup_root}/unified/pods/a/memory.current: ENOENT`])
})

t.test('hostile or broken cgroup facts leave the value out with the reason, never a wrong number', async (t) => {
  const n = node(t, [
    qemu(300, { cgroup: '4:memory:/pods/../../etc\n3:cpu,cpuacct:/pods/a\n0::/pods/../..\n' }),
    qemu(301, { cgroup: V1.replaceAll('/pods/a', '/pods/c'), uid: 20002 }),
  ])
  v1Pod(n)
  n.file('cpu,cpuacct/pods/c/cpuacct.usage', '12 34\n')
  n.file('memory/pods/c/memory.usage_in_bytes', '1000\n')
  n.file('memory/pods/c/memory.stat', 'total_inactive_file -5\n')
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  n.lease(20002, { vm: B, pid: 301, startTime: '1301' })
  const [a, b] = collectStatus(n.cfg, undefined, { now })
  t.equal(a?.cpu?.usageCoreNanoSeconds, 123456789012345n, 'cpu from the sane line')
  t.equal(a?.memory, null)
  t.same(a?.problems, ['memory: unusable cgroup path for "memory": "/pods/../../etc"; unusable cgroup path for "unified": "/pods/../.."'])
  t.equal(b?.cpu, null)
  t.equal(b?.memory, null)
  t.same(b?.problems, [
    `cpuacct: ${n.cfg.cgroup_root}/cpu,cpuacct/pods/c/cpuacct.usage: expected a decimal counter, got "12 34"; cannot read ${n.cfg.cgroup_root}/unified/pods/c/cpu.stat: ENOENT`,
    `memory: ${n.cfg.cgroup_root}/memory/pods/c/memory.stat: total_inactive_file is not a decimal counter; cannot read ${n.cfg.cgroup_root}/unified/pods/c/memory.current: ENOENT`,
  ])
})

t.test('with a pid namespace the lease names the enter helper: QEMU is its one child, whose uid and namespaces are shown', async (t) => {
  const n = node(t, [
    qemu(300, { uid: 0, ns: { pid: '4026531836', pid_for_children: '4026532999', mnt: '4026532001' } }),
    qemu(301, { ns: { pid: '4026532999', pid_for_children: '4026532999', mnt: '4026532001' } }),
  ])
  v1Pod(n)
  mkdirSync(`${n.proc}/300/task/300`, { recursive: true })
  writeFileSync(`${n.proc}/300/task/300/children`, '301 ')
  n.lease(20001, { vm: A, pid: 300, startTime: '1300' })
  const [e] = collectStatus(n.cfg, undefined, { now })
  t.equal(e?.qemu.pid, 301)
  t.equal(e?.qemu.helperPid, 300)
  t.equal(e?.qemu.startTime, '1300', 'the lease\'s (the helper\'s) start time')
  t.equal(e?.qemu.uid, 20001, 'QEMU\'s uid, not the helper\'s')
  t.equal(e?.qemu.namespaces.pid, '4026532999')
  t.same(e?.problems, [])
  writeFileSync(`${n.proc}/300/task/300/children`, '301 302\n')
  t.equal(collectStatus(n.cfg, undefined, { now })[0]?.qemu.pid, 300, 'two children: no guess, the lease\'s pid')
})

t.test('problems an operator must see: wrong uid, launcher gone, QEMU outside the launcher\'s cgroup', async (t) => {
  const n = node(t, [
    qemu(300, { uid: 0 }), launcher(200),
    qemu(301, { uid: 20002 }), launcher(201, { cgroup: V1.replaceAll('/pods/a', '/pods/other') }),
  ])
  v1Pod(n)
  n.lease(20001, { vm: A, pid: 300, startTime: '1300', launcher: { pid: 200, startTime: '1' } })
  n.lease(20002, { vm: B, pid: 301, startTime: '1301', launcher: { pid: 201, startTime: '1201' } })
  const [a, b] = collectStatus(n.cfg, undefined, { now })
  t.same(a?.launcher, { pid: 200, alive: false })
  t.same(a?.problems, ['the launcher (pid 200) has exited: QEMU outlives its pod', 'QEMU runs as uid 0, its lease is for uid 20001'])
  t.same(b?.launcher, { pid: 201, alive: true })
  t.same(b?.problems, ['QEMU is not in its launcher\'s cgroups: usage below is QEMU\'s own'])
})
