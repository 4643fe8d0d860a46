// Issue 9 item 2, the front's side: the installed setuid front, run by an unprivileged caller as
// libvirt would (fds 5 and 28, a poisoned environment), asks a fake agent
// (test/fixtures/fake-agent.py, bound at the installed sysconfdir's qemu-kube-agent/agent.sock)
// and does what its canned reply says, or falls back. Node is a stub here (the install's --node):
// it prints the argv the front handed it, so the standalone path's `@front AGENT ...` contract is
// asserted exactly, whatever the Node side does with it. Real parts for the rest: a simulated pod
// in fresh namespaces and cgroups, its pidfd and cgroup.procs fds, the reporter as QEMU.
import t, { type Test } from 'tap'
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { FIXTURES, REPO, installTemp } from '../helpers/install.ts'
import { gidOf, uidOf } from '../helpers/ids.ts'
import { makePod, requireRoot } from '../helpers/pod.ts'
import { inheritedFds, libvirtStdio } from '../helpers/fds.ts'

if (!requireRoot(t)) process.exit(0)

const USER = 'nobody'
const GROUP = 'nogroup'
const UID = uidOf(USER)
const GID = gidOf(GROUP)
const REPORTER = `${FIXTURES}/reporter`

// An install whose Node is a stub: run as `NODE --no-warnings BUNDLE @front ...` (the front's
// standalone exec) it prints its argv, one per line (the tests' args hold no newline); anything
// else (the build's code cache) goes to the real Node.
const base = mkdtempSync('/var/tmp/qk-front-agent-')
chmodSync(base, 0o755)
t.teardown(() => rmSync(base, { recursive: true, force: true }))
const stub = `${base}/node-stub`
writeFileSync(stub, `#!/bin/sh
if [ "$3" = @front ]; then for a in "$@"; do printf '%s\\n' "$a"; done; exit 0; fi
exec ${process.execPath} "$@"
`, { mode: 0o755 })
const prefix = `${base}/prefix`
const sysconfdir = `${base}/etc`
execFileSync('bash', [`${REPO}/scripts/install.sh`, '--prefix', prefix, '--sysconfdir', sysconfdir, '--group', GROUP, '--node', stub],
  { stdio: ['ignore', 'ignore', 'inherit'] })
const FRONT = `${prefix}/bin/qemu-kube`
const BUNDLE = `${prefix}/lib/qemu-kube/qemu-kube.cjs`
const AGENT_DIR = `${sysconfdir}/qemu-kube-agent`
const SOCKET = `${AGENT_DIR}/agent.sock`

interface Run { pid: number; code: number | null; stdout: string; stderr: string; report?: Record<string, any> }

const callerFds = () => [0, 1, 2, 5, 28, ...inheritedFds()].sort((a, b) => a - b)

const VM_ENV = { KUBEVIRT_VM_UUID: 'fa-uuid', KUBEVIRT_VM_NAME: 'favm', KUBEVIRT_SECRET: 'not.a-real.token' }
const QEMU_ARGS = ['-name', 'guest=fa,debug-threads=on', '-S', '-chardev', 'socket,id=charmonitor,fd=28,server=on,wait=off']

function runFront(args: string[], env: Record<string, string> = VM_ENV): Promise<Run> {
  const { stdio, close } = libvirtStdio()
  const child = spawn(FRONT, args, {
    uid: UID,
    gid: GID,
    stdio,
    env: { PATH: '/usr/bin:/bin', LD_PRELOAD: '/nonexistent/poison.so', KUBEVIRT_OTHER: 'dropped', NODE_DEBUG: 'fs', ...env },
  })
  close()
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d) => (stdout += d))
  child.stderr!.on('data', (d) => (stderr += d))
  return new Promise((res) => child.on('close', (code) => {
    let report
    try {
      report = JSON.parse(stdout)
    } catch {
      report = undefined
    }
    res({ pid: child.pid!, code, stdout, stderr, report })
  }))
}

/** The agent's directory as the agent makes it: root:root 0700 (or mode), fresh for each test. */
function agentDir(mode = 0o700) {
  rmSync(AGENT_DIR, { recursive: true, force: true })
  mkdirSync(AGENT_DIR)
  chmodSync(AGENT_DIR, mode)
}

