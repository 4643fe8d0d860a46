// A private libvirt in a known state, for end-to-end tests and the demo (root only).
//
// startLibvirt() writes /etc/libvirt/qemu.conf (the original is backed up once and restored by
// the last stopLibvirt()), starts virtlogd and libvirtd if they are not running, and waits for
// `virsh version`. Test files run in parallel (tap --jobs), so the state lives in STATE_DIR, not
// in this process: which daemons the helper started, the conf backup, and one entry per process
// using libvirt; a lock file serialises start and stop. A daemon that was running before is
// reused when its qemu.conf is ours and never stopped.
//
// Facts measured on Debian 12 / libvirt 9.0.0 / QEMU 7.2, TCG, 64 MiB, no disk, plain QEMU:
// - /dev/kvm is root:root 0600 when no udev runs. libvirt then re-probes QEMU on nearly every
//   call ("KVM was enabled when probing '/usr/bin/qemu-system-x86_64', but it is not available
//   now" in its debug log; each probe QEMU then takes ~2 s to go, see destroy below): `virsh define` took
//   31.8 s, `virsh start` 4.3 s, `virsh version` 4.2 s. With Debian's udev rule applied by hand
//   (root:kvm 0660, done here and in scripts/setup.sh) they take 26 ms, 0.3 s and 30 ms.
// - libvirtd -d / virtlogd -d return at once; the first `virsh version` then waits for the
//   capability probe of the QEMUs in PATH: startLibvirt() took 7.9 s with an empty
//   /var/cache/libvirt/qemu/capabilities, 0.1-0.2 s with it filled (re-probed when a binary's
//   mtime changes, so a freshly built emulator is probed on its first define).
// - Plain QEMU, warm cache: define+start of one domain 0.29-0.34 s; 8 concurrent define+start
//   1.26-1.35 s (all 8 running); destroy+undefine 1.66 s each, 1.76 s for 8 at once. The destroy
//   time is libvirt polling kill(pid, 0) every 200 ms after SIGTERM: QEMU is double-forked to
//   pid 1, and this sandbox's pid 1 reaps its zombies late. Afterwards no qemu process and no
//   /run/libvirt/qemu/NAME.pid are left.
// - `virsh qemu-monitor-command NAME '{"execute":"query-status"}'` answers
//   {"return":{"status":"running",...}} for a started domain (libvirt sent `cont` after `-S`).
// - libvirt writes the <qemu:env> values (the token) into /var/log/libvirt/qemu/NAME.log.
import { execFile, execFileSync } from 'node:child_process'
import {
  chmodSync, chownSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync,
  writeFileSync, writeSync,
} from 'node:fs'
import type { Test } from 'tap'
import { gidOf } from './ids.ts'

export const QEMU_CONF = '/etc/libvirt/qemu.conf'
export const STATE_DIR = '/run/qemu-kube-test/libvirt'
export const URI = 'qemu:///system'
export const PLAIN_QEMU = '/usr/bin/qemu-system-x86_64'
const DAEMONS = { virtlogd: '/run/virtlogd.pid', libvirtd: '/run/libvirtd.pid' } as const
type Daemon = keyof typeof DAEMONS

export interface VirshResult {
  code: number
  stdout: string
  stderr: string
}

export interface LibvirtOptions {
  /** qemu.conf `group`: the group libvirt runs the emulator as (the front's group). Default kvm. */
  emulatorGroup?: string
  /** How long to wait for `virsh version` after starting libvirtd. Default 60 s. */
  timeoutMs?: number
  /** How long to wait for other test processes using another qemu.conf. Default 5 min. */
  waitMs?: number
}

export interface DomainOptions {
  name: string
  /** libvirt's domain uuid (RFC 4122 form); libvirt makes one up when absent. */
  uuid?: string
  emulator?: string
  /** <qemu:env> entries, e.g. KUBEVIRT_VM_UUID, KUBEVIRT_VM_NAME, KUBEVIRT_SECRET. */
  env?: Readonly<Record<string, string>>
  memoryMiB?: number
  /** A unix socket libvirt has QEMU listen on for the serial console; none when absent. */
  serialSocket?: string
  /** The domain's own host identity: a DAC <seclabel> +UID:+UID (libvirt runs QEMU as it). */
  seclabelUid?: number
  /** <qemu:arg> entries after libvirt's own argv. */
  qemuArgs?: readonly string[]
}

/** Why libvirt tests cannot run here, or null. */
export function libvirtUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not root'
  for (const bin of ['/usr/sbin/libvirtd', '/usr/sbin/virtlogd', '/usr/bin/virsh', PLAIN_QEMU]) {
    if (!existsSync(bin)) return `${bin} is not installed (run scripts/setup.sh as root)`
  }
  return null
}

