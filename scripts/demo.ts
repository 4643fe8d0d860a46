// `npm run demo` (scripts/demo.sh bundles and runs this, as root, after scripts/setup.sh):
// stock libvirt boots one small TCG VM through qemu-kube into a real podman pod (the launcher
// image, test/helpers/podman.ts), as the VM's own host uid, and the demo prints what a skeptic
// would check, including another VM's uid failing to reach it. The first start is served by the
// resident agent (`qemu-kube agent`, docs/CHAIN.md section 3), whose status and metrics the demo
// shows; then the agent is stopped (SIGTERM) and the VM started again through the standalone
// chain, the fallback every front takes when no agent listens. Then it puts everything back.
//
//   demo [--keep]     --keep: leave the VM, its pod and libvirt running; print how to clean up
//   demo --cleanup    undo a kept (or crashed) demo, from its state file
//
// Everything the demo creates is recorded in STATE_FILE as it goes; the clean-up reads only
// that, so it is the same code after success, an error, Ctrl-C, or in a later --cleanup run.
// The libvirt side (qemu.conf backup and restore, which daemons were started) is the test
// helper's shared protocol (test/helpers/libvirt.ts), so the demo and the e2e tests can share a
// libvirtd; the pod side is the podman helper's private store (test/helpers/podman.ts).
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import {
  chmodSync, closeSync, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, rmdirSync, statSync,
  writeFileSync,
} from 'node:fs'
import { dirname } from 'node:path'
import {
  domainPid, domainXml, qemuConf, QEMU_CONF, startLibvirt, STATE_DIR as LIBVIRT_STATE, stopLibvirt, URI, virsh,
} from '../test/helpers/libvirt.ts'
import { hierarchies } from '../test/helpers/pod.ts'
import {
  cleanupStale, launcherImage, makePodmanPod, NS_NAMES, podman, podmanUnavailable, REPO, rotateToken, SECRET_PATH, STORE, type PodmanPod,
} from '../test/helpers/podman.ts'
import { agentSocket } from '../test/helpers/transport.ts'

const NAME = 'qemu-kube-demo' // libvirt's domain name
const VM_NAME = 'demo-vm' // KUBEVIRT_VM_NAME, the pod's -kubevirt.vm.name
/** The VM's own host identity (virt-handler would allocate it from vm_uid_range). */
const VM_UID = 20001
/** Another VM's identity: the attacker of step 8. */
const OTHER_UID = 20002
const QEMU_USER = 'libvirt-qemu'
const QEMU_GROUP = 'kvm'
const RUN_DIR = '/run/qemu-kube-demo'
const STATE_FILE = `${RUN_DIR}/state.json`
/** Where the launcher writes the full fragment (token included), in its own container. */
const FRAGMENT_IN_POD = '/tmp/domain-fragment.xml'
const REACH = `${REPO}/dist/native/fixtures/reach`
const LOG = `/var/log/libvirt/qemu/${NAME}.log`
/** An in-memory serial console: a host socket path does not exist in QEMU's own mount namespace. */
const CONSOLE_ARGS = ['-chardev', 'ringbuf,id=qkcons,size=64K', '-serial', 'chardev:qkcons', '-machine', 'graphics=off']
const STEPS = 11

interface AgentRecord { pid: number; startTime: string; socket: string; log: string }

interface State {
  /** The demo process that wrote this. */
  pid: number
  kept: boolean
  /** /var/tmp/qk-demo-XXXX: the install prefix, sysconfdir, keys, qemu-kube's state dir. */
  base?: string
  front?: string
  libvirt?: boolean
  /** `qemu-kube agent` (pid and start time: a recycled pid is never signalled), until it exited. */
  agent?: AgentRecord
  /** The daemons that were not running when the demo started libvirt (so it started them). */
  daemonsStarted?: string[]
  domain?: boolean
  /** The podman pod (in the helper's store), its name recorded before it is made. */
  pod?: {
    name: string
    /** The process that made it (its secret directories are STORE.secrets/<owner>-*). */
    owner: number
    id?: string
    pid?: number
    /** The pod's cgroup directories (podman's /libpod_parent/<id> in every hierarchy). */
    cgroups?: string[]
    secretHostDir?: string
  }
}

// ---------------------------------------------------------------------------------------------
// output

const tty = process.stdout.isTTY
const bold = (s: string) => (tty ? `\x1b[1m${s}\x1b[0m` : s)
const dim = (s: string) => (tty ? `\x1b[2m${s}\x1b[0m` : s)
const green = (s: string) => (tty ? `\x1b[32m${s}\x1b[0m` : s)
const red = (s: string) => (tty ? `\x1b[31m${s}\x1b[0m` : s)
const out = (s = '') => process.stdout.write(`${s}\n`)
let stepNo = 0
let stepStart = 0
function step(title: string): void {
  if (interrupted) throw new Interrupted()
  stepDone()
  stepNo++
  stepStart = Date.now()
  out(`\n${bold(`[${stepNo}/${STEPS}] ${title}`)}`)
}
function stepDone(): void {
  if (stepNo > 0 && stepStart > 0) out(dim(`      (${secs(Date.now() - stepStart)})`))
  stepStart = 0
}
const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`
/** An aligned "label   value" line; continuation lines of value are indented to match. */
function kv(label: string, value: string, width = 25): void {
  const pad = ' '.repeat(6 + width)
  out(`      ${label.padEnd(width)}${value.split('\n').join(`\n${pad}`)}`)
}

class Interrupted extends Error {
  constructor() {
    super('interrupted')
  }
}

// ---------------------------------------------------------------------------------------------
// state

let state: State = { pid: process.pid, kept: false }

function save(): void {
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o755 })
  writeFileSync(`${STATE_FILE}.new`, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 })
  renameSync(`${STATE_FILE}.new`, STATE_FILE)
}

function loadState(): State | null {
  try {
    return JSON.parse(readFileSync(STATE_FILE, 'utf8')) as State
  } catch {
    return null
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------------------------
// small tools

function run(cmd: string, args: readonly string[], opts: { input?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input: opts.input ?? '', env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' } })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout).trim()}`)
  return r.stdout
}

async function virshOk(args: readonly string[]): Promise<string> {
  const r = await virsh(args)
  if (r.code !== 0) throw new Error(`virsh ${args.join(' ')}: ${r.stderr.trim()}`)
  return r.stdout
}

