// `npm run demo` (scripts/demo.sh bundles and runs this, as root, after scripts/setup.sh):
// stock libvirt boots one small TCG VM through qemu-kube into a real pod, and the demo prints
// what a skeptic would check. Then it puts everything back.
//
//   demo [--keep]     --keep: leave the VM, its pod and libvirt running; print how to clean up
//   demo --cleanup    undo a kept (or crashed) demo, from its state file
//
// Everything the demo creates is recorded in STATE_FILE as it goes; the clean-up reads only
// that, so it is the same code after success, an error, Ctrl-C, or in a later --cleanup run.
// The libvirt side (qemu.conf backup and restore, which daemons were started) is the test
// helper's shared protocol (test/helpers/libvirt.ts), so the demo and the e2e tests can share a
// libvirtd.
import { spawnSync } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import {
  chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, rmdirSync, statSync, writeFileSync,
} from 'node:fs'
import { connect, type Socket } from 'node:net'
import { dirname } from 'node:path'
import {
  domainPid, domainXml, qemuConf, QEMU_CONF, startLibvirt, STATE_DIR as LIBVIRT_STATE, stopLibvirt, URI, virsh,
} from '../test/helpers/libvirt.ts'
import { CGROUP_PARENT, cleanupStale, hierarchies, makePod, NS_NAMES, REPO, type Pod } from '../test/helpers/pod.ts'

const NAME = 'qemu-kube-demo' // libvirt's domain name
const VM_NAME = 'demo-vm' // KUBEVIRT_VM_NAME, the pod's -kubevirt.vm.name
const QEMU_USER = 'libvirt-qemu'
const QEMU_GROUP = 'kvm'
const RUN_DIR = '/run/qemu-kube-demo'
const STATE_FILE = `${RUN_DIR}/state.json`
const SERIAL_DIR = `${RUN_DIR}/serial`
const SERIAL = `${SERIAL_DIR}/console.sock`
const LAUNCHER = `${REPO}/dist/virt-launcher`
const SECRET_PATH = '/var/run/kubevirt/qemu-kube/token'
const LOG = `/var/log/libvirt/qemu/${NAME}.log`
const STEPS = 8