/** Skips the whole file with a printed reason: `if (!requireLibvirt(t)) process.exit(0)`. */
export function requireLibvirt(t: Test): boolean {
  const why = libvirtUnavailable()
  if (why === null) return true
  t.test('needs libvirt (libvirtd, virtlogd, virsh, QEMU; root)', { skip: why }, () => {})
  t.end()
  return false
}

export function qemuConf(group = 'kvm'): string {
  return [
    '# Written by qemu-kube test/helpers/libvirt.ts; the original is restored when the tests stop.',
    'user = "libvirt-qemu"',
    `group = ${JSON.stringify(group)}`,
    'security_driver = "none"',
    'cgroup_controllers = [ ]  # qemu-kube puts QEMU in the pod\'s cgroups',
    'namespaces = [ ]',
    '',
  ].join('\n')
}

// ---------------------------------------------------------------------------------------------
// the shared state

const sleepSync = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

function daemonPid(d: Daemon): number | null {
  try {
    const pid = Number(readFileSync(DAEMONS[d], 'utf8').trim())
    return pid > 0 && running(pid) && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === d ? pid : null
  } catch {
    return null
  }
}

/** Runs fn holding STATE_DIR/lock (a file with the holder's pid; a dead holder's lock is taken over). */
function locked<T>(fn: () => T): T {
  mkdirSync(`${STATE_DIR}/users`, { recursive: true, mode: 0o700 })
  const lock = `${STATE_DIR}/lock`
  for (const end = Date.now() + 120_000; ;) {
    try {
      const fd = openSync(lock, 'wx', 0o600)
      writeSync(fd, String(process.pid))
      closeSync(fd)
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      let holder = 0
      try {
        holder = Number(readFileSync(lock, 'utf8'))
      } catch {
        continue
      }
      if (holder > 0 && !running(holder)) rmSync(lock, { force: true })
      else if (Date.now() > end) throw new Error(`libvirt helper: ${lock} held by pid ${holder} for 2 minutes`)
      else sleepSync(20)
    }
  }
  try {
    return fn()
  } finally {
    rmSync(lock, { force: true })
  }
}

const started = (d: Daemon) => existsSync(`${STATE_DIR}/started-${d}`)
const liveUsers = () => readdirSync(`${STATE_DIR}/users`).map(Number).filter((pid) => {
  if (running(pid)) return true
  rmSync(`${STATE_DIR}/users/${pid}`, { force: true })
  return false
})

function stopDaemon(d: Daemon): void {
  const pid = daemonPid(d)
  rmSync(`${STATE_DIR}/started-${d}`, { force: true })
  if (pid === null) return
  process.kill(pid, 'SIGTERM')
  for (let i = 0; running(pid); i++) {
    if (i === 500) process.kill(pid, 'SIGKILL') // 10 s
    sleepSync(20)
  }
}

// ---------------------------------------------------------------------------------------------
// start and stop

let registered = false

/**
 * Makes libvirt ready with our qemu.conf. libvirtd reads qemu.conf only at start, so when another
 * live test process uses the helper's libvirtd with a different conf (another emulatorGroup),
 * this waits for it to stop (up to opts.waitMs, default 5 min). Throws at once if a libvirtd
 * the helper did not start runs with a different conf.
 */
export async function startLibvirt(opts: LibvirtOptions = {}): Promise<void> {
  const why = libvirtUnavailable()
  if (why !== null) throw new Error(`startLibvirt: ${why}`)
  const conf = qemuConf(opts.emulatorGroup ?? 'kvm')
  for (const end = Date.now() + (opts.waitMs ?? 300_000); ;) {
    const busy = locked(() => tryStart(conf))
    if (busy === null) break
    if (Date.now() > end) throw new Error(`startLibvirt: ${busy}`)
    await new Promise((res) => setTimeout(res, 200))
  }
  const end = Date.now() + (opts.timeoutMs ?? 60_000)
  for (;;) {
    const r = await virsh(['version'])
    if (r.code === 0) return
    if (Date.now() > end) throw new Error(`startLibvirt: virsh version still fails: ${r.stderr.trim()}`)
    await new Promise((res) => setTimeout(res, 100))
  }
}

