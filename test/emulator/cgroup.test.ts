import t from 'tap'
import { readFileSync } from 'node:fs'
import { ownCgroupProcs, planJoins, warmCgroupLock } from '../../src/emulator/cgroup.ts'
import { MOUNTINFO } from '../helpers/fakeproc.ts'

t.test('each v1 hierarchy and the v2 one map to a directory under the cgroup root', async (t) => {
  const target = '4:memory:/pods/a\n3:cpu,cpuacct:/pods/a\n2:name=systemd:/\n0::/pods/a\n'
  t.same(planJoins(target, MOUNTINFO, '/sys/fs/cgroup'), [
    { hierarchy: 'memory', dir: '/sys/fs/cgroup/memory/pods/a' },
    { hierarchy: 'cpu,cpuacct', dir: '/sys/fs/cgroup/cpu,cpuacct/pods/a' },
    { hierarchy: 'name=systemd', dir: '/sys/fs/cgroup/systemd' },
    { hierarchy: '', dir: '/sys/fs/cgroup/unified/pods/a' },
  ])
})

t.test('a mount of a sub-tree (mountinfo field 4) is accounted for', async (t) => {
  const mi = '50 1 0:40 /kubepods /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n'
  t.same(planJoins('1:pids:/kubepods/pod1\n', mi, '/sys/fs/cgroup'), [{ hierarchy: 'pids', dir: '/sys/fs/cgroup/pids/pod1' }])
  t.throws(() => planJoins('1:pids:/elsewhere\n', mi, '/sys/fs/cgroup'), { code: 'ERR_CGROUP_JOIN', message: /outside the mounted sub-tree/ })
})

t.test('refusals: unmounted hierarchy, odd paths, garbage', async (t) => {
  t.throws(() => planJoins('9:rdma:/x\n', MOUNTINFO, '/sys/fs/cgroup'), { code: 'ERR_CGROUP_JOIN', message: /no mount .* "rdma"/ })
  t.throws(() => planJoins('4:memory:/pods/../..\n', MOUNTINFO, '/sys/fs/cgroup'), { code: 'ERR_CGROUP_JOIN' })
  t.throws(() => planJoins('0::/pods/a (deleted)\n', MOUNTINFO, '/sys/fs/cgroup'), { code: 'ERR_CGROUP_JOIN' })
  t.throws(() => planJoins('garbage\n', MOUNTINFO, '/sys/fs/cgroup'), { code: 'ERR_CGROUP_JOIN', message: /unparsable/ })
  t.throws(() => planJoins('4:memory:/x\n', MOUNTINFO, '/elsewhere'), { code: 'ERR_CGROUP_JOIN' })
})

t.test('this machine\'s own hierarchies all map', async (t) => {
  const joins = planJoins(readFileSync('/proc/self/cgroup', 'utf8'), readFileSync('/proc/self/mountinfo', 'utf8'), '/sys/fs/cgroup')
  t.ok(joins.length > 0)
  for (const j of joins) t.match(j.dir, /^\/sys\/fs\/cgroup\//)
})

t.test('warming the cgroup lock never fails a launch and leaves us where we were', async (t) => {
  await t.resolves(warmCgroupLock(ownCgroupProcs('/nonexistent-proc', '/sys/fs/cgroup')), 'nothing to read: resolves')
  const before = readFileSync('/proc/self/cgroup', 'utf8')
  await t.resolves(warmCgroupLock(ownCgroupProcs('/proc', '/sys/fs/cgroup')))
  t.equal(readFileSync('/proc/self/cgroup', 'utf8'), before, 'a move to where we already are')
})
