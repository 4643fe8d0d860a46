// Issue 9, the agent's side, with real parts: the agent of a temporary install, started as an
// operator would (`qemu-kube agent` through the installed front, as root: the bundle with the
// install's sysconfdir compiled in, beside the koffi the front checks) on its real socket, talked to by a raw client (test/agent/fixtures/raw-client.py: Python's recv_fds) and
// by the installed setuid front; a real podman pod for the launch.
import t, { type Test } from 'tap'
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, lstatSync, readlinkSync, mkdirSync, readdirSync, readFileSync, renameSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { SignJWT } from 'jose'
import { FIXTURES, REPO, installTemp, toml } from '../helpers/install.ts'
import { gidOf, uidOf } from '../helpers/ids.ts'
import { requireRoot } from '../helpers/pod.ts'
import { makePodmanPod, podmanUnavailable } from '../helpers/podman.ts'
import { AUD, ISS, rsaKey, tempDir, writeKey } from '../helpers/tokens.ts'
import { encodeRequest, type AgentRequest } from '../../src/emulator/agent-protocol.ts'
import { libvirtStdio } from '../helpers/fds.ts'

if (!requireRoot(t, 'the agent is root, its socket root-only')) process.exit(0)

const USER = 'nobody'
const GROUP = 'nogroup'
const UID = uidOf(USER)
const GID = gidOf(GROUP)
const key = await rsaKey()
const next = await rsaKey()
const keyDir = tempDir(t, 'qk-agent-keys-')
const pub = writeKey(keyDir, 'signing.pem', key.pem)
const inst = installTemp(t, GROUP)
const stateDir = `${tempDir(t, 'qk-agent-state-')}/state`
const config = {
  token_public_keys: [pub],
  vm_uid_range: [UID, UID],
  pod_link_socket: '',
  qemu_binary: `${FIXTURES}/reporter`,
  probe_qemu_binary: `${FIXTURES}/reporter`,
  state_dir: stateDir,
}
inst.writeConfig(config)
const SOCKET = `${inst.sysconfdir}/qemu-kube-agent/agent.sock`
interface Agent {
  child: ChildProcess
  lines(): Array<Record<string, any>>
  waitFor(pred: (l: Record<string, any>) => boolean, what: string): Promise<Record<string, any>>
  exited: Promise<number | null>
}

async function startAgent(t: Test): Promise<Agent> {
  const child = spawn(inst.front, ['agent'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (err += d))
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const lines = () => out.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as Record<string, any>)
  const waitFor = async (pred: (l: Record<string, any>) => boolean, what: string) => {
    for (let i = 0; i < 200; i++) {
      const hit = lines().find(pred)
      if (hit !== undefined) return hit
      if (child.exitCode !== null) throw new Error(`agent exited ${child.exitCode} before ${what}: ${err}${out}`)
      await new Promise((r) => setTimeout(r, 50))
    }
    throw new Error(`agent: no ${what} in 10 s: ${err}${out}`)
  }
  await waitFor((l) => l.msg === 'agent listening', 'listening line')
  return { child, lines, waitFor, exited }
}

interface Reply { records: string[]; fds: string[]; error: string | null; sendError?: string }

/** The raw client, as root unless `as` names a user. */
function raw(bytes: Buffer, mode: 'shut' | 'hang' | 'send' = 'send', as?: number): Promise<Reply> {
  const dir = tempDir(t, 'qk-raw-')
  chmodSync(dir, 0o755)
  const file = `${dir}/req.hex`
  writeFileSync(file, bytes.toString('hex'), { mode: 0o644 })
  return new Promise((res, rej) => {
    execFile('python3', [`${REPO}/test/agent/fixtures/raw-client.py`, SOCKET, mode, file],
      { ...(as === undefined ? {} : { uid: as, gid: as }), timeout: 30_000, maxBuffer: 4 << 20 },
      (e, stdout, stderr) => {
        try {
          res(JSON.parse(stdout) as Reply)
        } catch {
          rej(new Error(`raw client: ${e?.message} ${stderr}`))
        }
      })
  })
}