/** Under the lock: conf written, daemons running, this process registered; or why not yet. */
function tryStart(conf: string): string | null {
  kvmLikeUdev()
  const current = existsSync(QEMU_CONF) ? readFileSync(QEMU_CONF, 'utf8') : null
  if (current !== conf) {
    const pid = daemonPid('libvirtd')
    if (pid !== null) {
      if (!started('libvirtd')) throw new Error(`startLibvirt: a libvirtd the tests did not start (pid ${pid}) runs with another ${QEMU_CONF}; stop it first`)
      const others = liveUsers().filter((p) => p !== process.pid)
      if (others.length > 0) return `libvirtd runs with another ${QEMU_CONF} for test pids ${others.join(', ')}`
      stopDaemon('libvirtd')
    }
    // Back the original up once: a crashed run leaves the backup, and must not overwrite it.
    if (!existsSync(`${STATE_DIR}/qemu.conf.orig`) && !existsSync(`${STATE_DIR}/qemu.conf.absent`)) {
      if (current === null) writeFileSync(`${STATE_DIR}/qemu.conf.absent`, '')
      else copyFileSync(QEMU_CONF, `${STATE_DIR}/qemu.conf.orig`)
    }
    mkdirSync('/etc/libvirt', { recursive: true })
    mkdirSync('/var/log/libvirt', { recursive: true })
    writeFileSync(QEMU_CONF, conf, { mode: 0o644 })
  }
  for (const d of ['virtlogd', 'libvirtd'] as const) {
    if (daemonPid(d) !== null) continue
    // No LIBVIRT_*/XDG variables from the test's environment; -d returns once it forked.
    execFileSync(`/usr/sbin/${d}`, ['-d'], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' }, stdio: ['ignore', 'ignore', 'pipe'] })
    writeFileSync(`${STATE_DIR}/started-${d}`, '')
  }
  writeFileSync(`${STATE_DIR}/users/${process.pid}`, '')
  registered = true
  return null
}

/**
 * Stops libvirtd (SIGTERM, as an upgrade or a crash-restart would) and starts it again with the
 * same qemu.conf; resolves once `virsh version` answers. The domains' QEMUs keep running; libvirt
 * reconnects to them from its status XML. Only for a libvirtd the helper started.
 */
export async function restartLibvirtd(): Promise<{ before: number; after: number }> {
  const before = daemonPid('libvirtd')
  if (before === null || !started('libvirtd')) throw new Error('restartLibvirtd: no libvirtd started by the tests')
  locked(() => {
    stopDaemon('libvirtd')
    execFileSync('/usr/sbin/libvirtd', ['-d'], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' }, stdio: ['ignore', 'ignore', 'pipe'] })
    writeFileSync(`${STATE_DIR}/started-libvirtd`, '')
  })
  for (const end = Date.now() + 60_000; ;) {
    if ((await virsh(['version'])).code === 0) break
    if (Date.now() > end) throw new Error('restartLibvirtd: virsh version still fails')
    await new Promise((res) => setTimeout(res, 100))
  }
  return { before, after: daemonPid('libvirtd') ?? 0 }
}

/**
 * Destroys the domains this process defined; the last user also stops the daemons the helper
 * started and restores qemu.conf. Safe to call twice, and without startLibvirt.
 */
export async function stopLibvirt(): Promise<void> {
  for (const name of [...domains]) await destroyAndUndefine(name)
  stopSync()
}

function stopSync(): void {
  if (!registered) return
  registered = false
  locked(() => {
    rmSync(`${STATE_DIR}/users/${process.pid}`, { force: true })
    if (liveUsers().length > 0) return
    for (const d of ['libvirtd', 'virtlogd'] as const) if (started(d)) stopDaemon(d)
    if (existsSync(`${STATE_DIR}/qemu.conf.orig`)) {
      copyFileSync(`${STATE_DIR}/qemu.conf.orig`, QEMU_CONF)
      unlinkSync(`${STATE_DIR}/qemu.conf.orig`)
    } else if (existsSync(`${STATE_DIR}/qemu.conf.absent`)) {
      rmSync(QEMU_CONF, { force: true })
      unlinkSync(`${STATE_DIR}/qemu.conf.absent`)
    }
  })
}

// A test that crashes before its teardown: still leave libvirt as it was found (the domains it
// left are libvirt's to clean when the daemon stops; their QEMUs are killed by pod.ts or by hand).
process.on('exit', () => {
  try {
    for (const name of domains) {
      execFileSync('virsh', ['-c', URI, 'destroy', name], { stdio: 'ignore', timeout: 20_000 })
      execFileSync('virsh', ['-c', URI, 'undefine', name], { stdio: 'ignore', timeout: 20_000 })
    }
  } catch {
    // best effort
  }
  stopSync()
})

/**
 * Debian's udev rule for /dev/kvm (root:kvm 0660), which nothing applies without udev. Not for
 * KVM itself (domains here are TCG): libvirt compares KVM's usability at probe time and now, and
 * with /dev/kvm unusable by the qemu user it re-probes QEMU on nearly every call (seconds each).
 */
export function kvmLikeUdev(): void {
  if (!existsSync('/dev/kvm')) return
  let gid: number
  try {
    gid = gidOf('kvm')
  } catch {
    return // no kvm group: nothing to match
  }
  const st = statSync('/dev/kvm')
  if (st.gid === gid && (st.mode & 0o060) === 0o060) return
  chownSync('/dev/kvm', st.uid, gid)
  chmodSync('/dev/kvm', (st.mode & 0o777) | 0o060)
}

// ---------------------------------------------------------------------------------------------
// virsh and domains

const domains = new Set<string>()

/** `virsh -c qemu:///system ARGS`, never throwing. */
export function virsh(args: readonly string[], timeoutMs = 120_000): Promise<VirshResult> {
  return new Promise((res) => {
    execFile('virsh', ['-c', URI, ...args], { timeout: timeoutMs, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' } },
      (err, stdout, stderr) => res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }))
  })
}

/**
 * Defines the domain (throws if libvirt rejects the XML) and starts it. Returns the start's
 * result: code 0 when it runs; otherwise stderr carries libvirt's error with the tail of the
 * emulator's log (a qemu-kube refusal line, say). The domain stays defined either way, until
 * destroyAndUndefine() or stopLibvirt().
 */
export async function defineAndStart(xml: string): Promise<VirshResult> {
  const name = /<name>([^<]+)<\/name>/.exec(xml)?.[1]
  if (!name) throw new Error('defineAndStart: the XML has no <name>')
  const file = `${STATE_DIR}/define-${process.pid}-${name}.xml`
  mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 })
  writeFileSync(file, xml, { mode: 0o600 }) // may carry a token: root-only, removed at once
  try {
    const def = await virsh(['define', file])
    if (def.code !== 0) throw new Error(`virsh define ${name}: ${def.stderr.trim()}`)
  } finally {
    rmSync(file, { force: true })
  }
  domains.add(name)
  return virsh(['start', name])
}