const nsOf = (pid: number | 'self', ns: string) => Number(/\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/${ns}`))![1])

function status(pid: number): Record<string, string> {
  return Object.fromEntries(readFileSync(`/proc/${pid}/status`, 'utf8').trim().split('\n').map((l) => {
    const i = l.indexOf(':')
    return [l.slice(0, i), l.slice(i + 1).trim()]
  }))
}

function idOf(file: '/etc/passwd' | '/etc/group', name: string): number | null {
  const line = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith(`${name}:`))
  return line ? Number(line.split(':')[2]) : null
}
function nameOf(file: '/etc/passwd' | '/etc/group', id: number): string {
  return readFileSync(file, 'utf8').split('\n').find((l) => l.split(':')[2] === String(id))?.split(':')[0] ?? '?'
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
async function until(what: string, fn: () => boolean, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; !fn();) {
    if (Date.now() > end) throw new Error(`timed out after ${secs(ms)} waiting for ${what}`)
    await sleep(25)
  }
}

/**
 * Reads the in-memory serial console (CONSOLE_ARGS) over libvirt's monitor until `done` matches
 * or ms pass. HMP's ringbuf_read consumes what it returns and prints control characters as \\uXXXX.
 */
async function readConsole(done: RegExp, ms: number): Promise<string> {
  let text = ''
  for (const end = Date.now() + ms; Date.now() < end && !done.test(text); await sleep(100)) {
    const r = await virsh(['qemu-monitor-command', '--hmp', NAME, 'ringbuf_read qkcons 65536'])
    if (r.code !== 0) throw new Error(`virsh qemu-monitor-command --hmp ringbuf_read: ${r.stderr.trim()}`)
    text += r.stdout.replace(/\r?\n$/, '').replace(/\\u([0-9A-Fa-f]{4})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))).replace(/\\\\/g, '\\')
  }
  return text
}

/** The reach fixture (test/fixtures/reach.c): root drops to uid:uid (after entering mntnsOf's mount namespace). */
function reach(args: readonly string[], uid: number, mntnsOf?: number): Promise<Record<string, any>> {
  const argv = [...(mntnsOf ? [`--mntns-of=${mntnsOf}`] : []), `--uid=${uid}`, `--gid=${uid}`, ...args]
  return new Promise((res, rej) => execFile(REACH, argv, { env: {} }, (err, stdout, stderr) => {
    if (err) rej(new Error(`reach ${argv.join(' ')}: ${(stderr || err.message).trim()}`))
    else res(JSON.parse(stdout) as Record<string, any>)
  }))
}

/** A mount point's fstype and options in a process's mount namespace (its /proc/PID/mountinfo). */
function mountOf(pid: number, mountPoint: string): string | null {
  const line = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').filter((l) => l.split(' ')[4] === mountPoint).at(-1)
  if (line === undefined) return null
  const [fstype, , superOpts] = line.slice(line.indexOf(' - ') + 3).split(' ')
  const mntOpts = line.split(' ')[5]!.split(',')
  return `${fstype} ${[...mntOpts, ...superOpts!.split(',').filter((o) => o !== 'rw' && o !== 'ro' && !mntOpts.includes(o))].join(',')}`
}

/** qemu-kube's decision line in the domain log after byte `from` (libvirt's lines skipped); null when there is none. */
function decisionSince(from: number): (Record<string, any> & { line: string }) | null {
  const line = readFileSync(LOG).subarray(from).toString('utf8').split('\n').find((l) => l.includes('"name":"qemu-kube"') && l.includes('"msg":"decision"'))
  return line === undefined ? null : { ...(JSON.parse(line) as Record<string, any>), line }
}

/** What a decision's durationMs measures, by the path that served it. */
const tookWhere = (d: Record<string, any>) => (d.path === 'agent' ? 'in the agent, from accepting the front\'s connection to its reply'
  : 'in qemu-kube\'s Node stage, from its start (Node\'s own boot not counted) to this decision')

// ---------------------------------------------------------------------------------------------
// the agent

/** Field 22 of /proc/PID/stat (after the comm, which may hold spaces and parentheses); null when gone. */
function startTimeOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null
  } catch {
    return null
  }
}

/** The recorded agent is still that process (same pid and start time) and not a zombie. */
const agentAlive = (a: AgentRecord) => alive(a.pid) && startTimeOf(a.pid) === a.startTime

/** The agent this process started; null once it exited (or for a --cleanup run). */
let agentChild: { child: ChildProcess; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } | null = null

/** Every agent this demo started, for the final check (the state forgets one once it exited). */
const agentsStarted: AgentRecord[] = []

const agentLog = (a: AgentRecord): Record<string, any>[] => (existsSync(a.log) ? readFileSync(a.log, 'utf8') : '').split('\n').flatMap((l) => {
  try {
    return l.startsWith('{') ? [JSON.parse(l) as Record<string, any>] : []
  } catch {
    return []
  }
})

/**
 * Starts the install's `qemu-kube agent` as root, its stdout and stderr (the JSON log) into
 * LOG_FILE, and waits for its "agent listening" line (logged once the socket is bound and
 * 0600). Not by connecting: a connection that sends no request is a refused decision
 * (ERR_AGENT_REQUEST_TRUNCATED), which would show in the metrics the demo prints. Recorded
 * (pid, start time) before the wait, so any clean-up from here on stops it.
 */
async function startAgent(front: string, sysconfdir: string, logFile: string): Promise<AgentRecord> {
  const fd = openSync(logFile, 'wx', 0o600)
  let child: ChildProcess
  try {
    child = spawn(front, ['agent'], { stdio: ['ignore', fd, fd], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' } })
  } finally {
    closeSync(fd)
  }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on('exit', (code, signal) => res({ code, signal })))
  child.on('error', () => {}) // a spawn failure shows as its exit below
  agentChild = { child, exited }
  const pid = child.pid
  const startTime = pid === undefined ? null : startTimeOf(pid)
  if (pid === undefined || startTime === null) throw new Error(`qemu-kube agent did not start: ${readFileSync(logFile, 'utf8').trim()}`)
  const a: AgentRecord = { pid, startTime, socket: agentSocket({ sysconfdir }), log: logFile }
  state.agent = a
  agentsStarted.push(a)
  save()
  for (const end = Date.now() + 15_000; !agentLog(a).some((l) => l.msg === 'agent listening');) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu-kube agent exited ${child.exitCode ?? child.signalCode}: ${readFileSync(logFile, 'utf8').trim()}`)
    if (Date.now() > end) throw new Error(`qemu-kube agent did not listen on ${a.socket} in 15 s: ${readFileSync(logFile, 'utf8').trim()}`)
    await sleep(50)
  }
  return a
}

interface AgentExit {
  /** Our child's exit status (null: killed by a signal, or not our child). */
  code: number | null
  signal: NodeJS.Signals | null
  /** It outlived SIGTERM by 5 s and was SIGKILLed. */
  killed: boolean
  /** Our own child (an earlier demo's agent is only seen to be gone). */
  mine: boolean
}

/** SIGTERM to the recorded agent, then (after 5 s) SIGKILL; 'absent' when it is gone already. */
async function stopAgent(a: AgentRecord): Promise<AgentExit | 'absent'> {
  const mine = agentChild !== null && agentChild.child.pid === a.pid ? agentChild : null
  const gone = () => (mine !== null ? mine.child.exitCode !== null || mine.child.signalCode !== null : !agentAlive(a))
  let killed = false
  if (!gone()) {
    process.kill(a.pid, 'SIGTERM')
    for (const end = Date.now() + 5000; !gone() && Date.now() < end;) await sleep(20)
    if (!gone()) {
      process.kill(a.pid, 'SIGKILL')
      killed = true
      await until(`the agent (pid ${a.pid}) to exit after SIGKILL`, gone, 5000)
    }
  } else if (mine === null) return 'absent'
  if (mine === null) return { code: null, signal: null, killed, mine: false }
  agentChild = null
  return { ...(await mine.exited), killed, mine: true }
}

// ---------------------------------------------------------------------------------------------
// the demo

let pod: PodmanPod | null = null
let interrupted = false
let cleaning: Promise<void> | null = null