interface Agent { request(): string[]; proc: ChildProcess }

async function startAgent(t: Test, mode: 'reply' | 'cut' | 'stale' | 'silent' | 'full', reply: string[], extra: string[] = []): Promise<Agent> {
  const dir = mkdtempSync('/var/tmp/qk-fa-agent-')
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(`${dir}/reply.json`, JSON.stringify(reply))
  const proc = spawn('python3', [`${REPO}/test/fixtures/fake-agent.py`, SOCKET, mode, `${dir}/reply.json`, `${dir}/request.json`, ...extra],
    { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { if (proc.exitCode === null) proc.kill('SIGKILL') })
  const line = await new Promise<string>((res) => createInterface({ input: proc.stdout! }).once('line', res))
  t.equal(line, 'ready', 'the fake agent listens')
  return { proc, request: () => JSON.parse(readFileSync(`${dir}/request.json`, 'utf8')) }
}

const MAGIC = 'qk-agent-1'
const expectedRequest = (args: string[]) => [MAGIC, 'op=launch', `uid=${UID}`, `gid=${GID}`, 'groups=', `fds=${callerFds().join(',')}`,
  `env=KUBEVIRT_VM_UUID=${VM_ENV.KUBEVIRT_VM_UUID}`, `env=KUBEVIRT_VM_NAME=${VM_ENV.KUBEVIRT_VM_NAME}`,
  `env=KUBEVIRT_SECRET=${VM_ENV.KUBEVIRT_SECRET}`, ...args.map((a) => `arg=${a}`), 'end']

/** What the stub Node printed: the front's standalone exec. */
function standaloneArgv(t: Test, r: Run, agent: string, args: string[]) {
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stderr, '', 'the front itself printed nothing')
  t.same(r.stdout.split('\n').slice(0, -1),
    ['--no-warnings', BUNDLE, '@front', agent, String(UID), String(GID), '-', callerFds().join(','), ...args],
    `standalone ran with AGENT=${agent}`)
}

function refusal(t: Test, r: Run, status: number, code: string, msg: string) {
  t.equal(r.stdout, '', `${code}: neither Node nor QEMU ran`)
  const lines = r.stderr.trim().split('\n')
  t.equal(lines.length, 1, 'exactly one line on stderr')
  const line = JSON.parse(lines[0]!)
  t.equal(line.code, code)
  t.equal(line.msg, msg)
  t.ok(line.hint, 'with a hint')
  t.equal(r.code, status, 'sysexits status')
}

const probeEnter = (exe = REPORTER) => ['--pid=0', '--ns=', `--uid=${UID}`, `--gid=${GID}`, '--groups=', '--fds={fds}',
  `--exec-host=${exe}`, '--', 'qemu-system-x86_64', '-S'].map((e) => `enter=${e}`)
const QEMU_ENV = ['env=PATH=/usr/bin:/bin', 'env=LC_ALL=C', 'env=QK_TEST=from-the-agent']

t.test('refused: the decision line verbatim, the reply\'s status, nothing run', async (t) => {
  agentDir()
  const decision = '{"level":"error","msg":"decision","outcome":"refused","code":"ERR_TOKEN_EXPIRED","path":"agent"}'
  const a = await startAgent(t, 'reply', [MAGIC, 'outcome=refused', 'exit=77', `decision=${decision}`, 'end'])
  const r = await runFront(QEMU_ARGS)
  t.equal(r.code, 77)
  t.equal(r.stderr, `${decision}\n`, 'the decision line and a newline, nothing else')
  t.equal(r.stdout, '', 'neither Node nor QEMU ran')
  t.same(a.request(), expectedRequest(QEMU_ARGS), 'the request: caller ids, its fds, only the KUBEVIRT_* kept, argv[1..]')
})

