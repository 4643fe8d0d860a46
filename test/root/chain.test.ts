// Issue 3, end to end with real kernel objects: the installed setuid front run by an
// unprivileged user, as libvirt would (extra fds 5 and 28, a poisoned environment), against a
// real podman pod. A stand-in QEMU (the reporter fixture) prints what it
// became; every refusal must leave it unrun.
import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, readlinkSync, readFileSync, writeFileSync } from 'node:fs'
import { FIXTURES, installTemp } from '../helpers/install.ts'
import { gidOf, uidOf } from '../helpers/ids.ts'
import { makePod, requireRoot } from '../helpers/pod.ts'
import { makePodmanPod } from '../helpers/podman.ts'
import { TRANSPORT, useTransport } from '../helpers/transport.ts'
import { ISS, AUD, rsaKey, tempDir, writeKey } from '../helpers/tokens.ts'
import { SignJWT } from 'jose'

if (!requireRoot(t)) process.exit(0)

const USER = 'nobody'
const GROUP = 'nogroup'
const UID = uidOf(USER)
const key = await rsaKey()
const foreign = await rsaKey()
const keyDir = tempDir(t, 'qk-keys-')
const pub = writeKey(keyDir, 'signing.pem', key.pem)
const inst = installTemp(t, GROUP)
const stateDir = `${tempDir(t, 'qk-state-')}/state`
const baseConfig = {
  token_public_keys: [pub],
  vm_uid_range: [UID, UID], // nobody:nogroup is 65534:65534, as a +UID:+UID seclabel would be
  pod_link_socket: '', // these pods' launcher is the pause fixture: nothing listens
  qemu_binary: `${FIXTURES}/reporter`,
  probe_qemu_binary: `${FIXTURES}/reporter`,
  state_dir: stateDir,
}
inst.writeConfig(baseConfig)
// One suite over both transports (test/helpers/transport.ts): the agent, when this run is its.
await useTransport(t, inst)

let seq = 0
async function token(vm: { uuid: string; name: string }, over: Record<string, unknown> = {}, signer = key) {
  const now = Math.floor(Date.now() / 1000)
  return new SignJWT({ iss: ISS, aud: AUD, sub: vm.uuid, vm_name: vm.name, qemu_uid: UID, jti: `chain-${process.pid}-${seq++}`, iat: now, exp: now + 60, ...over })
    .setProtectedHeader({ alg: 'RS256' }).sign(signer.privateKey)
}

interface Run {
  pid: number
  code: number | null
  stdout: string
  stderr: string
  report?: Record<string, any>
}


/**
 * Runs the installed front as USER with fds 5 and 28 open and a poisoned environment. Node
 * forks, drops to uid/gid (and no supplementary groups) and execs the front itself: no dynamic
 * binary such as setpriv sits in between to react to LD_PRELOAD first.
 */
function runFront(args: string[], env: Record<string, string>, as = USER): Promise<Run> {
  const cov = tempDir(t, 'qk-cov-')
  const { stdio, close } = libvirtStdio()
  const child = spawn(inst.front, args, {
    uid: uidOf(as),
    gid: gidOf(GROUP),
    stdio,
    env: {
      PATH: '/usr/bin:/bin',
      LD_PRELOAD: '/nonexistent/poison.so',
      NODE_OPTIONS: '--require=/nonexistent/poison.js',
      NODE_V8_COVERAGE: `${cov}/coverage`,
      UV_USE_IO_URING: '1',
      BASH_ENV: '/nonexistent/poison.sh',
      NODE_DEBUG: 'fs',
      ...env,
    },
  })
  close()
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d) => (stdout += d))
  child.stderr!.on('data', (d) => (stderr += d))
  return new Promise((res) => child.on('close', (code) => {
    t.notOk(existsSync(`${cov}/coverage`), 'NODE_V8_COVERAGE created nothing')
    let report
    try {
      report = JSON.parse(stdout)
    } catch {
      report = undefined
    }
    res({ pid: child.pid!, code, stdout, stderr, report })
  }))
}


const vmEnv = async (vm: { uuid: string; name: string }, tok?: string) =>
  ({ KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.name, KUBEVIRT_SECRET: tok ?? await token(vm) })
const QEMU_ARGS = ['-name', 'guest=chain,debug-threads=on', '-S', '-chardev', 'socket,id=charmonitor,fd=28,server=on,wait=off']
const caps = (r: Run, k: string) => BigInt(`0x${r.report?.status?.[k] ?? r.report?.[k] ?? 'ff'}`)

