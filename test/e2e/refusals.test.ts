// Issue item 4 (and issue 7's identity refusals), against a real libvirtd and real podman pods: every launch qemu-kube must not allow makes
// `virsh start` fail with our error code in its message, leaves no QEMU process in or out of the
// pod, leaves libvirt's state clean, and puts the token in none of qemu-kube's output (libvirt
// itself logs the <qemu:env> values, so only qemu-kube's JSON lines are checked).
import t, { type Test } from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import { domainPid, requireLibvirt } from '../helpers/libvirt.ts'
import { logSince, logSize, qemuKubeLines, qemuProcesses, setupE2e, until, virsh, type Pod, type Vm } from '../helpers/e2e.ts'
import { defineAndStart, destroyAndUndefine, domainXml } from '../helpers/libvirt.ts'
import type { VirshResult } from '../helpers/libvirt.ts'

if (!requireLibvirt(t)) process.exit(0)

const e = await setupE2e(t, 'ref')

/** `virsh start` failed because qemu-kube refused with `code`, and nothing of the VM runs. */
async function refused(t: Test, vm: Vm, pods: readonly Pod[], r: VirshResult, code: string, offset: number, tok?: string) {
  t.not(r.code, 0, 'virsh start fails')
  t.comment(`virsh: ${r.stderr.trim()}`)
  t.match(r.stderr, code, `its message carries ${code}`)
  t.same(qemuProcesses(vm, pods), [], 'no QEMU process, in or out of the pod')
  t.equal(domainPid(vm.name), null, 'libvirt tracks no pid')
  t.equal((await virsh(['domstate', vm.name])).stdout.trim(), 'shut off', 'libvirt: shut off')
  t.notOk(existsSync(`/run/libvirt/qemu/${vm.name}.pid`), 'no pidfile left')
  const log = logSince(vm.name, offset)
  const ours = qemuKubeLines(log)
  t.equal(ours.length, 1, 'qemu-kube wrote one line to the domain log')
  t.equal(ours[0]?.msg, 'decision')
  t.equal(ours[0]?.outcome, 'refused')
  t.equal(ours[0]?.code, code)
  t.equal(ours[0]?.path, e.transport, `refused by the ${e.transport} path`)
  t.ok(ours[0]?.hint, 'with a hint')
  if (tok !== undefined) {
    const seen = JSON.stringify([...ours, ...qemuKubeLines(r.stderr)])
    const [, payload, signature] = tok.split('.')
    t.notOk(seen.includes(payload!), 'the token\'s payload is in no qemu-kube output')
    t.notOk(seen.includes(signature!), 'the token\'s signature is in no qemu-kube output')
    // libvirt quotes only the emulator's own output in its error: qemu-kube's line, nothing else.
    t.notOk(r.stderr.includes(payload!) || r.stderr.includes(signature!), 'virsh start\'s message carries no part of the token')
  }
  for (const p of pods) t.ok(existsSync(`/proc/${p.pid}`), 'the pod is untouched')
}

t.test('no token: ERR_ENV_MISSING', async (t) => {
  const vm = e.vm('notoken')
  const tok = await e.token(vm)
  const p = await e.pod(vm, tok)
  const offset = logSize(vm.name)
  await refused(t, vm, [p], await e.start(vm, undefined), 'ERR_ENV_MISSING', offset, tok)
})

t.test('forged token (signed by a key no config lists): ERR_TOKEN_SIGNATURE', async (t) => {
  const vm = e.vm('forged')
  const tok = await e.token(vm, {}, e.foreign)
  const p = await e.pod(vm, tok) // the pod even holds the forged token: the signature alone decides
  const offset = logSize(vm.name)
  await refused(t, vm, [p], await e.start(vm, tok), 'ERR_TOKEN_SIGNATURE', offset, tok)
})

t.test('expired token: ERR_TOKEN_EXPIRED', async (t) => {
  const vm = e.vm('expired')
  const now = Math.floor(Date.now() / 1000)
  const tok = await e.token(vm, { iat: now - 200, exp: now - 140 })
  const p = await e.pod(vm, tok)
  const offset = logSize(vm.name)
  await refused(t, vm, [p], await e.start(vm, tok), 'ERR_TOKEN_EXPIRED', offset, tok)
})

t.test('token for another VM: ERR_TOKEN_VM_MISMATCH', async (t) => {
  const vm = e.vm('mismatch')
  const other = e.vm('other')
  const tok = await e.token(other)
  const p = await e.pod(vm, tok, { qemuUid: other.uid }) // our VM's pod, holding the other VM's (valid) token
  const offset = logSize(vm.name)
  await refused(t, vm, [p], await e.start(vm, tok), 'ERR_TOKEN_VM_MISMATCH', offset, tok)
})