async function demo(keep: boolean): Promise<void> {
  const t0 = Date.now()
  out(bold('qemu-kube demo: stock libvirt boots a VM through qemu-kube into a real podman pod, as the VM\'s own uid'))
  out(dim(`  repo ${REPO}; libvirt ${URI}; ${keep ? '--keep: the VM stays up at the end' : 'everything is undone at the end (--keep to leave it up)'}`))

  const leftover = loadState()
  if (leftover) {
    out(dim(`  an earlier demo (pid ${leftover.pid}) did not finish: cleaning up after it first`))
    await cleanup({ ...leftover, pid: process.pid }, { quiet: true })
  }
  save()
  owner = true

  // 1 ------------------------------------------------------------------------------------------
  step('qemu-kube, installed under a temporary prefix')
  const base = mkdtempSync('/var/tmp/qk-demo-')
  chmodSync(base, 0o755) // the qemu user must reach the front
  state.base = base
  save()
  const prefix = `${base}/prefix`
  const sysconfdir = `${base}/etc`
  const front = `${prefix}/bin/qemu-kube`
  const config = `${sysconfdir}/qemu-kube.conf`
  run('bash', [`${REPO}/scripts/install.sh`, '--prefix', prefix, '--sysconfdir', sysconfdir, '--group', QEMU_GROUP])
  state.front = front
  save()
  const st = statSync(front)
  kv('front (the <emulator>)', `${front}  ${nameOf('/etc/passwd', st.uid)}:${nameOf('/etc/group', st.gid)} ${(st.mode & 0o7777).toString(8)} (setuid root)`)
  kv('enter helper', `${prefix}/libexec/qemu-kube/qemu-kube-enter`)
  kv('Node bundle', `${prefix}/lib/qemu-kube/qemu-kube.cjs`)

  // 2 ------------------------------------------------------------------------------------------
  step('a signing key pair (what KubeVirt\'s virt-handler would hold) and the config')
  const keys = `${base}/keys`
  mkdirSync(keys, { mode: 0o700 })
  run(front, ['keygen', '--private', `${keys}/signing.key`, '--public', `${keys}/token.pub`])
  writeFileSync(config, [
    '# qemu-kube demo config: every other key has its default (see etc/qemu-kube.conf).',
    `token_public_keys = [ "${keys}/token.pub" ]`,
    `state_dir = "${base}/state"`,
    '',
  ].join('\n'), { mode: 0o644 })
  const checked = JSON.parse(run(front, ['check-config', '--output', 'json'])) as { effective: Record<string, unknown>; keys: { kid: string }[]; allowed: unknown }
  kv('qemu-kube keygen', `${keys}/signing.key (0600), ${keys}/token.pub`)
  kv('config', `${config}`)
  kv('qemu-kube check-config', `ok: key ${checked.keys.map((k) => k.kid).join(', ')}; QEMU ${checked.effective.qemu_binary} from the ${checked.effective.qemu_binary_from}; `
    + `namespaces ${(checked.effective.namespaces as string[]).join(',')}`)

  // 3 ------------------------------------------------------------------------------------------
  step('libvirt, configured for qemu-kube')
  for (const [file, name] of [['/etc/group', QEMU_GROUP], ['/etc/group', 'libvirt-qemu']] as const) {
    if (idOf(file, name) === null) {
      run('groupadd', ['-r', name])
      kv('created group', name)
    }
  }
  if (idOf('/etc/passwd', QEMU_USER) === null) {
    run('useradd', ['-r', '-g', QEMU_GROUP, '-G', 'libvirt-qemu', '-d', '/var/lib/libvirt', '-s', '/usr/sbin/nologin', QEMU_USER])
    kv('created user', QEMU_USER)
  }
  kv('qemu user', `${QEMU_USER} (uid ${idOf('/etc/passwd', QEMU_USER)}), group ${QEMU_GROUP} (gid ${idOf('/etc/group', QEMU_GROUP)})`)
  const confBefore = existsSync(QEMU_CONF) ? readFileSync(QEMU_CONF, 'utf8') : null
  const daemonsBefore = { virtlogd: daemonRunning('virtlogd'), libvirtd: daemonRunning('libvirtd') }
  const lt = Date.now()
  // Should this throw or be cut short, the helper's own exit handler undoes what it did.
  await startLibvirt()
  registeredHere = true
  state.libvirt = true
  state.daemonsStarted = (['virtlogd', 'libvirtd'] as const).filter((d) => daemonsBefore[d] === null)
  save()
  if (interrupted) throw new Interrupted()
  if (confBefore === qemuConf()) kv(QEMU_CONF, 'already the one qemu-kube needs: left as it is')
  else {
    kv(QEMU_CONF, confBefore === null ? 'there was none (it will be removed at the end)'
      : `backed up to ${LIBVIRT_STATE}/qemu.conf.orig (restored at the end)`)
    kv('wrote', qemuConf().split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.replace(/\s+#.*/, '')).join('\n'))
  }
  for (const d of ['virtlogd', 'libvirtd'] as const) {
    kv(d, daemonsBefore[d] !== null ? `already running (pid ${daemonsBefore[d]}): reused, left running`
      : `started (pid ${daemonRunning(d)}); stopped at the end`)
  }
  kv('virsh version', `${(await virshOk(['version'])).split('\n').find((l) => /running hypervisor/i.test(l))?.trim() ?? 'ok'} (${secs(Date.now() - lt)})`)
  // A domain left by a demo that was killed outright.
  if ((await virsh(['domstate', NAME])).code === 0) {
    await removeDomain()
    kv('removed', `domain ${NAME}, left over by an earlier demo`)
  }

  // 4 ------------------------------------------------------------------------------------------
  step('libvirt probes the new emulator: qemu-kube serves the probe on the host, unprivileged, no pod')
  const pt = Date.now()
  const caps = await virshOk(['domcapabilities', '--emulatorbin', front, '--virttype', 'qemu', '--arch', 'x86_64'])
  kv('virsh domcapabilities', `ok in ${secs(Date.now() - pt)}: ${/<path>([^<]*)<\/path>/.exec(caps)?.[1]}, `
    + `machine ${/<machine>([^<]*)<\/machine>/.exec(caps)?.[1] ?? '?'}, ${(caps.match(/<value>/g) ?? []).length} capability values`)

  // 5 ------------------------------------------------------------------------------------------
  step('a real pod (podman + runc): virt-launcher from the launcher image, the token as a Secret volume')
  await cleanupStale() // pods of test runs (or demos) that died without their teardown
  const it = Date.now()
  const img = await launcherImage()
  kv('launcher image', `${img.image} (${img.built ? `built in ${img.seconds.toFixed(1)} s` : 'cached'}, ${Math.round(img.bytes / 1e6)} MB; `
    + `node, dist/virt-launcher.cjs and QEMU inside; ${secs(Date.now() - it)})`)
  const uuid = randomUUID()
  // What virt-handler would do: a host uid for this VM, a short-lived single-use token binding
  // it (qemu_uid), put in the pod's Secret volume.
  const token = run(front, ['token', 'issue', '--key', `${keys}/signing.key`, '--vm-uuid', uuid, '--vm-name', VM_NAME,
    '--qemu-uid', String(VM_UID), '--ttl', '60s']).trim()
  // makePodmanPod names its first pod qkt-<pid>-0-<name>: recorded before it exists.
  state.pod = { name: `qkt-${process.pid}-0-${VM_NAME}`, owner: process.pid }
  save()
  const pt5 = Date.now()
  pod = await makePodmanPod({ uuid, name: VM_NAME, token, qemuUid: VM_UID, extraArgs: ['-emulator', front, '-domain-xml-out', FRAGMENT_IN_POD] })
  state.pod = { name: pod.podName, owner: process.pid, id: pod.podId, pid: pod.pid, cgroups: [...pod.podCgroups], secretHostDir: pod.secretHostDir }
  save()
  const podMs = Date.now() - pt5
  // The launcher wrote the fragment (with the token) 0600 in its container: read it from there, then remove it.
  const fragmentFile = `/proc/${pod.pid}/root${FRAGMENT_IN_POD}`
  // Its leading comment says where each piece goes (and names the elements): not part of the XML.
  const fragment = readFileSync(fragmentFile, 'utf8').replace(/<!--[\s\S]*?-->\n?/g, '')
  rmSync(fragmentFile, { force: true })
  const argv = readFileSync(`/proc/${pod.pid}/cmdline`, 'utf8').split('\0').filter(Boolean)
  kv('podman pod', `${pod.podName} (${pod.podId.slice(0, 12)}), ${secs(podMs)}; store ${STORE.root}`)
  kv('virt-launcher', `host pid ${pod.pid}, PID 1 of the container:\n`
    + argv.map((a, i) => (i > 0 && a.startsWith('-') && !a.startsWith('--') ? `\n  ${a}` : ` ${a}`)).join('').trim())
  kv('pod namespaces', NS_NAMES.map((n) => `${n}:${pod!.ns[n]}`).join(' '))
  kv('launcher cgroup', pod.cgroups.v2 ?? Object.values(pod.cgroups.v1)[0]!)
  const tokenInPod = `/proc/${pod.pid}/root${SECRET_PATH}` // relative symlinks only: resolved inside the pod's root
  const tst = statSync(tokenInPod)
  kv('token in the pod', `${SECRET_PATH} -> ${readlinkSync(tokenInPod)}: ${tst.size} bytes, ${nameOf('/etc/passwd', tst.uid)}:${nameOf('/etc/group', tst.gid)} `
    + `${(tst.mode & 0o777).toString(8)}, on ${mountOf(pod.pid, SECRET_PATH.slice(0, SECRET_PATH.lastIndexOf('/')))}`)
  kv('token on the host', existsSync(SECRET_PATH) ? `${SECRET_PATH} exists on the host too (not the pod's)` : `${SECRET_PATH}: no such file`)
  const tokenBytes = /KUBEVIRT_SECRET' value='([^']*)'/.exec(fragment)?.[1]?.length ?? 0
  kv('launcher\'s fragment', `(-domain-xml-out ${FRAGMENT_IN_POD}, read through /proc/${pod.pid}/root, then removed)\n`
    + fragment.replace(/(KUBEVIRT_SECRET' value=')[^']*'/, `$1[${tokenBytes}-byte token, not shown]'`).trim())

  // 6 ------------------------------------------------------------------------------------------
  step('the resident agent: qemu-kube agent, started as root (its JSON log captured)')
  const at = Date.now()
  const agent = await startAgent(front, sysconfdir, `${base}/agent.log`)
  const listening = agentLog(agent).find((l) => l.msg === 'agent listening')
  kv('qemu-kube agent', `pid ${agent.pid}, as root (${front} agent: the front drops to the caller, root, and execs Node); listening in ${secs(Date.now() - at)}`)
  const sockDir = statSync(dirname(agent.socket))
  const sock = lstatSync(agent.socket)
  kv('socket', `${agent.socket}\n${sock.isSocket() ? 'socket' : red('not a socket')} ${sock.uid}:${sock.gid} ${(sock.mode & 0o777).toString(8)} in a directory `
    + `${sockDir.uid}:${sockDir.gid} ${(sockDir.mode & 0o7777).toString(8)} (root only: the front checks both and the peer's uid)`)
  kv('its log', `${agent.log}: ${listening ? `"agent listening", ${listening.keys} key(s), launcher index ${listening.procIndex}` : red('no "agent listening" line')}`)

  // 7 ------------------------------------------------------------------------------------------
  step(`define and start "${NAME}" (TCG, 64 MiB, no disk, in-memory serial console) with the launcher's fragment, through the agent`)
  const emulatorLine = /<emulator>[^<]*<\/emulator>/.exec(fragment)?.[0]
  const seclabel = /<seclabel[\s\S]*?<\/seclabel>/.exec(fragment)?.[0]
  const commandline = /<qemu:commandline>[\s\S]*<\/qemu:commandline>/.exec(fragment)?.[0]
  if (!emulatorLine || !seclabel || !commandline) throw new Error('the launcher\'s fragment lacks <emulator>, <seclabel> or <qemu:commandline>')
  const withConsole = commandline.replace('<qemu:commandline>', () => ['<qemu:commandline>', ...CONSOLE_ARGS.map((a) => `  <qemu:arg value='${a}'/>`)].join('\n'))
  const xml = domainXml({ name: NAME, uuid, emulator: '@EMULATOR@' })
    .replace(/<emulator>@EMULATOR@<\/emulator>/, () => emulatorLine)
    .replace('</domain>', () => `  ${seclabel}\n  ${withConsole.split('\n').join('\n  ')}\n</domain>`)
  kv('from the fragment', '<emulator>, <seclabel> (+UID:+UID), <qemu:commandline> with the three <qemu:env>')
  kv('added', `${CONSOLE_ARGS.map((a) => `<qemu:arg value='${a}'/>`).join(' ')}\n(a ring buffer read over the monitor: a host socket path would not exist in QEMU's mount namespace)`)
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o755 })
  const xmlFile = `${RUN_DIR}/${NAME}.xml`
  writeFileSync(xmlFile, xml, { mode: 0o600 }) // holds the token: root-only, removed at once
  state.domain = true
  save()
  let dt = Date.now()
  try {
    await virshOk(['define', xmlFile])
  } finally {
    rmSync(xmlFile, { force: true })
  }
  kv('virsh define', `ok (${secs(Date.now() - dt)})`)
  dt = Date.now()
  const logFrom = existsSync(LOG) ? statSync(LOG).size : 0
  await virshOk(['start', NAME])
  const agentStartMs = Date.now() - dt
  kv('virsh start', `ok in ${secs(agentStartMs)} (wall time: libvirt's fork, the front, the agent's answer, the enter steps, QEMU up)`)
  const consoleText = readConsole(/No bootable device/, 15_000)
  const decision = decisionSince(logFrom)
  const agentDecision = decision === null ? undefined : agentLog(agent).find((l) => l.msg === 'decision' && l.jti === decision.jti)
  kv('served by', decision === null ? red('no decision line in the domain log')
    : `${decision.path === 'agent' ? green('path "agent"') : red(`path ${JSON.stringify(decision.path)}`)} (the decision line in ${LOG}): ${decision.outcome}, `
      + `durationMs ${decision.durationMs} (the agent's, from accepting the front's connection to its reply)`)
  kv('the agent\'s log', agentDecision ? `the same decision (jti ${agentDecision.jti}, peer ${agentDecision.peer}: the front, which became QEMU)`
    : red('no decision line for this jti'))
  if (decision?.path !== 'agent') throw new Error(`the agent did not serve the launch: ${decision === null ? 'no decision line' : `path ${JSON.stringify(decision.path)}, agent ${JSON.stringify(decision.agent)}`}`)

  // 8 ------------------------------------------------------------------------------------------
  step('the evidence')
  const qpid = domainPid(NAME)
  if (qpid === null) throw new Error('libvirt reports no pid for the domain')
  const qs = status(qpid)
  const ids = (s: string) => s.split('\t').join(' ')
  const who = (file: '/etc/passwd' | '/etc/group', id: number) => {
    const n = nameOf(file, id)
    return n === '?' ? (id === VM_UID ? 'the VM\'s own (no passwd entry)' : '(no entry)') : n
  }
  out(bold('    QEMU'))
  kv('pid', `${qpid}  (libvirt's pidfile /run/libvirt/qemu/${NAME}.pid)`)
  kv('exe', `${readlinkSync(`/proc/${qpid}/exe`)}  (qemu-kube exec'd it in place: same pid; the binary is the pod image's)`)
  kv('uid (r e s fs)', `${ids(qs.Uid!)}  = ${who('/etc/passwd', Number(qs.Uid!.split('\t')[0]))}: the seclabel +${VM_UID}:+${VM_UID}, the token's qemu_uid`)
  kv('gid (r e s fs)', `${ids(qs.Gid!)}  = ${who('/etc/group', Number(qs.Gid!.split('\t')[0]))};  groups ${qs.Groups || '(none)'}`)
  kv('capabilities', ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'].map((k) => `${k} ${qs[k]}`).join('\n'))
  kv('NoNewPrivs, Seccomp', `${qs.NoNewPrivs}, ${qs.Seccomp} (QEMU's own -sandbox filter)`)
  const env = readFileSync(`/proc/${qpid}/environ`, 'utf8').split('\0').filter(Boolean)
  kv('environment', `${env.map((e) => e.split('=')[0]).join(' ')}  (${env.some((e) => e.startsWith('KUBEVIRT_SECRET=')) ? red('KUBEVIRT_SECRET present') : 'no KUBEVIRT_SECRET'})`)

  const row = (cells: readonly string[], widths: readonly number[]) => cells.map((c, i) => (i < widths.length ? c.padEnd(widths[i]!) : c)).join('')
  const NSW = [31, 14, 14, 14]
  out(bold(row(['    namespaces', 'QEMU', 'pod', 'host'], NSW).trimEnd()) + dim(`   (pod: virt-launcher ${pod.pid}; host: this demo)`))
  for (const n of [...NS_NAMES, 'user']) {
    const q = nsOf(qpid, n)
    const p = nsOf(pod.pid, n)
    const h = nsOf('self', n)
    const verdict = n === 'mnt' ? (q !== p && q !== h && p !== h ? green('QEMU own (derived from the pod\'s)') : red('not its own'))
      : n === 'pid' ? (q === h && p !== h ? 'QEMU = host: libvirt tracks its pid; the launcher has its own' : red('unexpected'))
        : n === 'user' ? (q === p && q === h ? 'host: never entered' : red('unexpected'))
          : q === p && q !== h ? green('QEMU = pod') : q === h ? red('host') : red('other')
    out(row([`      ${n}`, String(q), String(p), String(h), verdict], NSW))
  }

  const qcg = readFileSync(`/proc/${qpid}/cgroup`, 'utf8').trim().split('\n')
  const pcg = readFileSync(`/proc/${pod.pid}/cgroup`, 'utf8').trim().split('\n')
  const CGW = [31, 72]
  out(bold(row(['    cgroups', 'QEMU (host view)'], CGW).trimEnd()) + dim('   (the pod\'s launcher container, /libpod_parent/<pod>/<container>)'))
  for (const line of qcg) {
    const [, hier, path] = /^\d+:([^:]*):(.*)$/.exec(line)!
    out(row([`      ${hier || '(v2 unified)'}`, path!.length > 70 ? `${path!.slice(0, 40)}...${path!.slice(-27)}` : path!, pcg.includes(line) ? green('QEMU = pod') : red('differs from the pod')], CGW))
  }
  const inside = run('nsenter', ['-t', String(qpid), '-C', '--', 'cat', `/proc/${qpid}/cgroup`]).trim().split('\n').at(-1)
  kv('seen from inside', `${inside}  (the pod's cgroup namespace: its own root)`)

  out(bold('    what QEMU sees') + dim(`   (its own mount namespace, entered by reach --mntns-of=${qpid} --uid=${VM_UID} --gid=${VM_UID} --view, as root dropped to ${VM_UID})`))
  const domDir = readdirSync('/var/lib/libvirt/qemu').find((d) => /^domain-\d+-/.test(d) && d.endsWith(`-${NAME}`.slice(0, 21)))
  if (domDir === undefined) throw new Error('libvirt made no domain-N-NAME directory')
  const key = `/var/lib/libvirt/qemu/${domDir}/master-key.aes`
  const view = await reach(['--view', `--read=${key}`], VM_UID, qpid)
  kv('/proc/self', `-> ${view.self} (reach's own pid ${view.pid})`)
  // Named from the host (reach has exited by now); every one must run as the VM's uid.
  const listed = (view.pids as number[]).map((p) => {
    if (p === view.pid) return { p, what: 'reach (this probe)', ok: true }
    try {
      const uid = Number(status(p).Uid!.split('\t')[0])
      return { p, what: `${readFileSync(`/proc/${p}/comm`, 'utf8').trim()}${p === qpid ? ' (QEMU)' : ''}, uid ${uid}`, ok: uid === VM_UID }
    } catch {
      return { p, what: 'gone', ok: true }
    }
  })
  kv('/proc', `${mountOf(qpid, '/proc')}\nlists ${listed.map((l) => `${l.p} ${l.ok ? l.what : red(l.what)}`).join('; ')}\n`
    + `${listed.every((l) => l.ok) ? `only the VM's own uid's processes (hidepid=invisible, one uid per VM)` : red('a process of another uid is visible')}`)
  kv('/dev', `${mountOf(qpid, '/dev')}\n${(view.dev as string[]).sort().join(' ')}`)
  kv('its libvirt files', `/var/lib/libvirt/qemu: ${readdirSync(`/proc/${qpid}/root/var/lib/libvirt/qemu`).join(' ') || '(empty)'} (carried in: exactly its domain's)`)
  kv(`  ${key.slice(key.lastIndexOf('/') + 1)}`, `read as ${VM_UID}: ${view.read[key]}`)
  const dst = statSync(`/var/lib/libvirt/qemu/${domDir}`)
  const kst = statSync(key)
  kv('on the host', `${`/var/lib/libvirt/qemu/${domDir}`}: ${dst.uid}:${dst.gid} ${(dst.mode & 0o7777).toString(8)}, master-key.aes ${kst.uid}:${kst.gid} ${(kst.mode & 0o777).toString(8)}\n(libvirt chowned them to the VM's uid: the DAC seclabel)`)
  const launcherView = readdirSync(`/proc/${pod.pid}/root/var/lib/libvirt/qemu`)
  kv('the pod\'s launcher sees', `/proc/${pod.pid}/root/var/lib/libvirt/qemu: ${launcherView.length ? red(launcherView.join(' ')) : green('empty')} (the carried files are QEMU's alone)`)

  out(bold('    libvirt\'s view'))
  kv('virsh list', (await virshOk(['list'])).trimEnd())
  kv('virsh dominfo', (await virshOk(['dominfo', NAME])).split('\n').filter((l) => /^(Id|State|Max memory|CPU\(s\)|Security DOI|Security label):/.test(l)).map((l) => l.replace(/\s+/g, ' ')).join('\n'))
  kv('query-status', (await virshOk(['qemu-monitor-command', NAME, '{"execute":"query-status"}'])).trim())
  const consoleOut = (await consoleText).replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[c()][0-9A-Za-z]?/g, '').split(/\r?\n/).map((l) => l.trim()).filter(Boolean)
  kv('serial console', `ringbuf qkcons (virsh qemu-monitor-command --hmp ${NAME} 'ringbuf_read qkcons 65536'):\n`
    + `${consoleOut.length ? consoleOut.map((l) => `| ${l}`).join('\n') : '(no output read)'}`)

  out(bold('    qemu-kube\'s decision') + dim(`  (its one line in ${LOG}; libvirt's own lines there carry the env, token included)`))
  out(`      ${decision?.line ?? red('(not found)')}`)
  if (decision) {
    const d = decision
    kv('outcome', `${d.outcome} for VM ${d.vm?.name} (${d.vm?.uuid}), token jti ${d.jti}`)
    kv('target', `virt-launcher pid ${d.target?.pid} (start time ${d.target?.startTime})`)
    kv('as', `uid ${d.runAs?.uid} gid ${d.runAs?.gid} groups ${JSON.stringify(d.runAs?.groups)}; namespaces ${d.namespaces?.join(',')}`)
    kv('took', `${d.durationMs} ms ${tookWhere(d)}`)
  }

  // 9 ------------------------------------------------------------------------------------------
  step(`another VM's identity (uid ${OTHER_UID}) tries to reach QEMU ${qpid}: reach --uid=${OTHER_UID} --gid=${OTHER_UID} ${qpid}`)
  const attack = await reach([String(qpid)], OTHER_UID)
  const what: Record<string, string> = {
    root: `opendir /proc/${qpid}/root (its pod's filesystem, the token)`,
    environ: `read /proc/${qpid}/environ`,
    mem: 'process_vm_readv of its memory',
    ptrace: 'PTRACE_ATTACH',
    kill: 'kill(SIGKILL)',
  }
  for (const [k, label] of Object.entries(what)) kv(k, `${attack[k] === 'ok' ? red('ok: REACHED') : green(String(attack[k]))}  ${label}`)
  await sleep(200)
  kv('afterwards', `QEMU ${qpid} ${alive(qpid) ? green('still running') : red('GONE')}; domstate ${(await virshOk(['domstate', NAME])).trim()}; `
    + `query-status ${JSON.parse(await virshOk(['qemu-monitor-command', NAME, '{"execute":"query-status"}'])).return?.status}`)

  // 10 -----------------------------------------------------------------------------------------
  step('what the agent knows: qemu-kube status and qemu-kube metrics (root operators, over its socket)')
  const table = run(front, ['status'])
  const listed1 = table.includes(uuid) && new RegExp(`\\s${qpid}\\s`).test(table)
  kv('qemu-kube status', `${table.trimEnd()}\n${listed1 ? green(`the running VM: uuid ${uuid}, QEMU ${qpid}`) : red(`VM ${uuid} / QEMU ${qpid} not listed`)}`)
  const counters = run(front, ['metrics']).split('\n').filter((l) => l.startsWith('qemu_kube_decisions_total'))
  const ours = counters.find((l) => /path="agent"/.test(l) && /outcome="authorised"/.test(l))
  kv('qemu-kube metrics', `${counters.length ? counters.join('\n') : red('no qemu_kube_decisions_total line')}\n`
    + `${ours?.endsWith(' 1') && counters.length === 1 ? green('the one launch above, and nothing else') : red('expected one authorised launch on the agent path and no other decision')}`)

  // 11 -----------------------------------------------------------------------------------------
  step('the agent stopped (SIGTERM), the VM started again: the standalone path serves it, the fallback')
  const sigAt = Date.now()
  const stopped = await stopAgent(agent)
  const stopMs = Date.now() - sigAt
  if (stopped === 'absent' || stopped.code !== 0 || stopped.killed) {
    throw new Error(`the agent did not exit 0 on SIGTERM: ${stopped === 'absent' ? 'it was gone already' : stopped.killed ? 'SIGKILLed after 5 s' : `status ${stopped.code ?? stopped.signal}`}`)
  }
  delete state.agent
  save()
  const lastLines = agentLog(agent).slice(-2).map((l) => `"${l.msg}"`).join(', ')
  kv('SIGTERM', `exit ${stopped.code} in ${secs(stopMs)}; its last lines: ${lastLines}`)
  kv('socket', existsSync(agent.socket) ? red(`${agent.socket} still there`) : `${agent.socket}: removed by the agent (so a front sees AGENT=absent, not ECONNREFUSED)`)
  kv('QEMU', `${qpid} ${alive(qpid) ? green('still running') : red('GONE')} (stopping the agent does not touch a running VM)`)
  await virshOk(['destroy', NAME])
  await until('QEMU to exit', () => !alive(qpid))
  kv('virsh destroy', `QEMU ${qpid} exited`)
  // A fresh single-use token per start, put in the pod's Secret volume as the kubelet does and
  // into the domain's <qemu:env>: the first one is spent (its jti is recorded).
  const token2 = run(front, ['token', 'issue', '--key', `${keys}/signing.key`, '--vm-uuid', uuid, '--vm-name', VM_NAME,
    '--qemu-uid', String(VM_UID), '--ttl', '60s']).trim()
  rotateToken(pod, token2)
  writeFileSync(xmlFile, xml.replace(/(KUBEVIRT_SECRET' value=')[^']*'/, (_, p: string) => `${p}${token2}'`), { mode: 0o600 })
  try {
    await virshOk(['define', xmlFile])
  } finally {
    rmSync(xmlFile, { force: true })
  }
  kv('fresh token', 'issued; into the pod\'s Secret volume (..data swapped, as the kubelet does) and the domain\'s <qemu:env> (virsh define)')
  dt = Date.now()
  const logFrom2 = statSync(LOG).size
  await virshOk(['start', NAME])
  const standaloneStartMs = Date.now() - dt
  kv('virsh start', `ok in ${secs(standaloneStartMs)} (wall time)`)
  const d2 = decisionSince(logFrom2)
  const fallback = d2?.path === 'standalone' && d2.agent === 'absent'
  kv('served by', d2 === null ? red('no decision line in the domain log')
    : `${fallback ? green(`path "standalone", agent "absent"`) : red(`path ${JSON.stringify(d2.path)}, agent ${JSON.stringify(d2.agent)}`)}: ${d2.outcome}, `
      + `durationMs ${d2.durationMs} (${tookWhere(d2)})`)
  if (!fallback) throw new Error(`the standalone path did not serve the second start: ${d2 === null ? 'no decision line' : `path ${JSON.stringify(d2.path)}, agent ${JSON.stringify(d2.agent)}`}`)
  const qpid2 = domainPid(NAME)
  if (qpid2 === null) throw new Error('libvirt reports no pid for the restarted domain')
  const inPod = (['net', 'ipc', 'uts', 'cgroup'] as const).every((n) => nsOf(qpid2, n) === pod!.ns[n])
  kv('QEMU', `${qpid2}: uid ${status(qpid2).Uid!.split('\t')[0]}, ${inPod ? green('net, ipc, uts, cgroup = the pod\'s') : red('not in the pod\'s namespaces')}; `
    + `query-status ${JSON.parse(await virshOk(['qemu-monitor-command', NAME, '{"execute":"query-status"}'])).return?.status}`)
  kv('the two starts', `agent: virsh start ${secs(agentStartMs)}, decision ${decision?.durationMs} ms\n`
    + `standalone: virsh start ${secs(standaloneStartMs)}, decision ${d2.durationMs} ms\n(standalone's durationMs leaves out Node's own boot, which the agent has behind it; virsh start's wall time counts everything)`)
  stepDone()

  if (keep) {
    state.kept = true
    save()
    // The pod uses libvirt for as long as it lives: other users of the helper (tests, another
    // demo) must not stop the daemons under it (test/helpers/libvirt.ts's users/ protocol).
    writeFileSync(`${LIBVIRT_STATE}/users/${pod.pid}`, '')
    const podmanCmd = `CONTAINERS_CONF=${STORE.conf} podman --root ${STORE.root} --runroot ${STORE.runroot}`
    out(`\n${bold('Left running (--keep).')} Things to try:`)
    out(`      virsh -c ${URI} list`)
    out(`      virsh -c ${URI} qemu-monitor-command ${NAME} '{"execute":"query-status"}'`)
    out(`      virsh -c ${URI} qemu-monitor-command --hmp ${NAME} 'ringbuf_read qkcons 65536'   # console output since the demo read it`)
    out(`      grep -h '^Uid\\|^Cap' /proc/$(cat /run/libvirt/qemu/${NAME}.pid)/status`)
    out(`      ${REACH} --uid=${OTHER_UID} --gid=${OTHER_UID} $(cat /run/libvirt/qemu/${NAME}.pid)`)
    out(`      ${podmanCmd} pod ps; ... logs ${pod.podName}-launcher`)
    out(`    ${bold('To clean up:')}  bash scripts/demo.sh --cleanup`)
    out('    which does, in order:')
    out(`      virsh -c ${URI} destroy ${NAME}; virsh -c ${URI} undefine ${NAME}; rm -f ${LOG}`)
    out(`      ${podmanCmd} pod rm -f -t 0 ${pod.podName}, then rmdir its cgroups (/libpod_parent/${pod.podId.slice(0, 12)}...) and ${pod.secretHostDir}`)
    out(`      stop the libvirtd/virtlogd the demo started and restore ${QEMU_CONF} (from ${LIBVIRT_STATE})`)
    out(`      rm -rf ${base} ${RUN_DIR}`)
    // Hand the pod, the domain and the daemons over: no last-resort clean-up at exit.
    process.removeAllListeners('exit')
    return
  }
  out(`\n${bold('Undoing everything')}`)
  const recorded = structuredClone(state)
  cleaning = cleanup(state, { quiet: false })
  await cleaning
  const left = await leftovers(recorded, confBefore)
  kv('checked', left.length === 0
    ? green(`nothing left: no pod ${recorded.pod?.name} in the podman store, none of its ${recorded.pod?.cgroups?.length ?? 0} cgroup directories, `
      + `no domain ${NAME}, no agent${agentsStarted.length ? ` (pid ${agentsStarted.map((a) => a.pid).join(', ')} gone)` : ''}, ${libvirtUsers() > 0 ? `libvirt left to its ${libvirtUsers()} other user(s)` : `${QEMU_CONF} as before libvirt was set up`}, no ${RUN_DIR}`)
    : red(`LEFT: ${left.join('; ')}`))
  if (left.length > 0) {
    leftBehind = true
    out(`\n${red('demo: FAILED')}: its clean-up left something behind (above)`)
    return
  }
  out(`\n${green('demo: done')} in ${secs(Date.now() - t0)}; nothing of it is left (apt packages, the ${QEMU_USER} user and ${QEMU_GROUP} group, `
    + 'the podman store with its cached launcher image stay: they are set-up).')
}

const libvirtUsers = () => (existsSync(`${LIBVIRT_STATE}/users`) ? readdirSync(`${LIBVIRT_STATE}/users`).length : 0)

/** What of a demo is still there after its clean-up (empty: nothing). */
async function leftovers(s: State, confBefore: string | null): Promise<string[]> {
  const left: string[] = []
  if (s.pod) {
    const pods = await podman(['pod', 'ps', '--format', '{{.Name}}'])
    if (pods.code !== 0) left.push(`podman pod ps failed: ${pods.stderr.trim()}`)
    else if (pods.stdout.split('\n').includes(s.pod.name)) left.push(`pod ${s.pod.name}`)
    for (const d of s.pod.cgroups ?? []) if (existsSync(d)) left.push(d)
    if (s.pod.secretHostDir && existsSync(s.pod.secretHostDir)) left.push(s.pod.secretHostDir)
  }
  if (existsSync(`/etc/libvirt/qemu/${NAME}.xml`) || existsSync(`/run/libvirt/qemu/${NAME}.pid`)) left.push(`domain ${NAME}`)
  // qemu.conf is the libvirt helper's to restore, when its last user stops (tests, a bench, or
  // this demo may each be that one): with no user left, no backup of the original may be left,
  // and a conf the demo itself replaced must be back as it was.
  if (libvirtUsers() === 0) {
    for (const b of ['qemu.conf.orig', 'qemu.conf.absent']) if (existsSync(`${LIBVIRT_STATE}/${b}`)) left.push(`${LIBVIRT_STATE}/${b} (${QEMU_CONF} not restored)`)
    const conf = existsSync(QEMU_CONF) ? readFileSync(QEMU_CONF, 'utf8') : null
    if (confBefore !== qemuConf() && conf !== confBefore) left.push(`${QEMU_CONF} differs from before the demo`)
  }
  for (const a of agentsStarted) if (agentAlive(a)) left.push(`qemu-kube agent pid ${a.pid}`)
  if (s.base && existsSync(s.base)) left.push(s.base)
  if (existsSync(RUN_DIR)) left.push(RUN_DIR)
  return left
}

function daemonRunning(d: 'virtlogd' | 'libvirtd'): number | null {
  try {
    const pid = Number(readFileSync(`/run/${d}.pid`, 'utf8').trim())
    return pid > 0 && alive(pid) && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === d ? pid : null
  } catch {
    return null
  }
}

async function removeDomain(): Promise<'destroyed' | 'stopped' | 'absent'> {
  const state = await virsh(['domstate', NAME])
  if (state.code !== 0) {
    if (/failed to get domain|domain not found/i.test(state.stderr)) return 'absent'
    throw new Error(`virsh domstate ${NAME}: ${state.stderr.trim()}`) // libvirtd down, say: not "absent"
  }
  const pid = domainPid(NAME)
  const d = await virsh(['destroy', NAME])
  if (d.code !== 0 && !/not running/i.test(d.stderr)) throw new Error(`virsh destroy ${NAME}: ${d.stderr.trim()}`)
  if (pid !== null) await until('QEMU to exit', () => !alive(pid))
  const u = await virsh(['undefine', NAME])
  if (u.code !== 0 && !/failed to get domain|not found/i.test(u.stderr)) throw new Error(`virsh undefine ${NAME}: ${u.stderr.trim()}`)
  return pid !== null ? 'destroyed' : 'stopped'
}

/** rmdir a cgroup tree bottom-up, retrying while it is busy (up to 5 s). */
async function rmCgroupTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) await rmCgroupTree(`${dir}/${e.name}`)
  for (const end = Date.now() + 5000; existsSync(dir); await sleep(20)) {
    try {
      rmdirSync(dir)
    } catch (err) {
      if (Date.now() > end) throw new Error(`cannot remove ${dir}: ${(err as Error).message}`)
    }
  }
}

/** Every pid in a cgroup tree. */
function procsIn(dir: string): number[] {
  if (!existsSync(dir)) return []
  let pids: number[] = []
  try {
    pids = readFileSync(`${dir}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number)
  } catch {
    // gone
  }
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) pids.push(...procsIn(`${dir}/${e.name}`))
  return pids
}

/**
 * Removes a pod another process made (a kept demo, or one that died): `podman pod rm -f -t 0` on
 * the helper's store, then whatever still runs in its cgroups (SIGKILL), its cgroup directories
 * (podman leaves them), and its secret directory.
 */
async function removeForeignPod(p: NonNullable<State['pod']>): Promise<void> {
  let id = p.id
  if (id === undefined) {
    const r = await podman(['pod', 'inspect', '--format', '{{.Id}}', p.name])
    if (r.code === 0) id = r.stdout.trim()
  }
  const rm = await podman(['pod', 'rm', '-f', '-t', '0', p.name])
  if (rm.code !== 0 && !/no such pod|no pod with name/i.test(rm.stderr)) throw new Error(`podman pod rm ${p.name}: ${rm.stderr.trim()}`)
  const dirs = p.cgroups ?? (id ? hierarchies().map((h) => `${h.mountPoint}/libpod_parent/${id}`) : [])
  for (const end = Date.now() + 5000; dirs.some((d) => procsIn(d).length > 0); await sleep(20)) {
    if (Date.now() > end) throw new Error(`processes left in ${dirs.join(', ')}: ${dirs.flatMap(procsIn).join(' ')}`)
    for (const q of dirs.flatMap(procsIn)) {
      try {
        process.kill(q, 'SIGKILL')
      } catch {
        // gone
      }
    }
  }
  for (const d of dirs) await rmCgroupTree(d)
  if (p.secretHostDir) rmSync(p.secretHostDir, { recursive: true, force: true })
  // Made before its directory was recorded: the helper names them <owner pid>-XXXXXX.
  if (!alive(p.owner) && existsSync(STORE.secrets)) {
    for (const d of readdirSync(STORE.secrets)) if (d.startsWith(`${p.owner}-`)) rmSync(`${STORE.secrets}/${d}`, { recursive: true, force: true })
  }
}

/** Undoes what `s` records, newest first; every step is idempotent and reported. */
async function cleanup(s: State, { quiet }: { quiet: boolean }): Promise<void> {
  const say = (label: string, value: string) => { if (!quiet) kv(label, value) }
  const errors: string[] = []
  const attempt = async (what: string, fn: () => Promise<void> | void) => {
    try {
      await fn()
    } catch (err) {
      errors.push(`${what}: ${(err as Error).message}`)
      if (!quiet) kv(what, red(`FAILED: ${(err as Error).message}`))
    }
  }
  // First: nothing is served while the rest is torn down, and its socket goes with the install.
  if (s.agent) {
    await attempt('agent', async () => {
      const a = s.agent!
      const r = await stopAgent(a)
      say('agent', r === 'absent' ? `pid ${a.pid}: already gone`
        : `pid ${a.pid}: ${r.killed ? 'SIGKILL (SIGTERM did not end it in 5 s)' : 'SIGTERM'}${r.mine ? `, exit ${r.code ?? r.signal}` : ', gone'}`)
      delete s.agent
      save()
    })
  }
  if (s.domain) {
    await attempt('domain', async () => {
      const how = await removeDomain()
      say('domain', how === 'absent' ? `${NAME}: not defined` : `${NAME}: virsh destroy${how === 'destroyed' ? ' (QEMU exited)' : ''}, virsh undefine`)
      rmSync(LOG, { force: true }) // libvirt logged the <qemu:env> values there, token included
      s.domain = false
      save()
    })
  }
  const domainLeft = s.domain === true
  if (s.pod) {
    await attempt('pod', async () => {
      const pid = s.pod!.pid
      if (pod !== null && pod.podName === s.pod!.name) await pod.destroy() // the helper's teardown; throws if a cgroup directory is left
      else await removeForeignPod(s.pod!)
      say('pod', `${s.pod!.name}${pid === undefined ? ' (being made)' : ` (virt-launcher ${pid})`}: podman pod rm -f -t 0, `
        + `its ${s.pod!.cgroups?.length ?? 'podman'} cgroup directories and its Secret volume removed`)
      if (pid !== undefined) rmSync(`${LIBVIRT_STATE}/users/${pid}`, { force: true })
      delete s.pod
      save()
    })
  }
  if (s.libvirt && domainLeft) {
    say('libvirt', 'left running: the domain could not be removed (see above)')
    errors.push('libvirt: left running for the domain')
  } else if (s.libvirt) {
    await attempt('libvirt', async () => {
      const started = (['virtlogd', 'libvirtd'] as const).filter((d) => existsSync(`${LIBVIRT_STATE}/started-${d}`))
      const backup = existsSync(`${LIBVIRT_STATE}/qemu.conf.orig`) ? 'restored' : existsSync(`${LIBVIRT_STATE}/qemu.conf.absent`) ? 'removed (there was none)' : null
      // stopLibvirt() acts for a process that called startLibvirt(): a --cleanup run registers first.
      if (!registeredHere && (started.length > 0 || backup !== null)) await startLibvirt()
      await stopLibvirt()
      const users = existsSync(`${LIBVIRT_STATE}/users`) ? readdirSync(`${LIBVIRT_STATE}/users`).length : 0
      if (users > 0) say('libvirt', `still used by ${users} other process(es) (tests?): they stop it when done`)
      else {
        const ours = started.every((d) => s.daemonsStarted?.includes(d))
        say('libvirt', started.length === 0 ? 'daemons left running (they were running before)'
          : `stopped ${started.join(' and ')} (${ours ? 'the demo started them' : 'started by another user of the libvirt helper; the demo was the last one'})`)
        say(QEMU_CONF, backup ?? 'left as it was')
      }
      s.libvirt = false
      save()
    })
  }
  if (s.base) {
    await attempt('install', () => {
      if (s.front) rmSync(`/var/cache/libvirt/qemu/capabilities/${createHash('sha256').update(s.front).digest('hex')}.xml`, { force: true })
      rmSync(s.base!, { recursive: true, force: true })
      say('qemu-kube', `${s.base} removed (install, keys, replay state)`)
      delete s.base
      save()
    })
  }
  if (errors.length > 0) throw new Error(`clean-up incomplete (${STATE_FILE} kept; run bash scripts/demo.sh --cleanup): ${errors.join('; ')}`)
  for (const f of existsSync(RUN_DIR) ? readdirSync(RUN_DIR) : []) {
    if (f.startsWith('pod-') || f === 'serial' || f === `${NAME}.xml`) rmSync(`${RUN_DIR}/${f}`, { recursive: true, force: true })
  }
  rmSync(STATE_FILE, { force: true })
  try {
    rmdirSync(RUN_DIR) // once empty: nothing of any demo left
  } catch {
    // not empty, or gone
  }
}

let registeredHere = false
/** The final check found something of the demo left after its clean-up. */
let leftBehind = false
/** This process wrote STATE_FILE (so its clean-up is this process's to do). */
let owner = false

async function main(): Promise<number> {
  const args = process.argv.slice(2)
  const bad = args.filter((a) => a !== '--keep' && a !== '--cleanup')
  if (bad.length > 0 || args.length > 1) {
    process.stderr.write('usage: scripts/demo.sh [--keep | --cleanup]\n')
    return 64
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('demo: must run as root (it installs a setuid binary, makes pods, runs libvirtd)\n')
    return 77
  }
  const noPods = podmanUnavailable()
  if (noPods !== null || !existsSync(REACH)) {
    process.stderr.write(`demo: cannot make real pods here: ${noPods ?? `no ${REACH}`}; run npm run demo (or bash scripts/setup.sh) first\n`)
    return 66
  }

  if (args[0] === '--cleanup') {
    const s = loadState()
    if (s === null) {
      out(`demo: nothing to clean up (no ${STATE_FILE})`)
      return 0
    }
    if (!s.kept && alive(s.pid) && s.pid !== process.pid) {
      process.stderr.write(`demo: the demo (pid ${s.pid}) is still running; it cleans up after itself\n`)
      return 75
    }
    state = { ...s, pid: process.pid }
    out(bold('qemu-kube demo: cleaning up'))
    await cleanup(state, { quiet: false })
    out(green('demo: cleaned up'))
    return 0
  }

  // One demo at a time: a kept or running one must be cleaned up (or finish) first.
  const other = loadState()
  if (other !== null && (other.kept || alive(other.pid))) {
    process.stderr.write(`demo: a demo is still ${other.kept ? 'kept running' : `running (pid ${other.pid})`} (${STATE_FILE}); `
      + 'run `bash scripts/demo.sh --cleanup` first\n')
    return 75
  }

  const onSignal = (sig: NodeJS.Signals) => {
    if (cleaning !== null) {
      out(`\n${sig}: still cleaning up, please wait`)
      return
    }
    if (!interrupted) {
      interrupted = true
      out(`\n${red(sig)}: stopping after the current step, then cleaning up (again to clean up at once)`)
      return
    }
    out(`\n${sig}: cleaning up now`)
    if (!owner) process.exit(130)
    cleaning = cleanup(state, { quiet: false }).then(() => process.exit(130), (err) => {
      process.stderr.write(`demo: ${(err as Error).message}\n`)
      process.exit(1)
    })
  }
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => onSignal(sig))

  try {
    await demo(args[0] === '--keep')
    return leftBehind ? 1 : 0
  } catch (err) {
    if (cleaning !== null) await new Promise(() => {}) // the signal handler finishes and exits
    // A child killed by the same signal fails its step: that is the interruption too.
    const why = err instanceof Interrupted || interrupted ? 'interrupted' : `FAILED${stepNo ? ` in step ${stepNo}` : ''}: ${(err as Error).message}`
    out(`\n${red(`demo: ${why}`)}`)
    if (!owner) return 1
    out(bold('Undoing everything'))
    cleaning = cleanup(state, { quiet: false })
    try {
      await cleaning
    } catch (e) {
      process.stderr.write(`demo: ${(e as Error).message}\n`)
    }
    return err instanceof Interrupted || interrupted ? 130 : 1
  }
}

process.exitCode = await main()