t.test('probe: the enter steps in-process, QEMU as the caller with the reply\'s env and exactly the caller\'s fds', async (t) => {
  agentDir()
  const decision = '{"level":"info","msg":"decision","outcome":"probe","path":"agent"}'
  await startAgent(t, 'reply', [MAGIC, 'outcome=probe', `decision=${decision}`, ...QEMU_ENV, ...probeEnter(), 'end'])
  const r = await runFront(['-S', '-no-user-config'], {})
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stderr, `${decision}\n`)
  const rep = r.report!
  t.ok(rep, 'the reporter ran')
  t.equal(rep.pid, r.pid, 'in place: the pid libvirt spawned')
  t.same([rep.uid, rep.euid, rep.suid], [UID, UID, UID])
  t.same(rep.argv, ['qemu-system-x86_64', '-S'])
  t.same(rep.env, ['PATH=/usr/bin:/bin', 'LC_ALL=C', 'QK_TEST=from-the-agent'], 'exactly the reply\'s environment')
  t.same(rep.fds, callerFds(), 'exactly the caller\'s fds: no socket, no received fd')
  t.equal(String(rep.ns.mnt), readlinkSync('/proc/self/ns/mnt').replace(/\D/g, ''), 'on the host')
  for (const k of ['CapPrm', 'CapEff', 'CapBnd']) t.equal(BigInt(`0x${rep.status?.[k] ?? rep[k] ?? 'ff'}`), 0n, `${k} is empty`)
})

t.test('authorised: the pod\'s namespaces and cgroups from the agent\'s pidfd and cgroup.procs fds', async (t) => {
  agentDir()
  const p = await makePod({ uuid: 'fa-uuid', name: 'favm', token: 'unused' })
  t.teardown(() => p.destroy())
  const procs = [...Object.values(p.cgroups.v1), ...(p.cgroups.v2 ? [p.cgroups.v2] : [])].map((d) => `${d}/cgroup.procs`)
  const decision = `{"level":"info","msg":"decision","outcome":"authorised","target":{"pid":${p.pid}},"path":"agent"}`
  const enterArgs = [`--pid=${p.pid}`, '--ns=mnt,net,ipc,uts,cgroup', `--uid=${UID}`, `--gid=${GID}`, '--groups=', '--fds={fds}',
    `--exec-host=${REPORTER}`, '--mnt=pod', '--', 'qemu-system-x86_64', '-S'].map((e) => `enter=${e}`)
  await startAgent(t, 'reply', [MAGIC, 'outcome=authorised', `decision=${decision}`, `cgroups=${procs.length}`, ...QEMU_ENV, ...enterArgs, 'end'],
    ['--pidfd-of', String(p.pid), ...procs.flatMap((c) => ['--cgroup', c])])
  const r = await runFront(QEMU_ARGS)
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stderr, `${decision}\n`)
  const rep = r.report!
  t.ok(rep, 'the reporter ran')
  t.equal(rep.pid, r.pid, 'in place')
  for (const ns of ['mnt', 'net', 'ipc', 'uts', 'cgroup'] as const) t.equal(String(rep.ns[ns]), String(p.ns[ns]), `${ns} is the pod's`)
  t.same(rep.cgroup, readFileSync(`/proc/${p.pid}/cgroup`, 'utf8').trim().split('\n').map((l: string) => l.replace(/:\/.*$/, ':/')),
    'in the pod\'s cgroups in every hierarchy (its cgroup namespace\'s root)')
  t.same([rep.uid, rep.euid, rep.suid], [UID, UID, UID])
  t.same(rep.env, ['PATH=/usr/bin:/bin', 'LC_ALL=C', 'QK_TEST=from-the-agent'])
  t.same(rep.fds, callerFds(), 'no pidfd, no cgroup fd, no socket reached QEMU')
})

t.test('no socket, or no directory: standalone with AGENT=absent', async (t) => {
  rmSync(AGENT_DIR, { recursive: true, force: true })
  standaloneArgv(t, await runFront(QEMU_ARGS), 'absent', QEMU_ARGS)
  agentDir()
  standaloneArgv(t, await runFront(QEMU_ARGS), 'absent', QEMU_ARGS)
})

t.test('a stale socket (nobody listening): standalone with AGENT=down:ECONNREFUSED', async (t) => {
  agentDir()
  const a = await startAgent(t, 'stale', [])
  await new Promise((res) => a.proc.once('exit', res))
  t.ok(existsSync(SOCKET), 'the socket file is left')
  standaloneArgv(t, await runFront(QEMU_ARGS), 'down:ECONNREFUSED', QEMU_ARGS)
})