interface State {
  /** The demo process that wrote this. */
  pid: number
  kept: boolean
  /** /var/tmp/qk-demo-XXXX: the install prefix, sysconfdir, keys, qemu-kube's state dir. */
  base?: string
  front?: string
  libvirt?: boolean
  domain?: boolean
  /** The pod's leaf cgroup (qemu-kube-test/<cgroup> in every hierarchy), recorded before it is made. */
  pod?: { cgroup: string; pid?: number }
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

/** Reads what QEMU writes on the serial console until `done` matches or ms pass. */
function readConsole(path: string, done: RegExp, ms: number): Promise<string> {
  return new Promise((res) => {
    let text = ''
    let finished = false
    const end = Date.now() + ms
    let sock: Socket | null = null
    const finish = () => {
      if (finished) return
      finished = true
      clearTimeout(timer)
      sock?.destroy()
      res(text)
    }
    const timer = setTimeout(finish, ms)
    const attempt = () => {
      sock = connect(path)
      sock.on('data', (d) => {
        text += d.toString('latin1')
        if (done.test(text)) finish()
      })
      // Made but not yet listening: try again.
      sock.on('error', () => { if (text === '' && Date.now() < end - 100) setTimeout(attempt, 10); else finish() })
    }
    attempt()
  })
}

// ---------------------------------------------------------------------------------------------
// the demo

let pod: Pod | null = null
let interrupted = false
let cleaning: Promise<void> | null = null

async function demo(keep: boolean): Promise<void> {
  const t0 = Date.now()
  out(bold('qemu-kube demo: stock libvirt boots a VM through qemu-kube into a pod'))
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
  const checked = JSON.parse(run(front, ['check-config'])) as { effective: Record<string, unknown>; keys: { kid: string }[]; allowed: unknown }
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
  step('a pod for the VM: its own namespaces and cgroups, virt-launcher inside, the token on a tmpfs only it sees')
  await cleanupStale()
  const uuid = randomUUID()
  // What virt-handler would do: a short-lived single-use token for this VM, put in the pod's Secret.
  const token = run(front, ['token', 'issue', '--key', `${keys}/signing.key`, '--vm-uuid', uuid, '--vm-name', VM_NAME, '--ttl', '60s']).trim()
  const podDir = mkdtempSync(`${RUN_DIR}/pod-`) // 0700 root: the launcher writes the fragment with the token here
  const fragmentFile = `${podDir}/domain-fragment.xml`
  const readyFile = `${podDir}/ready`
  state.pod = { cgroup: `demo-${process.pid}` }
  save()
  pod = await makePod({
    uuid, name: VM_NAME, token, launcherPath: LAUNCHER, launcherArgv0: 'virt-launcher', cgroupName: state.pod.cgroup,
    extraArgs: ['-emulator', front, '-domain-xml-out', fragmentFile, '-ready-file', readyFile],
  })
  state.pod.pid = pod.pid
  save()
  await until('the launcher to be ready', () => existsSync(readyFile), 10_000)
  const fragment = readFileSync(fragmentFile, 'utf8')
  rmSync(podDir, { recursive: true, force: true })
  const argv = readFileSync(`/proc/${pod.pid}/cmdline`, 'utf8').split('\0').filter(Boolean)
  kv('virt-launcher', `pid ${pod.pid}, the pod's long-lived process (dist/virt-launcher: Node under argv[0] virt-launcher):\n`
    + argv.map((a, i) => (i > 0 && a.startsWith('-') && !a.startsWith('--') ? `\n  ${a}` : ` ${a}`)).join('').trim())
  kv('pod namespaces', ['mnt', 'net', 'ipc', 'uts', 'cgroup'].map((n) => `${n}:${pod!.ns[n as 'mnt']}`).join(' '))
  kv('pod cgroup', pod.cgroups.v2 ?? Object.values(pod.cgroups.v1)[0]!)
  const podMount = run('nsenter', ['-t', String(pod.pid), '-m', '--', 'findmnt', '-n', '-o', 'FSTYPE,OPTIONS', '--target', dirname(SECRET_PATH)]).trim()
  const podStat = run('nsenter', ['-t', String(pod.pid), '-m', '--', 'stat', '-c', '%s bytes, %U:%G %a', SECRET_PATH]).trim()
  kv('token in the pod', `${SECRET_PATH}: ${podStat}, on ${podMount}`)
  kv('token on the host', existsSync(SECRET_PATH) ? `${SECRET_PATH} exists on the host too (not the pod's)` : `${SECRET_PATH}: no such file`)
  const tokenBytes = /KUBEVIRT_SECRET' value='([^']*)'/.exec(fragment)?.[1]?.length ?? 0
  kv('launcher\'s fragment', fragment.replace(/(KUBEVIRT_SECRET' value=')[^']*'/, `$1[${tokenBytes}-byte token, not shown]'`).trim()
    .split('\n').filter((l) => !l.startsWith('<!--')).join('\n'))

  // 6 ------------------------------------------------------------------------------------------
  step(`define and start "${NAME}" (TCG, 64 MiB, no disk, unix-socket serial console) with the launcher's fragment`)
  mkdirSync(SERIAL_DIR, { recursive: true, mode: 0o750 })
  chownSync(SERIAL_DIR, idOf('/etc/passwd', QEMU_USER)!, idOf('/etc/group', QEMU_GROUP)!) // QEMU (the qemu user) makes the socket
  rmSync(SERIAL, { force: true })
  const emulatorLine = /<emulator>[^<]*<\/emulator>/.exec(fragment)?.[0]
  const commandline = /<qemu:commandline>[\s\S]*<\/qemu:commandline>/.exec(fragment)?.[0]
  if (!emulatorLine || !commandline) throw new Error('the launcher\'s fragment has no <emulator> or <qemu:commandline>')
  const xml = domainXml({ name: NAME, uuid, emulator: '@EMULATOR@', serialSocket: SERIAL })
    .replace(/<emulator>@EMULATOR@<\/emulator>/, emulatorLine)
    .replace('hvm</type></os>', 'hvm</type><bios useserial=\'yes\'/></os>') // SeaBIOS talks on the serial console
    .replace('</domain>', `  ${commandline.split('\n').join('\n  ')}\n</domain>`)
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
  let startDone = false
  const starting = virsh(['start', NAME]).finally(() => { startDone = true })
  // Listen on the console as soon as QEMU has made the socket (it waits, stopped, for libvirt's
  // `cont`): SeaBIOS talks right after it, and a socket console drops what nobody reads.
  await until('QEMU to create the console socket', () => existsSync(SERIAL) || startDone, 60_000)
  const consoleText = existsSync(SERIAL) ? readConsole(SERIAL, /No bootable device/, 15_000) : Promise.resolve('')
  const started = await starting
  if (started.code !== 0) throw new Error(`virsh start ${NAME}: ${started.stderr.trim()}`)
  kv('virsh start', `ok (${secs(Date.now() - dt)})`)

  // 7 ------------------------------------------------------------------------------------------
  step('the evidence')
  const qpid = domainPid(NAME)
  if (qpid === null) throw new Error('libvirt reports no pid for the domain')
  const qs = status(qpid)
  const ids = (s: string) => s.split('\t').join(' ')
  out(bold('    QEMU'))
  kv('pid', `${qpid}  (libvirt's pidfile /run/libvirt/qemu/${NAME}.pid)`)
  kv('exe', `${readlinkSync(`/proc/${qpid}/exe`)}  (qemu-kube exec'd it in place: same pid)`)
  kv('uid (r e s fs)', `${ids(qs.Uid!)}  = ${nameOf('/etc/passwd', Number(qs.Uid!.split('\t')[0]))}`)
  kv('gid (r e s fs)', `${ids(qs.Gid!)}  = ${nameOf('/etc/group', Number(qs.Gid!.split('\t')[0]))};  groups ${qs.Groups || '(none)'}`)
  kv('capabilities', ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'].map((k) => `${k} ${qs[k]}`).join('\n'))
  kv('NoNewPrivs, Seccomp', `${qs.NoNewPrivs}, ${qs.Seccomp} (QEMU's own -sandbox filter)`)
  const env = readFileSync(`/proc/${qpid}/environ`, 'utf8').split('\0').filter(Boolean)
  kv('environment', `${env.map((e) => e.split('=')[0]).join(' ')}  (no KUBEVIRT_SECRET)`)

  const row = (cells: readonly string[], widths: readonly number[]) => cells.map((c, i) => (i < widths.length ? c.padEnd(widths[i]!) : c)).join('')
  const NSW = [31, 14, 14, 14]
  out(bold(row(['    namespaces', 'QEMU', 'pod', 'host'], NSW).trimEnd()) + dim(`   (pod: virt-launcher ${pod.pid}; host: this demo)`))
  for (const n of [...NS_NAMES, 'user']) {
    const q = nsOf(qpid, n)
    const p = nsOf(pod.pid, n)
    const h = nsOf('self', n)
    const verdict = q === p && q !== h ? green('QEMU = pod')
      : q === h ? (n === 'pid' ? 'host: pid is not in the default `namespaces`' : n === 'user' ? 'host: never entered' : red('host')) : red('other')
    out(row([`      ${n}`, String(q), String(p), String(h), verdict], NSW))
  }

  const qcg = readFileSync(`/proc/${qpid}/cgroup`, 'utf8').trim().split('\n')
  const pcg = readFileSync(`/proc/${pod.pid}/cgroup`, 'utf8').trim().split('\n')
  const CGW = [31, 40]
  out(bold(row(['    cgroups', 'QEMU (host view)'], CGW).trimEnd()))
  for (const line of qcg) {
    const [, hier, path] = /^\d+:([^:]*):(.*)$/.exec(line)!
    out(row([`      ${hier || '(v2 unified)'}`, path!, pcg.includes(line) ? green('QEMU = pod') : red('differs from the pod')], CGW))
  }
  const inside = run('nsenter', ['-t', String(qpid), '-C', '--', 'cat', `/proc/${qpid}/cgroup`]).trim().split('\n').at(-1)
  kv('seen from inside', `${inside}  (the pod's cgroup namespace: its own root)`)

  out(bold('    libvirt\'s view'))
  kv('virsh list', (await virshOk(['list'])).trimEnd())
  kv('virsh dominfo', (await virshOk(['dominfo', NAME])).split('\n').filter((l) => /^(Id|State|Max memory|CPU\(s\)):/.test(l)).map((l) => l.replace(/\s+/g, ' ')).join('\n'))
  kv('query-status', (await virshOk(['qemu-monitor-command', NAME, '{"execute":"query-status"}'])).trim())
  kv('query-name', (await virshOk(['qemu-monitor-command', NAME, '{"execute":"query-name"}'])).trim())
  const sock = statSync(SERIAL)
  const consoleOut = (await consoleText).replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1bc/g, '').split(/\r?\n/).map((l) => l.trim()).filter(Boolean)
  kv('serial console', `${SERIAL} (socket, made by QEMU as ${nameOf('/etc/passwd', sock.uid)}):\n${consoleOut.length ? consoleOut.map((l) => `| ${l}`).join('\n') : '(no output read)'}`)

  out(bold('    qemu-kube\'s decision') + dim(`  (its one line in ${LOG}; libvirt's own lines there carry the env, token included)`))
  const decision = readFileSync(LOG).subarray(logFrom).toString('utf8').split('\n').find((l) => l.includes('"name":"qemu-kube"'))
  out(`      ${decision ?? red('(not found)')}`)
  if (decision) {
    const d = JSON.parse(decision) as Record<string, any>
    kv('outcome', `${d.outcome} for VM ${d.vm?.name} (${d.vm?.uuid}), token jti ${d.jti}`)
    kv('target', `virt-launcher pid ${d.target?.pid} (start time ${d.target?.startTime})`)
    kv('as', `uid ${d.runAs?.uid} gid ${d.runAs?.gid} groups ${JSON.stringify(d.runAs?.groups)}; namespaces ${d.namespaces?.join(',')}`)
    kv('took', `${d.durationMs} ms in qemu-kube's Node stage, from its start to this decision`)
  }
  stepDone()

  if (keep) {
    state.kept = true
    save()
    // The pod uses libvirt for as long as it lives: other users of the helper (tests, another
    // demo) must not stop the daemons under it (test/helpers/libvirt.ts's users/ protocol).
    writeFileSync(`${LIBVIRT_STATE}/users/${pod.pid}`, '')
    out(`\n${bold('Left running (--keep).')} Things to try:`)
    out(`      virsh -c ${URI} list`)
    out(`      virsh -c ${URI} qemu-monitor-command ${NAME} '{"execute":"query-status"}'`)
    out(`      grep -h ^Cap /proc/$(cat /run/libvirt/qemu/${NAME}.pid)/status`)
    out(`      nsenter -t ${pod.pid} -m -u -n -- sh -c 'hostname; ip -br addr; findmnt ${dirname(SECRET_PATH)}'`)
    out(`      socat - UNIX-CONNECT:${SERIAL}     # the serial console (if socat is installed)`)
    out(`    ${bold('To clean up:')}  bash scripts/demo.sh --cleanup`)
    out('    which does, in order:')
    out(`      virsh -c ${URI} destroy ${NAME}; virsh -c ${URI} undefine ${NAME}; rm -f ${LOG}`)
    out(`      kill ${pod.pid} (the pod's launcher) and anything left in ${pod.cgroups.v2 ?? Object.values(pod.cgroups.v1)[0]}, then rmdir its cgroups`)
    out(`      stop the libvirtd/virtlogd the demo started and restore ${QEMU_CONF} (from ${LIBVIRT_STATE})`)
    out(`      rm -rf ${base} ${RUN_DIR}`)
    // Hand the pod, the domain and the daemons over: no last-resort clean-up at exit.
    process.removeAllListeners('exit')
    return
  }
  out(`\n${bold('Undoing everything')}`)
  cleaning = cleanup(state, { quiet: false })
  await cleaning
  out(`\n${green('demo: done')} in ${secs(Date.now() - t0)}; nothing of it is left (apt packages, the ${QEMU_USER} user and ${QEMU_GROUP} group stay: they are set-up).`)
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

const podCgroups = (leaf: string) => hierarchies().map((h) => `${h.mountPoint}/${CGROUP_PARENT}/${leaf}`)

/** Kills what runs in a pod made by an earlier process and removes its cgroups. */
async function killPod(p: { cgroup: string; pid?: number }): Promise<void> {
  const dirs = podCgroups(p.cgroup)
  const procs = () => dirs.flatMap((d) => {
    try {
      return readFileSync(`${d}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number)
    } catch {
      return []
    }
  })
  if (p.pid !== undefined && procs().includes(p.pid)) process.kill(p.pid, 'SIGTERM')
  for (const end = Date.now() + 5000; procs().length > 0 && Date.now() < end; await sleep(20)) {
    if (Date.now() > end - 3000) for (const q of procs()) try { process.kill(q, 'SIGKILL') } catch { /* gone */ }
  }
  for (const d of dirs) {
    for (const end = Date.now() + 5000; existsSync(d); await sleep(20)) {
      try {
        rmdirSync(d)
      } catch (err) {
        if (Date.now() > end) throw new Error(`cannot remove ${d}: ${(err as Error).message}`)
      }
    }
    try {
      rmdirSync(dirname(d)) // qemu-kube-test/, once empty
    } catch {
      // another pod lives there
    }
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
  if (s.domain) {
    await attempt('domain', async () => {
      const how = await removeDomain()
      say('domain', how === 'absent' ? `${NAME}: not defined` : `${NAME}: virsh destroy${how === 'destroyed' ? ' (QEMU exited)' : ''}, virsh undefine`)
      rmSync(LOG, { force: true }) // libvirt logged the <qemu:env> values there, token included
      rmSync(SERIAL_DIR, { recursive: true, force: true })
      s.domain = false
      save()
    })
  }
  const domainLeft = s.domain === true
  if (s.pod) {
    await attempt('pod', async () => {
      const pid = s.pod!.pid
      if (pod !== null && pod.pid === pid) await pod.destroy()
      else await killPod(s.pod!)
      say('pod', `${pid === undefined ? 'the pod being made' : `virt-launcher ${pid}`} stopped, its cgroups removed`)
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
        say('libvirt', started.length ? `stopped ${started.join(' and ')} (the demo started them)` : 'daemons left running (they were running before)')
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
    if (f.startsWith('pod-') || f === 'serial') rmSync(`${RUN_DIR}/${f}`, { recursive: true, force: true })
  }
  rmSync(STATE_FILE, { force: true })
  try {
    rmdirSync(RUN_DIR) // once empty: nothing of any demo left
  } catch {
    // not empty, or gone
  }
}

let registeredHere = false
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
  if (!existsSync(LAUNCHER)) {
    process.stderr.write(`demo: ${LAUNCHER} is missing: run npm run demo (or bash scripts/setup.sh) first\n`)
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
    return 0
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