const frame = (...records: string[]) => Buffer.from(records.map((r) => `${r}\0`).join(''), 'utf8')
const field = (r: Reply, k: string) => r.records.filter((x) => x.startsWith(`${k}=`)).map((x) => x.slice(k.length + 1))
const decision = (r: Reply) => JSON.parse(field(r, 'decision')[0] ?? 'null')
const PROBE_ARGS = ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none,accel=kvm:tcg', '-qmp', 'unix:/tmp/x.monitor,server=on,wait=off']
const probe: AgentRequest = { op: 'launch', caller: { uid: UID, gid: GID, groups: [] }, fds: [0, 1, 2], env: {}, argv: PROBE_ARGS }

function refusedWith(t: Test, r: Reply, code: string, message: string, exit = 76) {
  t.equal(r.error, null, 'the reply arrived')
  t.same(r.records.slice(0, 3), ['qk-agent-1', 'outcome=refused', `exit=${exit}`], `${code}: a refusal`)
  t.same(r.records.slice(-2), ['end', ''])
  const d = decision(r)
  t.equal(d.code, code)
  t.equal(d.reason, message)
  t.equal(d.path, 'agent')
  t.same(r.fds, [], 'no fds with a refusal')
}

let seq = 0
async function token(signer = key, vm = { uuid: `agent-${process.pid}`, name: 'agentvm' }) {
  const now = Math.floor(Date.now() / 1000)
  return new SignJWT({ iss: ISS, aud: AUD, sub: vm.uuid, vm_name: vm.name, qemu_uid: UID, jti: `agent-${process.pid}-${seq++}`, iat: now, exp: now + 60 })
    .setProtectedHeader({ alg: 'RS256' }).sign(signer.privateKey)
}
const launch = (tok: string, vm = { uuid: `agent-${process.pid}`, name: 'agentvm' }): AgentRequest => ({
  op: 'launch', caller: { uid: UID, gid: GID, groups: [] }, fds: [0, 1, 2],
  env: { KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.name, KUBEVIRT_SECRET: tok }, argv: ['-S'],
})

const agent = await startAgent(t)

t.test('the socket: a root 0700 directory, a root 0600 socket; a second agent refuses to start', async (t) => {
  const dir = lstatSync(`${inst.sysconfdir}/qemu-kube-agent`)
  t.equal(dir.mode & 0o7777, 0o700)
  t.equal(dir.uid, 0)
  const sock = lstatSync(SOCKET)
  t.ok(sock.isSocket())
  t.equal(sock.mode & 0o777, 0o600)
  t.equal(sock.uid, 0)
  const second = await new Promise<{ code: number | null; stderr: string }>((res) => {
    execFile(inst.front, ['agent'], (e, _o, stderr) => res({ code: e === null ? 0 : (e as { code: number }).code, stderr }))
  })
  t.equal(second.code, 71)
  t.equal(JSON.parse(second.stderr.trim()).msg, `another qemu-kube agent listens on ${SOCKET}; stop it first`)
  t.ok(lstatSync(SOCKET).isSocket(), 'the live agent keeps its socket')
  t.equal(agent.lines().find((l) => l.msg === 'agent listening')?.procIndex, 'events', 'launchers come from the proc index (root, init pid namespace)')
})