t.test('a reply cut short: down:EOF; a garbage reply: down:MALFORMED', async (t) => {
  const decision = '{"msg":"decision","outcome":"refused"}'
  agentDir()
  await startAgent(t, 'cut', [MAGIC, 'outcome=refused', 'exit=77', `decision=${decision}`, 'end'])
  standaloneArgv(t, await runFront(QEMU_ARGS), 'down:EOF', QEMU_ARGS)
  agentDir()
  await startAgent(t, 'reply', ['hello', 'world', 'end'])
  standaloneArgv(t, await runFront(QEMU_ARGS), 'down:MALFORMED', QEMU_ARGS)
})

t.test('an agent that never answers: down:TIMEOUT after 30 s', async (t) => {
  agentDir()
  await startAgent(t, 'silent', [])
  const started = Date.now()
  const r = await runFront(QEMU_ARGS)
  const s = (Date.now() - started) / 1000
  standaloneArgv(t, r, 'down:TIMEOUT', QEMU_ARGS)
  t.ok(s >= 29.9 && s < 36, `the reply timeout is 30 s (took ${s.toFixed(1)} s)`)
})

t.test('an agent whose connect backlog is full: down:TIMEOUT after the 2 s send timeout', async (t) => {
  agentDir()
  await startAgent(t, 'full', [])
  const started = Date.now()
  const r = await runFront(QEMU_ARGS)
  const s = (Date.now() - started) / 1000
  standaloneArgv(t, r, 'down:TIMEOUT', QEMU_ARGS)
  t.ok(s >= 1.9 && s < 6, `connect waited for the send timeout, 2 s (took ${s.toFixed(1)} s)`)
})

t.test('strict replies: each of these is MALFORMED and falls back', async (t) => {
  const d = 'decision={"msg":"decision"}'
  const cases: Record<string, [string[], string[]?]> = {
    'an unknown key': [[MAGIC, 'outcome=refused', 'exit=77', d, 'colour=red', 'end']],
    'exit=0 for a refusal': [[MAGIC, 'outcome=refused', 'exit=0', d, 'end']],
    'a decision with a newline': [[MAGIC, 'outcome=refused', 'exit=77', 'decision={"a":\n1}', 'end']],
    'records out of order': [[MAGIC, 'outcome=refused', d, 'exit=77', 'end']],
    'bytes after end': [[MAGIC, 'outcome=refused', 'exit=77', d, 'end', 'more']],
    'KUBEVIRT_SECRET in QEMU\'s env': [[MAGIC, 'outcome=probe', d, 'env=KUBEVIRT_SECRET=x', ...probeEnter(), 'end']],
    'a probe with fds': [[MAGIC, 'outcome=probe', d, ...probeEnter(), 'end'], ['--pidfd-of', String(process.pid)]],
    'authorised with fewer fds than cgroups=': [[MAGIC, 'outcome=authorised', d, 'cgroups=2', ...probeEnter(), 'end'], ['--pidfd-of', String(process.pid)]],
    '--fds other than the caller\'s': [[MAGIC, 'outcome=probe', d, ...probeEnter().map((e) => e.replace('{fds}', '0,1,2')), 'end']],
  }
  for (const [name, [reply, extra]] of Object.entries(cases)) {
    agentDir()
    await startAgent(t, 'reply', reply, extra)
    const r = await runFront(QEMU_ARGS)
    t.equal(r.stdout.split('\n')[3], 'down:MALFORMED', name)
    t.equal(r.code, 0, `${name}: the standalone stub ran`)
  }
})

t.test('an agent that is not root: ERR_FRONT_AGENT_UNSAFE, no fallback', async (t) => {
  agentDir()
  const a = await startAgent(t, 'reply', [MAGIC, 'outcome=refused', 'exit=77', 'decision={}', 'end'], ['--as-uid', String(UID)])
  refusal(t, await runFront(QEMU_ARGS), 71, 'ERR_FRONT_AGENT_UNSAFE', `the agent's socket is served by uid ${UID} (pid ${a.proc.pid}), not root`)
})

t.test('an agent directory others can enter: ERR_FRONT_UNSAFE_PATH, no fallback', async (t) => {
  agentDir(0o755)
  refusal(t, await runFront(QEMU_ARGS), 71, 'ERR_FRONT_UNSAFE_PATH', `${AGENT_DIR}: mode 0755: the agent's directory must be 0700`)
})