/** Destroys (if running) and undefines; a domain that does not exist is not an error. */
export async function destroyAndUndefine(name: string): Promise<void> {
  const d = await virsh(['destroy', name])
  if (d.code !== 0 && !/not running|failed to get domain|Domain not found/i.test(d.stderr)) throw new Error(`virsh destroy ${name}: ${d.stderr.trim()}`)
  const u = await virsh(['undefine', name])
  if (u.code !== 0 && !/failed to get domain|Domain not found/i.test(u.stderr)) throw new Error(`virsh undefine ${name}: ${u.stderr.trim()}`)
  domains.delete(name)
}

const xmlEscape = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

/**
 * A small TCG domain: no disk (SeaBIOS finds nothing to boot and idles, running), no USB, no
 * balloon, and no pty console (QEMU in a pod makes its pty in the pod's devpts, a path the host
 * does not have); a unix-socket serial console when asked.
 */
export function domainXml(o: DomainOptions): string {
  const env = Object.entries(o.env ?? {})
  for (const [k] of env) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`domainXml: libvirt refuses <qemu:env name='${k}'>`)
  return [
    `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>`,
    `  <name>${xmlEscape(o.name)}</name>`,
    ...(o.uuid ? [`  <uuid>${xmlEscape(o.uuid)}</uuid>`] : []),
    `  <memory unit='MiB'>${o.memoryMiB ?? 64}</memory>`,
    `  <vcpu>1</vcpu>`,
    `  <os><type arch='x86_64' machine='pc'>hvm</type></os>`,
    `  <on_poweroff>destroy</on_poweroff>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    `    <emulator>${xmlEscape(o.emulator ?? PLAIN_QEMU)}</emulator>`,
    `    <controller type='usb' model='none'/>`,
    `    <memballoon model='none'/>`,
    ...(o.serialSocket
      ? [`    <serial type='unix'><source mode='bind' path='${xmlEscape(o.serialSocket)}'/><target port='0'/></serial>`]
      : []),
    `  </devices>`,
    ...(o.seclabelUid !== undefined
      ? [`  <seclabel type='static' model='dac' relabel='yes'><label>+${o.seclabelUid}:+${o.seclabelUid}</label></seclabel>`]
      : []),
    ...(env.length || o.qemuArgs?.length
      ? [`  <qemu:commandline>`, ...(o.qemuArgs ?? []).map((a) => `    <qemu:arg value='${xmlEscape(a)}'/>`),
        ...env.map(([k, v]) => `    <qemu:env name='${k}' value='${xmlEscape(v)}'/>`), `  </qemu:commandline>`]
      : []),
    `</domain>`,
    '',
  ].join('\n')
}

/** The pid libvirt tracks for a running domain (its pidfile), or null. */
export function domainPid(name: string): number | null {
  try {
    const pid = Number(readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8').trim())
    return pid > 0 && running(pid) ? pid : null
  } catch {
    return null
  }
}
