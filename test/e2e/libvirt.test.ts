// Issue item 4, against a real libvirtd: qemu-kube installed under a temp prefix is the domains'
// <emulator>. libvirt probes it (unprivileged, on the host, no pod); a domain started through
// it runs as the qemu user with no capabilities inside its pod's namespaces and cgroups, with
// the pid libvirt tracks, and answers on its monitor; `virsh destroy` leaves libvirt clean;
// eight domains started at once each land in their own pod. Refusals: refusals.test.ts.
import t from 'tap'
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { requireLibvirt } from '../helpers/libvirt.ts'
import {
  cmdline, logSince, monitorStatus, logSize, nsInode, probeRecorder, qemuKubeLines, qemuProcesses, QEMU_USER, setupE2e, status, uidOf,
  until, virsh, type Pod, type Vm,
} from '../helpers/e2e.ts'
import { domainPid } from '../helpers/libvirt.ts'

if (!requireLibvirt(t)) process.exit(0)

const e = await setupE2e(t, 'run')
const recorder = probeRecorder(t, e.inst)
e.inst.writeConfig({ ...e.config, probe_qemu_binary: recorder.binary })
const UID = uidOf(QEMU_USER)
// The pod's namespaces QEMU joins; its mount namespace is its own, derived from the pod's.
const POD_NS = ['net', 'ipc', 'uts', 'cgroup'] as const

/** Every check that QEMU `pid` runs for `vm` inside pod `p` as libvirt started it. */
async function checkInPod(t: Test, vm: Vm, p: Pod, pid: number) {
  t.match(readlinkSync(`/proc/${pid}/exe`), /\/qemu-system-x86_64$/, 'libvirt\'s pid is QEMU itself (exec in place)')
  t.ok(cmdline(pid).includes(`guest=${vm.name},debug-threads=on`), 'with this domain\'s argv')
  for (const ns of POD_NS) t.equal(nsInode(pid, ns), p.ns[ns], `${ns} namespace is the pod's`)
  for (const ns of POD_NS) t.not(nsInode(pid, ns), nsInode(process.pid, ns), `${ns} namespace is not the host's`)
  t.equal(nsInode(pid, 'user'), nsInode(process.pid, 'user'), 'user namespace untouched')
  t.not(nsInode(pid, 'mnt'), p.ns.mnt, 'its mount namespace is its own: not the pod\'s')
  t.not(nsInode(pid, 'mnt'), nsInode(process.pid, 'mnt'), 'and not the host\'s')
  t.equal(readFileSync(`/proc/${pid}/cgroup`, 'utf8'), readFileSync(`/proc/${p.pid}/cgroup`, 'utf8'), 'cgroups are the pod\'s, in every hierarchy')
  const procs = readFileSync(`${p.cgroups.v2 ?? Object.values(p.cgroups.v1)[0]}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number)
  t.ok(procs.includes(pid), 'QEMU is listed in the pod\'s cgroup')
  const st = status(pid)
  t.equal(st.Uid, `${vm.uid}\t${vm.uid}\t${vm.uid}\t${vm.uid}`, `runs as the VM's own uid ${vm.uid} (real, effective, saved, fs)`)
  t.equal(st.Gid, `${vm.uid}\t${vm.uid}\t${vm.uid}\t${vm.uid}`, 'and its own gid')
  t.equal(st.Groups, String(vm.uid), 'and no other group')
  for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) t.equal(BigInt(`0x${st[k]}`), 0n, `${k} is empty`)
  t.equal(st.NoNewPrivs, '1', 'no_new_privs')
  const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')
  t.notOk(env.some((v) => v.startsWith('KUBEVIRT_SECRET=')), 'no token in QEMU\'s environment')
}

