// Issue 10 item 2, the end of it: stock libvirt on the host starts a VM through what the
// DaemonSet installed. deploy/daemonset.yaml's template is played as a Pod (test/helpers/
// delivery-node.ts): its init container validates the ConfigMap, installs the token key the test
// generated (shipped in the keys ConfigMap, as the manifests do) and the tree under a temp root;
// its agent container runs `qemu-kube agent` from that tree. A domain whose <emulator> is the
// installed front then starts into its podman pod through the agent (the decision line in the
// domain log: path agent); with the agent container stopped, a second one starts through the
// standalone chain of the same tree (path standalone, AGENT=absent).
// Not one suite per transport (scripts/test.mjs would run it twice): it covers both paths itself.
// Root, podman, mmdebstrap (the installer's offline base) and libvirt only.
import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs'
import { SignJWT } from 'jose'
import { defineAndStart, destroyAndUndefine, domainPid, domainXml, requireLibvirt, startLibvirt, stopLibvirt } from '../helpers/libvirt.ts'
import {
  allocateUid, deliveryNode, forgetCapabilities, FRONT, logSince, logSize, LOG_DIR, monitorStatus, nsInode, qemuKubeLines, removeStaleDomains, status,
  UID_FIRST, UID_LAST,
} from '../helpers/delivery-node.ts'
import { ROOT, SYSCONFDIR } from '../helpers/delivery.ts'
import { makePodmanPod, type PodmanPod } from '../helpers/podman.ts'
import { AUD, ISS, rsaKey } from '../helpers/tokens.ts'

if (!requireLibvirt(t)) process.exit(0)
if (!existsSync('/usr/bin/mmdebstrap')) {
  t.test('delivery VM start', { skip: 'no /usr/bin/mmdebstrap (the installer image\'s offline base; apt-get install mmdebstrap)' }, () => {})
  process.exit(0)
}

interface Vm { name: string; uuid: string; vmName: string; uid: number }

const key = await rsaKey()
const config = [
  `vm_uid_range = [ ${UID_FIRST}, ${UID_LAST} ]`,
  `token_public_keys = [ "${SYSCONFDIR}/qemu-kube/token.pub" ]`,
  `state_dir = "${ROOT}/state"`,
  '',
].join('\n')
const tPlay = Date.now()
const node = await deliveryNode(t, { config, keys: { 'token.pub': key.pem } })
t.comment(`installer image ${node.img.image}: ${(node.img.bytes / 1e6).toFixed(0)} MB, build ${node.img.seconds.toFixed(1)} s `
  + `(base ${node.img.baseBuilt ? 'built' : 'cached'} ${node.img.baseSeconds.toFixed(1)} s); DaemonSet pod played in ${node.playSeconds.toFixed(1)} s; `
  + `set-up in all ${((Date.now() - tPlay) / 1000).toFixed(1)} s`)
forgetCapabilities(FRONT) // an earlier run's front had this very path
t.teardown(() => forgetCapabilities(FRONT))
await startLibvirt()
t.teardown(() => stopLibvirt())
await removeStaleDomains()

let seq = 0
const vm = (what: string): Vm => ({ name: `qke2e-delivery-${process.pid}-${what}`, uuid: randomUUID(), vmName: `vm-${what}`, uid: allocateUid() })
const token = (v: Vm) => {
  const now = Math.floor(Date.now() / 1000)
  return new SignJWT({ iss: ISS, aud: AUD, sub: v.uuid, vm_name: v.vmName, qemu_uid: v.uid, jti: `delivery-${process.pid}-${seq++}-${randomUUID()}`, iat: now, exp: now + 60 })
    .setProtectedHeader({ alg: 'RS256' }).sign(key.privateKey)
}
const pod = async (t: Test, v: Vm, tok: string): Promise<PodmanPod> => {
  const p = await makePodmanPod({ uuid: v.uuid, name: v.vmName, token: tok, qemuUid: v.uid, extraArgs: ['-emulator', FRONT] })
  t.teardown(() => p.destroy())
  return p
}