t.test('no pod: ERR_TARGET_NOT_FOUND', async (t) => {
  const vm = e.vm('nopod')
  const tok = await e.token(vm)
  const offset = logSize(vm.name)
  await refused(t, vm, [], await e.start(vm, tok), 'ERR_TARGET_NOT_FOUND', offset, tok)
})

t.test('two pods claiming the VM: ERR_TARGET_AMBIGUOUS', async (t) => {
  const vm = e.vm('twopods')
  const tok = await e.token(vm)
  const pods = [await e.pod(vm, tok), await e.pod(vm, tok)]
  const offset = logSize(vm.name)
  await refused(t, vm, pods, await e.start(vm, tok), 'ERR_TARGET_AMBIGUOUS', offset, tok)
})

t.test('replayed token: the first start runs, the second start with the same token is refused', async (t) => {
  const vm = e.vm('replay')
  const tok = await e.token(vm)
  const p = await e.pod(vm, tok)
  const first = await e.start(vm, tok)
  t.equal(first.code, 0, `the first start runs: ${first.stderr}`)
  const pid = domainPid(vm.name)
  t.ok(pid, 'QEMU runs')
  t.equal((await virsh(['destroy', vm.name])).code, 0, 'virsh destroy')
  await until('the first QEMU to go', () => qemuProcesses(vm, [p]).length === 0)
  const offset = logSize(vm.name)
  const again = await virsh(['start', vm.name]) // the same definition, the same token
  await refused(t, vm, [p], again, 'ERR_TOKEN_REPLAYED', offset, tok)
})

t.test('VM B\'s token presented under VM A\'s uid: ERR_TOKEN_UID_MISMATCH', async (t) => {
  const a = e.vm('uid-a')
  const b = e.vm('uid-b')
  const tokB = await e.token(b)
  const podB = await e.pod(b, tokB)
  // A domain that runs as VM A's uid (its seclabel) but names VM B and carries B's token.
  const attacker = { ...b, name: a.name, uuid: a.uuid }
  const offset = logSize(attacker.name)
  t.teardown(() => destroyAndUndefine(attacker.name))
  const r = await defineAndStart(domainXml({
    name: attacker.name, uuid: attacker.uuid, emulator: e.inst.front, seclabelUid: a.uid,
    env: { KUBEVIRT_VM_UUID: b.uuid, KUBEVIRT_VM_NAME: b.vmName, KUBEVIRT_SECRET: tokB },
  }))
  await refused(t, attacker, [podB], r, 'ERR_TOKEN_UID_MISMATCH', offset, tokB)
  const line = qemuKubeLines(logSince(attacker.name, offset))[0]
  t.equal(line?.reason, `expected "qemu_uid" = the caller's uid ${a.uid}, got "${b.uid}"`, 'expected vs got')
})

t.test('a second live VM given the uid of a running one: ERR_UID_IN_USE', async (t) => {
  const one = e.vm('lease-1')
  const two = { ...e.vm('lease-2') }
  two.uid = one.uid // the issuer's mistake: one uid for two live VMs
  const tok1 = await e.token(one)
  const tok2 = await e.token(two)
  const p1 = await e.pod(one, tok1)
  const p2 = await e.pod(two, tok2)
  const first = await e.start(one, tok1)
  t.equal(first.code, 0, `the first VM runs: ${first.stderr}`)
  const offset = logSize(two.name)
  await refused(t, two, [p2], await e.start(two, tok2), 'ERR_UID_IN_USE', offset, tok2)
  const pid = domainPid(one.name)
  t.ok(pid, 'the first VM still runs')
  const comms = qemuProcesses(one, [p1]).map((q) => (q === pid ? 'QEMU' : readFileSync(`/proc/${q}/comm`, 'utf8').trim())).sort()
  t.same(comms, ['QEMU', 'qemu-kube-watch'], 'in its pod: its QEMU and that QEMU\'s pod-link watcher, nothing of the second VM')
})

t.test('an argv naming a libvirt file outside the domain\'s directories: ERR_CARRY_OUTSIDE', async (t) => {
  const vm = e.vm('carry')
  const tok = await e.token(vm)
  const p = await e.pod(vm, tok)
  const offset = logSize(vm.name)
  t.teardown(() => destroyAndUndefine(vm.name))
  const r = await defineAndStart(domainXml({
    name: vm.name, uuid: vm.uuid, emulator: e.inst.front, seclabelUid: vm.uid,
    qemuArgs: ['-fw_cfg', 'name=opt/qk,file=/var/lib/libvirt/qemu/nvram/other_VARS.fd'],
    env: { KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.vmName, KUBEVIRT_SECRET: tok },
  }))
  await refused(t, vm, [p], r, 'ERR_CARRY_OUTSIDE', offset, tok)
})