let podSeq = 0
async function pod(vm: { uuid: string; name: string }, tok: string, opts: Record<string, unknown> = {}) {
  // A real podman pod; the stand-in QEMU is bound in at its host path (the image has none of it).
  const p = await makePodmanPod({ uuid: vm.uuid, name: vm.name, token: tok, qemuUid: UID, volumes: [`${FIXTURES}:${FIXTURES}:ro`], ...opts })
  podSeq++
  t.teardown(() => p.destroy())
  return p
}

function refusedWith(t: Test, r: Run, code: string, tok?: string) {
  t.equal(r.report, undefined, `${code}: QEMU never started`)
  const lines = r.stderr.trim().split('\n')
  t.equal(lines.length, 1, `${code}: exactly one line on stderr`)
  const line = JSON.parse(lines[0]!)
  t.equal(line.code, code)
  t.ok(line.hint, 'with a hint')
  t.equal(r.code, code.startsWith('ERR_CONFIG') ? 78 : 77, 'sysexits status')
  // The front checks the config's ownership itself, before it chooses a path.
  if (code === 'ERR_CONFIG_UNSAFE') t.equal(line.path, undefined, 'refused by the front, before either path')
  else t.equal(line.path, TRANSPORT, `refused by the ${TRANSPORT} path`)
  if (tok) for (const part of tok.split('.')) t.notOk(r.stderr.includes(part), 'no part of the token in the output')
}
import type { Test } from 'tap'
import { inheritedFds, libvirtStdio } from '../helpers/fds.ts'

t.test('an authorised launch becomes QEMU in the pod, in place, unprivileged', async (t) => {
  const vm = { uuid: `chain-${process.pid}-ok`, name: 'chainvm' }
  const tok = await token(vm)
  const p = await pod(vm, tok)
  const r = await runFront(QEMU_ARGS, await vmEnv(vm, tok))
  t.equal(r.code, 0, r.stderr)
  const rep = r.report!
  t.ok(rep, 'the reporter ran')
  t.equal(rep.pid, r.pid, 'same pid as the process libvirt spawned (exec in place)')
  for (const ns of ['net', 'ipc', 'uts', 'cgroup'] as const) t.equal(String(rep.ns[ns]), String(p.ns[ns]), `${ns} namespace is the pod's`)
  t.not(String(rep.ns.mnt), String(p.ns.mnt), 'its mount namespace is its own, not the pod\'s')
  t.not(String(rep.ns.mnt), readlinkSync('/proc/self/ns/mnt').replace(/\D/g, ''), 'nor the host\'s')
  t.not(String(rep.ns.user), '', 'user namespace untouched')
  t.same(rep.cgroup, readFileSync(`/proc/${p.pid}/cgroup`, 'utf8').trim().split('\n').map((l: string) => l.replace(/:\/.*$/, ':/')),
    'cgroups are the pod\'s (seen from inside its cgroup namespace as /)')
  const hostView = readFileSync(`/proc/${p.pid}/cgroup`, 'utf8')
  t.match(hostView, /libpod_parent\/[0-9a-f]{64}\/libpod-[0-9a-f]{64}/, 'the pod is in its own (podman) cgroups')
  t.equal(rep.uid, UID)
  t.equal(rep.euid, UID)
  t.equal(rep.suid, UID)
  for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapAmb', 'CapBnd']) t.equal(caps(r, k), 0n, `${k} is empty`)
  t.equal(String(rep.NoNewPrivs ?? rep.status?.NoNewPrivs), '1')
  t.equal(BigInt(`0x${rep.SigIgn ?? rep.status?.SigIgn}`), 0n, 'no ignored signals')
  t.equal(BigInt(`0x${rep.SigBlk ?? rep.status?.SigBlk}`), 0n, 'no blocked signals')
  t.same(rep.fds, [0, 1, 2, 5, 28, ...inheritedFds()].sort((a, b) => a - b), 'exactly the fds the caller passed')
  const env: string[] = rep.env
  t.notOk(env.some((e) => e.startsWith('KUBEVIRT_SECRET=')), 'no token in QEMU\'s environment')
  for (const poison of ['LD_PRELOAD', 'NODE_OPTIONS', 'NODE_V8_COVERAGE', 'UV_USE_IO_URING', 'BASH_ENV', 'NODE_DEBUG']) {
    t.notOk(env.some((e) => e.startsWith(`${poison}=`)), `${poison} is gone`)
  }
  const decision = JSON.parse(r.stderr.trim().split('\n').at(-1)!)
  t.equal(decision.msg, 'decision')
  t.equal(decision.outcome, 'authorised')
  t.equal(decision.path, TRANSPORT, `served by the ${TRANSPORT} path`)
  t.equal(decision.target.pid, p.pid)
  for (const part of tok.split('.')) t.notOk(r.stderr.includes(part), 'the token is in no output')
})

