// formatStatus: CRI's names and types in json, a safe table for humans, a refused format.
import t from 'tap'
import type { StatusEntry } from '../../src/emulator/status/collect.ts'
import { entriesFromJson, formatStatus, printable, type StatusFormat } from '../../src/emulator/status/format.ts'

const A = '11111111-aaaa-4aaa-8aaa-000000000001'
const ns = { mnt: '4026532001', net: '4026532002', ipc: '4026532003', uts: '4026532004', cgroup: '4026532005', pid: '4026531836', user: '4026531837' }
const entry = (more: Partial<StatusEntry> = {}): StatusEntry => ({
  uid: 20001,
  vm: A,
  name: 'vm-a',
  qemu: { pid: 300, helperPid: null, startTime: '100000', uid: 20001, namespaces: ns, uptimeSeconds: 4000 },
  launcher: { pid: 200, alive: true },
  cgroup: '/kubepods/pod-a',
  cpu: { timestamp: 1790000000123456789n, usageCoreNanoSeconds: 2n ** 60n + 1n, source: 'v1', dir: '/sys/fs/cgroup/cpu,cpuacct/kubepods/pod-a' },
  memory: { timestamp: 1790000000123456789n, workingSetBytes: 734003200n, source: 'v2', dir: '/sys/fs/cgroup/kubepods/pod-a' },
  problems: [],
  ...more,
})

t.test('json: ListContainerStats field names, 64-bit values as decimal strings, our facts under qemu_kube', async (t) => {
  const out = formatStatus([entry()], 'json')
  t.ok(out.endsWith('}\n'))
  t.same(JSON.parse(out), {
    stats: [{
      attributes: { id: A, metadata: { name: 'vm-a' }, labels: { 'qemu-kube/vm-uuid': A, 'qemu-kube/uid': '20001', 'qemu-kube/vm-name': 'vm-a' } },
      cpu: { timestamp: '1790000000123456789', usage_core_nano_seconds: { value: '1152921504606846977' } },
      memory: { timestamp: '1790000000123456789', working_set_bytes: { value: '734003200' } },
      qemu_kube: {
        uuid: A, name: 'vm-a', uid: 20001,
        qemu: { pid: 300, helper_pid: null, uid: 20001, start_time: '100000', namespaces: ns },
        launcher: { pid: 200, alive: true },
        cgroup: '/kubepods/pod-a',
        cgroup_dirs: { cpu: { source: 'v1', dir: '/sys/fs/cgroup/cpu,cpuacct/kubepods/pod-a' }, memory: { source: 'v2', dir: '/sys/fs/cgroup/kubepods/pod-a' } },
        uptime_seconds: 4000,
        problems: [],
      },
    }],
  })
})

t.test('json: a missing value is left out as protobuf JSON leaves unset messages out; no VMs is an empty list', async (t) => {
  const s = JSON.parse(formatStatus([entry({ cpu: null, memory: null, name: null, launcher: null })], 'json')).stats[0]
  t.notOk('cpu' in s)
  t.notOk('memory' in s)
  t.same(s.attributes.metadata, { name: A }, 'the uuid names a VM whose lease has no name')
  t.notOk('qemu-kube/vm-name' in s.attributes.labels)
  t.same(s.qemu_kube.cgroup_dirs, { cpu: null, memory: null })
  t.same(JSON.parse(formatStatus([], 'json')), { stats: [] })
})

t.test('human: one row per VM with its namespaces and problems', async (t) => {
  const out = formatStatus([entry(), entry({ vm: 'b', name: null, launcher: { pid: 201, alive: false }, cpu: null, memory: null, cgroup: null,
    qemu: { pid: 301, helperPid: 300, startTime: '1', uid: 0, namespaces: { ...ns, user: null }, uptimeSeconds: 90061 }, problems: ['the launcher (pid 201) has exited'] })], 'human')
  t.equal(out, [
    'UUID                                  NAME  UID               QEMU            LAUNCHER     UPTIME  CPU             MEMORY    CGROUP',
    `${A}  vm-a  20001             300             200          1h6m    1152921504.60s  700.0MiB  /kubepods/pod-a`,
    '  namespaces mnt:4026532001 net:4026532002 ipc:4026532003 uts:4026532004 cgroup:4026532005 pid:4026531836 user:4026531837',
    'b                                     -     20001(runs as 0)  301(under 300)  201(exited)  1d1h    -               -         -',
    '  namespaces mnt:4026532001 net:4026532002 ipc:4026532003 uts:4026532004 cgroup:4026532005 pid:4026531836 user:?',
    '  ! the launcher (pid 201) has exited',
    '',
  ].join('\n'))
  t.equal(formatStatus([], 'human'), 'no running VM launched by qemu-kube on this node\n')
})

t.test('human: terminal control bytes from /proc or the leases are escaped', async (t) => {
  const out = formatStatus([entry({ cgroup: '/pods/\x1b]0;owned\x07\x9b2J', problems: ['bad\nline'] })], 'human')
  t.notMatch(out, /[\x00-\x09\x0b-\x1f\x7f-\uffff]/, 'only printable ASCII and newlines')
  t.match(out, '/pods/\\x1b]0;owned\\x07\\x9b2J')
  t.match(out, '  ! bad\\x0aline\n')
  t.equal(printable('\u{1f600}'), '\\u{1f600}')
})

t.test('an unknown format is refused with ERR_USAGE', async (t) => {
  let got: unknown
  try {
    formatStatus([], 'yaml' as StatusFormat)
  } catch (e) {
    got = { name: (e as Error).name, code: (e as { code: string }).code, message: (e as Error).message }
  }
  t.same(got, { name: 'QkError', code: 'ERR_USAGE', message: '--output must be one of human, json, got "yaml"' })
})

t.test('entriesFromJson inverts the json exactly (the CLI prints the agent\'s reply as a table)', async (t) => {
  const entries = [entry(), entry({ vm: 'b', name: null, launcher: null, cpu: null, memory: null, cgroup: null,
    qemu: { pid: 301, helperPid: 300, startTime: '1', uid: null, namespaces: { ...ns, user: null }, uptimeSeconds: null }, problems: ['p'] })]
  t.same(entriesFromJson(formatStatus(entries, 'json')), entries)
  t.equal(formatStatus(entriesFromJson(formatStatus(entries, 'json')), 'human'), formatStatus(entries, 'human'))
  for (const bad of ['', '{}', '{"stats":[{}]}', '{"stats":{}}']) {
    let got: unknown
    try {
      entriesFromJson(bad)
    } catch (e) {
      got = { code: (e as { code: string }).code, message: (e as Error).message }
    }
    t.same(got, { code: 'ERR_INTERNAL', message: `the status reply is not formatStatus json (${bad.length} bytes)` }, JSON.stringify(bad))
  }
})