/** Starts v through the installed front; checks QEMU in its pod; returns the decision line and the wall time. */
async function startThroughNode(t: Test, v: Vm): Promise<{ d: Record<string, any>; seconds: number } | undefined> {
  const tok = await token(v)
  const p = await pod(t, v, tok)
  t.teardown(async () => {
    await destroyAndUndefine(v.name)
    rmSync(`${LOG_DIR}/${v.name}.log`, { force: true }) // libvirt logged the token there
  })
  const offset = logSize(v.name)
  const t0 = Date.now()
  const r = await defineAndStart(domainXml({
    name: v.name, uuid: v.uuid, emulator: FRONT, seclabelUid: v.uid,
    env: { KUBEVIRT_VM_UUID: v.uuid, KUBEVIRT_VM_NAME: v.vmName, KUBEVIRT_SECRET: tok },
  }))
  const seconds = (Date.now() - t0) / 1000
  if (!t.equal(r.code, 0, `virsh start through the installed front: ${r.stderr}`)) return undefined
  const pid = domainPid(v.name)
  if (!t.ok(pid, 'libvirt has a pid for the domain')) return undefined
  t.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), `guest=${v.name},`, 'libvirt\'s pid is this domain\'s QEMU')
  for (const ns of ['net', 'ipc', 'uts', 'cgroup'] as const) t.equal(nsInode(pid!, ns), p.ns[ns], `${ns} namespace is the pod's`)
  t.equal(readFileSync(`/proc/${pid}/cgroup`, 'utf8'), readFileSync(`/proc/${p.pid}/cgroup`, 'utf8'), 'cgroups are the pod\'s')
  t.equal(status(pid!).Uid, `${v.uid}\t${v.uid}\t${v.uid}\t${v.uid}`, `QEMU runs as the VM's uid ${v.uid}`)
  t.equal(await monitorStatus(v.name), 'running', 'query-status over libvirt\'s monitor: running')
  const lines = qemuKubeLines(logSince(v.name, offset))
  t.equal(lines.length, 1, 'qemu-kube wrote exactly one line to the domain log')
  const d = lines[0] ?? {}
  t.equal(d.msg, 'decision')
  t.equal(d.outcome, 'authorised')
  t.equal(d.target?.pid, p.pid, 'the decision names the pod\'s launcher')
  t.equal(d.pid, pid, 'the front ran as the very pid libvirt tracks')
  for (const part of tok.split('.').slice(1)) t.notOk(JSON.stringify(lines).includes(part), 'no part of the token in qemu-kube\'s line')
  return { d, seconds }
}

t.test('the DaemonSet installed the front and the key', async (t) => {
  const st = statSync(FRONT)
  t.same([st.mode.toString(8), st.uid, st.gid], ['104755', 0, 107], 'the front: 4755 root:107')
  t.equal(readFileSync(`${SYSCONFDIR}/qemu-kube/token.pub`, 'utf8'), key.pem, 'the test\'s public key, from the keys ConfigMap')
  // The VM uid walks every ancestor of the front: each 0755 (or sticky), root's.
  for (let dir = FRONT; dir !== '/'; dir = dir.slice(0, dir.lastIndexOf('/')) || '/') {
    const s = statSync(dir)
    t.ok(s.uid === 0 && (s.mode & 0o005) === 0o005, `${dir}: root's, others may reach it (${(s.mode & 0o7777).toString(8)})`)
  }
})

t.test('a VM starts through the agent the DaemonSet runs', async (t) => {
  const a = await node.startAgent()
  t.comment(`agent container up (socket there) in ${a.seconds.toFixed(1)} s`)
  const got = await startThroughNode(t, vm('agent'))
  if (!got) return
  t.equal(got.d.path, 'agent', 'served by the agent path')
  // The first start of this emulator path includes libvirt's capability probe of it (through the front).
  t.comment(`VM start through the agent: virsh define + start ${got.seconds.toFixed(2)} s (libvirt's first probe of the path included), decision durationMs ${got.d.durationMs}`)
  // The agent's own line (pino: its pid, the front's as `peer`), written just after its reply.
  let logged: Record<string, any>[] = []
  for (const end = Date.now() + 5000; logged.length === 0 && Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
    logged = qemuKubeLines(await node.agentLogs()).filter((l) => l.msg === 'decision' && l.peer === got.d.pid && l.outcome === 'authorised')
  }
  t.equal(logged.length, 1, 'the agent logged that decision on its stdout (the container\'s log)')
})

t.test('with the agent container stopped, a VM starts through the standalone chain of the same tree', async (t) => {
  const s = await node.stopAgent()
  t.equal(s.code, 0, `the agent exits 0 on SIGTERM (podman stop, ${s.seconds.toFixed(1)} s)`)
  t.notOk(existsSync(`${SYSCONFDIR}/qemu-kube-agent/agent.sock`), 'its socket is gone')
  const got = await startThroughNode(t, vm('standalone'))
  if (!got) return
  t.equal(got.d.path, 'standalone', 'served by the standalone chain')
  t.equal(got.d.agent, 'absent', 'AGENT=absent')
  t.comment(`VM start standalone: virsh define + start ${got.seconds.toFixed(2)} s, decision durationMs ${got.d.durationMs}`)
})
