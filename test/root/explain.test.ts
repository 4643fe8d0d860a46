// Issue 2's acceptance, as an operator would check it: `qemu-kube explain` (the clone's bundle,
// run as root) against real launchers in real podman pods, the token in a Secret-style volume
// only the pod mounts. Authorised names the pod's pid; each refusal names its code.
import t from 'tap'
import { execFile } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { SignJWT } from 'jose'
import { REPO, toml } from '../helpers/install.ts'
import { requireRoot } from '../helpers/pod.ts'
import { makePodmanPod } from '../helpers/podman.ts'
import { AUD, ISS, rsaKey, tempDir, writeKey } from '../helpers/tokens.ts'
import { writeFileSync } from 'node:fs'

if (!requireRoot(t)) process.exit(0)

const key = await rsaKey()
const foreign = await rsaKey()
const dir = tempDir(t, 'qk-explain-')
const config = `${dir}/qemu-kube.conf`
writeFileSync(config, toml({ token_public_keys: [writeKey(dir, 'signing.pem', key.pem)], vm_uid_range: [20001, 20001], state_dir: `${dir}/state` }))

async function token(vm: { uuid: string; name: string }, over: Record<string, unknown> = {}, signer = key) {
  const now = Math.floor(Date.now() / 1000)
  return new SignJWT({ iss: ISS, aud: AUD, sub: vm.uuid, vm_name: vm.name, qemu_uid: 20001, jti: `explain-${Math.random()}`, iat: now, exp: now + 60, ...over })
    .setProtectedHeader({ alg: 'RS256' }).sign(signer.privateKey)
}

function explain(vm: { uuid: string; name: string }, tok: string): Promise<{ code: number; decision: any; out: string }> {
  return new Promise((res) => execFile(process.execPath, [`${REPO}/dist/qemu-kube.cjs`, 'explain', '--output', 'json', '--config', config, '--as', '20001', '--', '-name', 'guest=x'],
    { env: { PATH: process.env['PATH'], KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.name, KUBEVIRT_SECRET: tok } },
    (err, stdout, stderr) => res({ code: err ? Number(err.code) : 0, decision: JSON.parse(stdout), out: stdout + stderr })))
}

// Issue 8 item 9: without root every pod read fails with EPERM, which read as "the launcher died".
t.test('explain as an unprivileged user says it needs root: ERR_USAGE', async (t) => {
  const vm = { uuid: `explain-nobody-${process.pid}`, name: 'nobodyvm' }
  const tok = await token(vm)
  const r = await new Promise<{ code: number; decision: any }>((res) => execFile(process.execPath, [`${REPO}/dist/qemu-kube.cjs`, 'explain', '--output', 'json', '--config', config, '--as', '20001', '--', '-name', 'guest=x'],
    { uid: 65534, gid: 65534, env: { PATH: process.env['PATH'], KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.name, KUBEVIRT_SECRET: tok } },
    (err, stdout) => res({ code: err ? Number(err.code) : 0, decision: JSON.parse(stdout) })))
  t.equal(r.code, 64)
  t.equal(r.decision.code, 'ERR_USAGE')
  t.equal(r.decision.reason, 'explain needs root: it reads the pod\'s /proc entries and mount namespace and the state dir as a launch does; run it as root')
})

let n = 0
async function pod(vm: { uuid: string; name: string }, tok: string) {
  const p = await makePodmanPod({ ...vm, token: tok, qemuUid: 20001 })
  n++
  t.teardown(() => p.destroy())
  return p
}

t.test('authorised: the decision names the pod\'s pid, and consumes nothing', async (t) => {
  const vm = { uuid: `explain-${process.pid}-a`, name: 'vma' }
  const tok = await token(vm)
  const p = await pod(vm, tok)
  const r = await explain(vm, tok)
  t.equal(r.code, 0, r.out)
  t.equal(r.decision.outcome, 'authorised')
  t.equal(r.decision.target.pid, p.pid)
  t.same(r.decision.namespaces, ['mnt', 'net', 'ipc', 'uts', 'cgroup'])
  t.ok(r.decision.cgroups.includes(p.cgroups.v2), `the pod's own cgroups (${p.cgroups.v2})`)
  t.equal((await explain(vm, tok)).decision.outcome, 'authorised', 'explain again: the token was not consumed')
  for (const part of tok.split('.')) t.notOk(r.out.includes(part), 'the token is in no output')
})

t.test('refused with the right code', async (t) => {
  const vm = { uuid: `explain-${process.pid}-r`, name: 'vmr' }
  const good = await token(vm)
  await pod(vm, good)
  const now = Math.floor(Date.now() / 1000)
  const cases: [string, string, { uuid: string; name: string }][] = [
    ['ERR_TOKEN_EXPIRED', await token(vm, { iat: now - 100, exp: now - 40 }), vm],
    ['ERR_TOKEN_SIGNATURE', await token(vm, {}, foreign), vm],
    ['ERR_TOKEN_VM_MISMATCH', await token({ uuid: 'other-vm', name: vm.name }), vm],
    ['ERR_SECRET_MISMATCH', await token(vm), vm],
  ]
  for (const [code, tok, v] of cases) {
    const r = await explain(v, tok)
    t.equal(r.decision.code, code, code)
    t.equal(r.code, 77)
    t.ok(r.decision.hint)
    for (const part of tok.split('.')) t.notOk(r.out.includes(part), `${code}: the token is in no output`)
  }
})

t.test('two launchers for one VM: ERR_TARGET_AMBIGUOUS naming both pids', async (t) => {
  const vm = { uuid: `explain-${process.pid}-2`, name: 'vm2' }
  const tok = await token(vm)
  const a = await pod(vm, tok)
  const b = await pod(vm, tok)
  const r = await explain(vm, tok)
  t.equal(r.decision.code, 'ERR_TARGET_AMBIGUOUS')
  t.same([...r.decision.pids].sort(), [a.pid, b.pid].sort())
  t.same(readdirSync(dir).includes('state') ? readdirSync(`${dir}/state`) : [], [], 'nothing recorded')
})