t.test('capability probe through qemu-kube: virsh domcapabilities succeeds, the probe QEMU ran unprivileged on the host', async (t) => {
  const r = await virsh(['domcapabilities', '--emulatorbin', e.inst.front, '--virttype', 'qemu', '--arch', 'x86_64'])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, `<path>${e.inst.front}</path>`, 'libvirt describes qemu-kube as the emulator')
  t.match(r.stdout, /<domain>qemu<\/domain>/)
  t.match(r.stdout, /<machine[^>]*>pc-i440fx-7\.2<\/machine>|<machine>pc-i440fx-/, 'with QEMU\'s machine types (the probe reached a real QEMU)')
  const records = readdirSync(recorder.recordDir)
  t.ok(records.length > 0, `libvirt ran the probe through qemu-kube (${records.length} probe QEMUs)`)
  for (const f of records) {
    const text = readFileSync(`${recorder.recordDir}/${f}`, 'utf8')
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(text)?.[1] ?? ''
    t.equal(field('Uid').split(/\s+/).map(Number).join(','), [UID, UID, UID, UID].join(','), `probe ${f}: uid ${QEMU_USER}`)
    for (const k of ['CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) t.equal(BigInt(`0x${field(k)}`), 0n, `probe ${f}: ${k} empty`)
    t.equal(field('NoNewPrivs'), '1', `probe ${f}: no_new_privs`)
    t.equal(/== mnt\n(.*)\n/.exec(text)?.[1], readlinkSync('/proc/self/ns/mnt'), `probe ${f}: the host mount namespace`)
  }
})

t.test('a domain starts into its pod as its own uid, the monitor works, virsh destroy leaves libvirt clean', async (t) => {
  const vm = e.vm('one')
  const tok = await e.token(vm)
  const p = await e.pod(vm, tok)
  t.same(qemuProcesses(vm, [p]), [], 'known state: no QEMU for this VM')
  const offset = logSize(vm.name)
  const r = await e.start(vm, tok)
  t.equal(r.code, 0, `virsh start: ${r.stderr}`)
  const pid = domainPid(vm.name)
  t.ok(pid, 'libvirt has a pid for the domain')
  await checkInPod(t, vm, p, pid!)

  const list = await virsh(['list', '--name', '--state-running'])
  t.ok(list.stdout.split('\n').includes(vm.name), 'virsh list shows it running')
  t.equal(await monitorStatus(vm.name), 'running', 'query-status over libvirt\'s monitor: running')
  const stats = await virsh(['domstats', vm.name, '--state'])
  t.match(stats.stdout, /state\.state=1/, 'virsh domstats: running')

  const lines = qemuKubeLines(logSince(vm.name, offset))
  t.equal(lines.length, 1, 'qemu-kube wrote exactly one line to the domain log')
  const d = lines[0]!
  t.equal(d.msg, 'decision')
  t.equal(d.outcome, 'authorised')
  t.equal(d.path, e.transport, `served by the ${e.transport} path`)
  t.equal(d.target?.pid, p.pid, 'the decision names the pod\'s launcher')
  t.equal(d.vm?.uuid, vm.uuid)
  t.equal(d.runAs?.uid, vm.uid)
  t.equal(d.pid, pid, 'qemu-kube ran as the very pid libvirt tracks')
  for (const part of tok.split('.').slice(1)) t.notOk(JSON.stringify(lines).includes(part), 'no part of the token in qemu-kube\'s line')

  const destroy = await virsh(['destroy', vm.name])
  t.equal(destroy.code, 0, destroy.stderr)
  await until('QEMU to be gone', () => !existsSync(`/proc/${pid}`) || /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')))
  t.equal((await virsh(['domstate', vm.name])).stdout.trim(), 'shut off', 'libvirt: shut off')
  t.same(qemuProcesses(vm, [p]), [], 'no QEMU left, in or out of the pod')
  t.notOk(existsSync(`/run/libvirt/qemu/${vm.name}.pid`), 'no pidfile left')
  t.notOk(existsSync(`/run/libvirt/qemu/${vm.name}.xml`), 'no live status XML left')
  t.notOk(readdirSync('/var/lib/libvirt/qemu').some((d) => d.endsWith(`-${vm.name}`)), 'no domain-N-NAME directory left')
  t.ok(existsSync(`/proc/${p.pid}`), 'the pod itself lives on')
})

t.test('eight domains started concurrently land each in its own pod', async (t) => {
  const vms = Array.from({ length: 8 }, (_, i) => e.vm(`c${i}`))
  const toks = await Promise.all(vms.map((vm) => e.token(vm)))
  const pods = await Promise.all(vms.map((vm, i) => e.pod(vm, toks[i]!)))
  const results = await Promise.all(vms.map((vm, i) => e.start(vm, toks[i]!)))
  for (const [i, r] of results.entries()) t.equal(r.code, 0, `${vms[i]!.name} started: ${r.stderr}`)
  const pids = vms.map((vm) => domainPid(vm.name))
  t.equal(new Set(pids).size, 8, 'eight distinct QEMUs')
  for (const [i, vm] of vms.entries()) {
    const pid = pids[i]!
    for (const ns of POD_NS) t.equal(nsInode(pid, ns), pods[i]!.ns[ns], `${vm.name}: ${ns} namespace is its own pod's`)
    for (const [j, other] of pods.entries()) {
      if (j !== i) t.not(nsInode(pid, 'net'), other.ns.net, `${vm.name} not in pod ${j}`)
    }
    t.equal(readFileSync(`/proc/${pid}/cgroup`, 'utf8'), readFileSync(`/proc/${pods[i]!.pid}/cgroup`, 'utf8'), `${vm.name}: its pod's cgroups`)
    t.equal(status(pid).Uid?.split('\t')[0], String(vm.uid), `${vm.name}: as its own uid ${vm.uid}`)
  }
  const monitors = await Promise.all(vms.map((vm) => monitorStatus(vm.name)))
  t.same(monitors, vms.map(() => 'running'), 'every monitor answers running')
  const destroyed = await Promise.all(vms.map((vm) => virsh(['destroy', vm.name])))
  t.same(destroyed.map((r) => r.code), vms.map(() => 0), 'virsh destroy ends all eight')
  for (const [i, vm] of vms.entries()) await until(`${vm.name} gone`, () => qemuProcesses(vm, [pods[i]!]).length === 0)
  t.pass('no QEMU left in any pod')
})

import type { Test } from 'tap'