t.test('a request of exactly 256 KiB is sent; one byte more is refused, never sent', async (t) => {
  const LIMIT = 256 * 1024
  const head = expectedRequest([]).reduce((n, r) => n + Buffer.byteLength(r) + 1, 0)
  // Three big arguments: one argument is at most 128 KiB (MAX_ARG_STRLEN).
  const X = 90 * 1024
  const fill = (extra: number) => ['-S', 'x'.repeat(X), 'x'.repeat(X),
    'y'.repeat(LIMIT - head - ('arg=-S'.length + 1) - 2 * ('arg='.length + X + 1) - ('arg='.length + 1) + extra)]
  agentDir()
  const decision = '{"msg":"decision","outcome":"refused"}'
  const a = await startAgent(t, 'reply', [MAGIC, 'outcome=refused', 'exit=77', `decision=${decision}`, 'end'])
  const r = await runFront(fill(0))
  t.equal(r.code, 77, r.stderr)
  t.equal(a.request().reduce((n, rec) => n + Buffer.byteLength(rec) + 1, 0), LIMIT, 'the agent got all 262144 bytes')
  agentDir()
  const b = await startAgent(t, 'reply', [MAGIC, 'outcome=refused', 'exit=77', `decision=${decision}`, 'end'])
  refusal(t, await runFront(fill(1)), 64, 'ERR_FRONT_REQUEST_TOO_BIG', 'the QEMU argv and environment exceed the agent\'s 256 KiB request limit')
  t.equal(b.proc.exitCode, null, 'the agent got no connection')
})

t.test('a request over 256 KiB is refused, never sent', async (t) => {
  agentDir()
  const a = await startAgent(t, 'reply', [MAGIC, 'outcome=refused', 'exit=77', 'decision={}', 'end'])
  const big = ['-S', 'x'.repeat(100 * 1024), 'y'.repeat(100 * 1024), 'z'.repeat(60 * 1024)]
  refusal(t, await runFront(big), 64, 'ERR_FRONT_REQUEST_TOO_BIG', 'the QEMU argv and environment exceed the agent\'s 256 KiB request limit')
  t.equal(a.proc.exitCode, null, 'the agent got no connection')
})

t.test('with the real Node: its decision line says path standalone and the AGENT the front gave it', async (t) => {
  const inst = installTemp(t, GROUP)
  inst.writeConfig({ vm_uid_range: [UID, UID], qemu_binary: REPORTER, probe_qemu_binary: REPORTER, state_dir: `${base}/state` })
  const dir = `${inst.sysconfdir}/qemu-kube-agent`
  const run = (args: string[]) => new Promise<Run>((res) => {
    const c = spawn(inst.front, args, { uid: UID, gid: GID, stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin' } })
    let stdout = ''
    let stderr = ''
    c.stdout!.on('data', (d) => (stdout += d))
    c.stderr!.on('data', (d) => (stderr += d))
    c.on('close', (code) => res({ pid: c.pid!, code, stdout, stderr }))
  })
  const PROBE = ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none,accel=kvm:tcg',
    '-qmp', 'unix:/tmp/qk-fa-probe.monitor,server=on,wait=off', '-pidfile', '/tmp/qk-fa-probe.pid', '-daemonize']
  let r = await run(PROBE)
  t.equal(r.code, 0, r.stderr)
  let d = JSON.parse(r.stderr.trim().split('\n').at(-1)!)
  t.same([d.msg, d.outcome, d.path, d.agent], ['decision', 'probe', 'standalone', 'absent'], 'no socket: absent')
  t.equal(JSON.parse(r.stdout).uid, UID, 'and the probe ran')

  mkdirSync(dir, { mode: 0o700 })
  chmodSync(dir, 0o700)
  const stale = spawn('python3', [`${REPO}/test/fixtures/fake-agent.py`, `${dir}/agent.sock`, 'stale', '/dev/null', '/dev/null'], { stdio: 'ignore' })
  await new Promise((res) => stale.once('exit', res))
  r = await run(PROBE)
  t.equal(r.code, 0, r.stderr)
  d = JSON.parse(r.stderr.trim().split('\n').at(-1)!)
  t.same([d.path, d.agent], ['standalone', 'down:ECONNREFUSED'], 'a stale socket: down:ECONNREFUSED')
})