t.test('the probe runs the probe binary as the caller, on the host, with no capabilities', async (t) => {
  const r = await runFront(['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none,accel=kvm:tcg',
    '-qmp', 'unix:/tmp/qk-probe.monitor,server=on,wait=off', '-pidfile', '/tmp/qk-probe.pid', '-daemonize'], {})
  t.equal(r.code, 0, r.stderr)
  t.equal(r.report?.uid, UID)
  t.equal(String(r.report?.ns.mnt), readlinkSync('/proc/self/ns/mnt').replace(/\D/g, ''), 'the host mount namespace')
  for (const k of ['CapPrm', 'CapEff', 'CapBnd']) t.equal(caps(r, k), 0n, `${k} is empty`)
  t.equal(JSON.parse(r.stderr.trim()).outcome, 'probe')
  t.equal(JSON.parse(r.stderr.trim()).path, TRANSPORT)
})

t.test('refusals: the reporter never runs, one JSON line with the code', async (t) => {
  const vm = { uuid: `chain-${process.pid}-ref`, name: 'refvm' }
  const good = await token(vm)
  await pod(vm, good)
  const now = Math.floor(Date.now() / 1000)

  const expired = await token(vm, { iat: now - 200, exp: now - 140 })
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm, expired)), 'ERR_TOKEN_EXPIRED', expired)
  const forged = await token(vm, {}, foreign)
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm, forged)), 'ERR_TOKEN_SIGNATURE', forged)
  const otherVm = await token({ uuid: 'someone-else', name: vm.name })
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm, otherVm)), 'ERR_TOKEN_VM_MISMATCH', otherVm)
  const nopod = { uuid: `chain-${process.pid}-nopod`, name: 'nopod' }
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(nopod)), 'ERR_TARGET_NOT_FOUND')
  refusedWith(t, await runFront(QEMU_ARGS, {}), 'ERR_ENV_MISSING')

  // Replayed: the first use succeeds, the second is refused.
  t.equal((await runFront(QEMU_ARGS, await vmEnv(vm, good))).code, 0)
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm, good)), 'ERR_TOKEN_REPLAYED', good)

  // VM B's token under VM A's uid: the token binds qemu_uid.
  const otherUid = await token(vm, { qemu_uid: UID - 1 })
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm, otherUid)), 'ERR_TOKEN_UID_MISMATCH', otherUid)

  // Caller not allowed: any local user may run the front (4755), but only uids in vm_uid_range launch.
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm), 'daemon'), 'ERR_CALLER_NOT_ALLOWED')
})

t.test('two pods claiming one VM: ERR_TARGET_AMBIGUOUS', async (t) => {
  const vm = { uuid: `chain-${process.pid}-two`, name: 'twovm' }
  const tok = await token(vm)
  await pod(vm, tok)
  await pod(vm, tok)
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm, tok)), 'ERR_TARGET_AMBIGUOUS', tok)
})

t.test('a pod whose secret is an absolute symlink to a host file: refused, the host file unread', async (t) => {
  const vm = { uuid: `chain-${process.pid}-sym`, name: 'symvm' }
  const tok = await token(vm)
  const host = tempDir(t, 'qk-hostsecret-')
  writeFileSync(`${host}/token`, tok) // the very token: only reading it on the host would "match"
  // An unshare pod with its own root: the hostile pod here is not our launcher (the launcher
  // image refuses to start without a token), but any process claiming the VM, as a hostile pod
  // can run; podman offers no such entrypoint through the helper.
  const p = await makePod({ uuid: vm.uuid, name: vm.name, token: tok, cgroupName: `chain-${process.pid}-sym`, ownRoot: true,
    secretLayout: 'abs-symlink', symlinkTarget: `${host}/token` })
  t.teardown(() => p.destroy())
  refusedWith(t, await runFront(QEMU_ARGS, await vmEnv(vm, tok)), 'ERR_SECRET_MISSING', tok)
})

t.test('a config writable by others: ERR_CONFIG_UNSAFE', async (t) => {
  t.teardown(() => inst.writeConfig(baseConfig))
  inst.writeConfig(baseConfig, 0o666)
  const vm = { uuid: `chain-${process.pid}-cfg`, name: 'cfgvm' }
  const r = await runFront(QEMU_ARGS, await vmEnv(vm))
  refusedWith(t, r, 'ERR_CONFIG_UNSAFE')
})