t.test("the agent's Node: the front's memory caps, and no environment but PATH and the glibc tunable", async (t) => {
  const pid = agent.child.pid!
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1)
  t.same(argv.slice(1), ['--no-warnings', '--max-semi-space-size=1', `${inst.prefix}/lib/qemu-kube/qemu-kube.cjs`, 'agent'],
    'the front execed Node in its place (same pid) with the young generation capped')
  const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter((e) => e !== '').sort()
  t.same(env, ['GLIBC_TUNABLES=glibc.malloc.arena_max=2', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin'], "two malloc arenas; nothing of the caller's environment")
})

t.test('a non-root client cannot connect', async (t) => {
  const r = await raw(encodeRequest(probe), 'send', UID)
  t.equal(r.error, 'EACCES')
  t.same(r.records, [])
})

t.test('a probe is answered with the same env and enter options as the standalone chain', async (t) => {
  const r = await raw(encodeRequest(probe))
  t.same(r.records.slice(0, 2), ['qk-agent-1', 'outcome=probe'])
  t.same(field(r, 'env'), ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL=C'])
  t.same(field(r, 'enter'), ['--pid=0', '--ns=', `--uid=${UID}`, `--gid=${GID}`, '--groups=', '--fds=0,1,2', '--mnt=pod', '--carry=',
    '--carry-roots=', '--devices=', '--pod-link=', `--exec-host=${FIXTURES}/reporter`, '--', `${FIXTURES}/reporter`, ...PROBE_ARGS])
  const d = decision(r)
  t.same(Object.keys(d), ['level', 'time', 'pid', 'name', 'outcome', 'code', 'caller', 'qemu', 'path', 'durationMs', 'msg'],
    'the fields of the standalone chain\'s pino line, in its order')
  t.same({ ...d, time: 'T', pid: 'P', durationMs: 'D' }, { level: 'info', time: 'T', pid: 'P', name: 'qemu-kube', outcome: 'probe', code: 'OK',
    caller: { uid: UID }, qemu: { path: `${FIXTURES}/reporter`, from: 'host' }, path: 'agent', durationMs: 'D', msg: 'decision' })
  t.type(d.pid, 'number', 'the peer\'s pid')
  t.same(r.fds, [])
})

t.test('garbage, truncated, 1 MB and never-finished requests are refused with their codes while a good one is served', async (t) => {
  const started = Date.now()
  const [garbage, truncated, big, slow, good] = await Promise.all([
    raw(Buffer.from('GET / HTTP/1.1\r\n\r\n\0')),
    raw(frame('qk-agent-1', 'op=launch', 'uid=1'), 'shut'),
    raw(Buffer.concat([frame('qk-agent-1', 'op=launch', 'uid=1', 'gid=1', 'groups=', 'fds='), Buffer.alloc(1 << 20, 0x61)])),
    raw(frame('qk-agent-1', 'op=launch'), 'hang'),
    new Promise<Reply>((res) => setTimeout(() => res(raw(encodeRequest(probe))), 300)),
  ])
  refusedWith(t, garbage, 'ERR_AGENT_REQUEST_MALFORMED', 'the request is not qk-agent-1 framing: expected the magic record qk-agent-1, got "GET / HTTP/1.1\\r\\n\\r\\n"')
  refusedWith(t, truncated, 'ERR_AGENT_REQUEST_TRUNCATED', "expected the request's end record before EOF, got EOF after 27 bytes")
  refusedWith(t, big, 'ERR_AGENT_REQUEST_TOO_BIG', 'expected a request of at most 262144 bytes, got more than that')
  t.match(decision(slow).reason, /^expected the whole request within 2000 ms, got 21 bytes$/)
  refusedWith(t, slow, 'ERR_AGENT_REQUEST_TIMEOUT', 'expected the whole request within 2000 ms, got 21 bytes')
  t.same(good.records.slice(0, 2), ['qk-agent-1', 'outcome=probe'], 'the good request, sent while the others were open, is served')
  t.ok(Date.now() - started >= 1900, 'the slow one was given its 2 s')
  t.equal(agent.child.exitCode, null, 'the agent lives on')
  const codes = agent.lines().filter((l) => l.msg === 'decision').map((l) => l.code)
  for (const c of ['ERR_AGENT_REQUEST_MALFORMED', 'ERR_AGENT_REQUEST_TRUNCATED', 'ERR_AGENT_REQUEST_TOO_BIG', 'ERR_AGENT_REQUEST_TIMEOUT']) {
    t.ok(codes.includes(c), `${c} logged`)
  }
})

t.test('keys reload: replacing the key file, SIGHUP; a failed reload keeps the old config', async (t) => {
  const before = await raw(encodeRequest(launch(await token(next))))
  refusedWith(t, before, 'ERR_TOKEN_SIGNATURE', decision(before).reason, 77)
  const reloads = () => agent.lines().filter((l) => l.msg === 'agent reloaded config and keys').length
  const n = reloads()
  // Atomic replace (a new inode), as a key rotation would do it.
  writeFileSync(`${keyDir}/signing.pem.new`, next.pem, { mode: 0o644 })
  renameSync(`${keyDir}/signing.pem.new`, pub)
  await agent.waitFor(() => reloads() > n, 'reload after the key file changed')
  const fresh = await raw(encodeRequest(launch(await token(next))))
  t.equal(decision(fresh).code, 'ERR_TARGET_NOT_FOUND', 'a token of the new key passes verification (no pod: not found)')
  const old = await raw(encodeRequest(launch(await token(key))))
  t.equal(decision(old).code, 'ERR_TOKEN_SIGNATURE', 'the old key is gone')

  const m = reloads()
  agent.child.kill('SIGHUP')
  const hup = await agent.waitFor((l) => l.msg === 'agent reloaded config and keys' && l.why === 'SIGHUP', 'SIGHUP reload')
  t.equal(hup.keys, 1)
  t.ok(reloads() > m)

  t.teardown(() => inst.writeConfig(config)) // a failure below must not leave the next subtests a broken config
  writeFileSync(inst.configPath, 'this is = = not toml\n')
  const failed = await agent.waitFor((l) => l.msg === 'agent reload failed; keeping the previous config and keys', 'failed reload line')
  t.equal(failed.code, 'ERR_CONFIG_SYNTAX')
  t.equal(failed.level, 'error')
  const still = await raw(encodeRequest(launch(await token(next))))
  t.equal(decision(still).code, 'ERR_TARGET_NOT_FOUND', 'still served with the previous config and keys')
  const k = reloads()
  inst.writeConfig(config)
  await agent.waitFor(() => reloads() > k, 'reload of the fixed config')
})

t.test('a launch through the real front into a real podman pod: the agent serves it, path agent', { skip: podmanUnavailable() ?? false }, async (t) => {
  const vm = { uuid: `agent-${process.pid}-pod`, name: 'agentpodvm' }
  const tok = await token(next, vm)
  const p = await makePodmanPod({ uuid: vm.uuid, name: vm.name, token: tok, qemuUid: UID, volumes: [`${FIXTURES}:${FIXTURES}:ro`] })
  t.teardown(() => p.destroy())
  const env = { KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.name, KUBEVIRT_SECRET: tok }
  const fdLinks = () => readdirSync(`/proc/${agent.child.pid}/fd`).map((f) => { try { return `${f}:${readlinkSync(`/proc/${agent.child.pid}/fd/${f}`)}` } catch { return `${f}:gone` } })
  // What a request opens: pidfds and cgroup.procs files (connection sockets come and go).
  const agentFds = () => fdLinks().filter((l) => l.endsWith('[pidfd]') || l.endsWith('/cgroup.procs')).length
  // The agent closes a request's fds right after its sendmsg, so the front may have exited a
  // moment before: the count must come back to `want` within a second, not on the first look.
  const settledFds = async (want: number) => {
    for (let i = 0; i < 50 && agentFds() !== want; i++) await new Promise((res) => setTimeout(res, 20))
    return agentFds()
  }

  // Another launch for this uid holds its lease lock (a standalone chain its caller stopped):
  // the agent refuses at once instead of sleeping on the thread that serves everyone.
  mkdirSync(`${stateDir}/uids`, { recursive: true, mode: 0o700 })
  const holder = spawn('python3', ['-c', 'import fcntl,sys,time; f=open(sys.argv[1],"a"); fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(60)',
    `${stateDir}/uids/${UID}.lock`], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { holder.kill('SIGKILL') })
  await new Promise((res) => holder.stdout!.once('data', res))
  const fdsBefore = agentFds()
  const t0 = Date.now()
  const locked = await runFront(['-name', 'guest=agentpod', '-S'], env)
  t.equal(locked.code, 77)
  const lockLine = JSON.parse(locked.stderr.trim())
  t.same({ code: lockLine.code, reason: lockLine.reason, path: lockLine.path },
    { code: 'ERR_UID_IN_USE', reason: `another launch for uid ${UID} holds its lease lock; the agent does not wait for it`, path: 'agent' })
  t.ok(Date.now() - t0 < 1500, 'refused at once, not after the 2 s standalone wait')
  t.equal(await settledFds(fdsBefore), fdsBefore, 'the refusal closed the pidfd it had opened')
  holder.kill('SIGKILL')
  await new Promise((res) => holder.on('exit', res))

  const r = await runFront(['-name', 'guest=agentpod', '-S'], env)
  t.equal(r.code, 0, r.stderr)
  t.equal(await settledFds(fdsBefore), fdsBefore, 'every fd opened for the launch was closed once replied')
  const line = JSON.parse(r.stderr.trim().split('\n')[0]!)
  t.equal(line.outcome, 'authorised')
  t.equal(line.msg, 'decision')
  t.equal(line.pid, r.pid, 'the line names the front (it became QEMU), as the standalone line names its own pid')
  t.equal(line.path, 'agent')
  t.type(line.durationMs, 'number', 'with its duration, as the standalone line')
  t.equal(line.target.pid, p.pid)
  const rep = JSON.parse(r.stdout)
  t.equal(rep.pid, r.pid, 'QEMU is the process libvirt spawned')
  for (const ns of ['net', 'ipc', 'uts'] as const) t.equal(String(rep.ns[ns]), String(p.ns[ns]), `${ns} namespace is the pod's`)
  // The agent logs after it has replied (the front does not wait for the log): give the line
  // its moment to arrive through the pipe.
  const servedLine = () => agent.lines().find((l) => l.msg === 'decision' && l.outcome === 'authorised')
  for (let i = 0; i < 100 && servedLine() === undefined; i++) await new Promise((res) => setTimeout(res, 20))
  const served = servedLine()
  t.equal(served?.peer, r.pid, 'the agent logged the front as its peer')
  const lease = JSON.parse(readFileSync(`${stateDir}/uids/${UID}`, 'utf8'))
  t.same(lease, { vm: vm.uuid, name: vm.name, pid: r.pid, startTime: lease.startTime, launcher: { pid: p.pid, startTime: lease.launcher.startTime } },
    'the lease names the front (now QEMU) and the pod\'s launcher')

  const cli = (args: string[]) => new Promise<{ code: number; stdout: string; stderr: string }>((res) => {
    execFile(inst.front, args, (e, stdout, stderr) => res({ code: e === null ? 0 : Number((e as { code: number }).code), stdout, stderr }))
  })
  // The stand-in QEMU has exited already, so its lease names no live VM: the agent's status
  // (status/collect.ts) lists live ones only. This checks the op's wiring, not the collection.
  const json = await cli(['status', vm.name, '--output', 'json'])
  t.equal(json.code, 0, json.stderr)
  t.same(JSON.parse(json.stdout), { stats: [] })
  const human = await cli(['status'])
  t.equal(human.code, 0, human.stderr)
  const bad = await cli(['status', '../x'])
  t.equal(bad.code, 64, 'the agent\'s refusal comes back with its code')
  t.match(bad.stderr, /"code":"ERR_USAGE"/)
  const metrics = await cli(['metrics'])
  t.equal(metrics.code, 0, metrics.stderr)
  t.match(metrics.stdout, /qemu_kube_decisions_total\{outcome="authorised",code="OK",path="agent"\} 1/)
  t.match(metrics.stdout, /qemu_kube_decisions_total\{outcome="refused",code="ERR_UID_IN_USE",path="agent"\} 1/)
})

t.test('SIGTERM: no new connections, the in-flight request drains, exit 0; then standalone serves (agent absent)', async (t) => {
  // In flight = accepted by the agent (one more fd in it), not merely started: a client still
  // starting up when SIGTERM lands is no connection to drain (python can take 300 ms to start).
  const agentFdCount = () => readdirSync(`/proc/${agent.child.pid}/fd`).length
  const before = agentFdCount()
  const inFlight = raw(frame('qk-agent-1', 'op=launch'), 'hang')
  for (let i = 0; i < 500 && agentFdCount() <= before; i++) await new Promise((r) => setTimeout(r, 10))
  t.ok(agentFdCount() > before, 'the agent has accepted the in-flight connection')
  agent.child.kill('SIGTERM')
  await agent.waitFor((l) => l.msg === 'agent stopping: no new connections, draining', 'stopping line')
  const late = await raw(encodeRequest(probe))
  t.ok(late.error === 'ENOENT' || late.error === 'ECONNREFUSED', `a new connection is refused (${late.error})`)
  const drained = await inFlight
  t.equal(decision(drained).code, 'ERR_AGENT_REQUEST_TIMEOUT', 'the in-flight request was answered')
  t.equal(await agent.exited, 0)
  t.throws(() => lstatSync(SOCKET), { code: 'ENOENT' }, 'its socket is gone')

  const r = await runFront(PROBE_ARGS, {})
  t.equal(r.code, 0, r.stderr)
  const line = JSON.parse(r.stderr.trim().split('\n')[0]!)
  t.same({ outcome: line.outcome, path: line.path, agent: line.agent }, { outcome: 'probe', path: 'standalone', agent: 'absent' })
})

t.test('standalone where proc_root is not our pid namespace: ERR_AGENT_UNAVAILABLE, 69', async (t) => {
  const fakeProc = tempDir(t, 'qk-otherproc-')
  mkdirSync(`${fakeProc}/1`)
  writeFileSync(inst.configPath, toml({ ...config, proc_root: fakeProc }))
  t.teardown(() => inst.writeConfig(config))
  const r = await runFront(['-S'], { KUBEVIRT_VM_UUID: 'x-1', KUBEVIRT_VM_NAME: 'x', KUBEVIRT_SECRET: await token() })
  t.equal(r.code, 69)
  const line = JSON.parse(r.stderr.trim())
  t.equal(line.code, 'ERR_AGENT_UNAVAILABLE')
  t.equal(line.reason, `${fakeProc}/self does not exist, so standalone cannot serve this launch; the agent at ${SOCKET} did not (AGENT=absent)`)
  t.equal(line.path, 'standalone')
  t.equal(r.stdout, '', 'QEMU never ran')

  // The host's /proc seen from a child pid namespace has a `self`, naming our host pid: not ours.
  symlinkSync('1', `${fakeProc}/self`)
  const r2 = await runFront(['-S'], { KUBEVIRT_VM_UUID: 'x-1', KUBEVIRT_VM_NAME: 'x', KUBEVIRT_SECRET: await token() })
  t.equal(r2.code, 69)
  const line2 = JSON.parse(r2.stderr.trim())
  t.equal(line2.code, 'ERR_AGENT_UNAVAILABLE')
  t.equal(line2.reason, `${fakeProc}/self is pid 1, not this process (pid ${r2.pid}), so standalone cannot serve this launch; the agent at ${SOCKET} did not (AGENT=absent)`)
  t.equal(r2.stdout, '', 'QEMU never ran')
})

// The agent recorded a launch (its replay record names the front) and died before its reply;
// the front fell back to standalone, which is the same process (same pid and start time): it
// must accept the record as its own. The front is held (SIGSTOP, then exec in place, so pid and
// start time are the front's) while the test writes the record the agent would have written.
t.test('a record the agent wrote for this very front is accepted by its standalone fallback; one naming another process is a replay', { skip: podmanUnavailable() ?? false }, async (t) => {
  const vm = { uuid: `agent-${process.pid}-fallback`, name: 'fallbackvm' }
  const tok = await token(next, vm)
  const jti = JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()).jti as string
  const p = await makePodmanPod({ uuid: vm.uuid, name: vm.name, token: tok, qemuUid: UID, volumes: [`${FIXTURES}:${FIXTURES}:ro`] })
  t.teardown(() => p.destroy())
  const env = { KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.name, KUBEVIRT_SECRET: tok }
  const record = `${stateDir}/${createHash('sha256').update(jti).digest('hex')}`
  const exp = Math.floor(Date.now() / 1000) + 60
  const writeRecord = (content: string) => {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 })
    writeFileSync(record, content, { mode: 0o600 })
    utimesSync(record, exp, exp)
  }

  const other = await runFront(['-name', 'guest=fallback', '-S'], env, (pid) => writeRecord(`${pid + 1} ${startTimeOf(pid)}\n`))
  t.equal(other.code, 77)
  t.equal(JSON.parse(other.stderr.trim()).code, 'ERR_TOKEN_REPLAYED', 'a record naming another process is a replay')

  const own = await runFront(['-name', 'guest=fallback', '-S'], env, (pid) => writeRecord(`${pid} ${startTimeOf(pid)}\n`))
  t.equal(own.code, 0, own.stderr)
  const line = JSON.parse(own.stderr.trim().split('\n')[0]!)
  t.same({ outcome: line.outcome, path: line.path, agent: line.agent, jti: line.jti }, { outcome: 'authorised', path: 'standalone', agent: 'absent', jti })
  t.equal(JSON.parse(own.stdout).pid, own.pid, 'QEMU started, in place')
})

t.test('a stale socket: the front falls back with AGENT=down:ECONNREFUSED; a new agent unlinks it and serves', async (t) => {
  execFileSync('python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()', SOCKET])
  t.ok(lstatSync(SOCKET).isSocket(), 'a socket nobody listens on')
  const r = await runFront(PROBE_ARGS, {})
  t.equal(r.code, 0, r.stderr)
  const line = JSON.parse(r.stderr.trim().split('\n')[0]!)
  t.same({ outcome: line.outcome, path: line.path, agent: line.agent }, { outcome: 'probe', path: 'standalone', agent: 'down:ECONNREFUSED' })

  const again = await startAgent(t)
  const served = await raw(encodeRequest(probe))
  t.same(served.records.slice(0, 2), ['qk-agent-1', 'outcome=probe'], 'the new agent took the stale socket\'s place')
  again.child.kill('SIGTERM')
  t.equal(await again.exited, 0)
})

function startTimeOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!
}

interface Run { pid: number; code: number | null; stdout: string; stderr: string }

/**
 * The installed front as libvirt runs it: as the VM's uid, fds 5 and 28 open. With `held`, a
 * shell stops itself first and execs the front in place once `held(pid)` has run.
 */
async function runFront(args: string[], env: Record<string, string>, held?: (pid: number) => void): Promise<Run> {
  const { stdio, close } = libvirtStdio()
  const [exe, argv] = held === undefined ? [inst.front, args] : ['/bin/sh', ['-c', 'kill -STOP $$; exec "$0" "$@"', inst.front, ...args]]
  const child = spawn(exe, argv, { uid: UID, gid: GID, stdio, env: { PATH: '/usr/bin:/bin', ...env } })
  close()
  if (held !== undefined) {
    for (let i = 0; i < 200 && !/^\S+ \(.*\) T /.test(readFileSync(`/proc/${child.pid}/stat`, 'latin1')); i++) await new Promise((r) => setTimeout(r, 10))
    held(child.pid!)
    process.kill(child.pid!, 'SIGCONT')
  }
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d) => (stdout += d))
  child.stderr!.on('data', (d) => (stderr += d))
  return new Promise((res) => child.on('close', (code) => res({ pid: child.pid!, code, stdout, stderr })))
}
