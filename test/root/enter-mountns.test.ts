// Issue 7 item 2: the enter helper gives QEMU its own mount namespace derived from the pod's
// (--mnt=own), carries libvirt's per-domain host directories into it, and links the pod's
// launcher to QEMU (--pod-link). Run directly (dist/native/enter, as root) against a pod with
// its own root and pid namespace; a static probe (test/fixtures/mountns-probe.c) stands in for
// QEMU and reports its view. Every refusal must leave the probe unrun.
import t, { type Test } from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { makePod, PAUSE, requireRoot, REPO, type Pod } from '../helpers/pod.ts'
import { cleanupStale, makePodmanPod, podman, podmanUnavailable } from '../helpers/podman.ts'

if (!requireRoot(t)) process.exit(0)

const ENTER = `${REPO}/dist/native/enter`
const PROBE = `${REPO}/dist/native/fixtures/mountns-probe`
const UID = 20001
const GID = 20001
const OTHER = 20002

// Host side: two libvirt-like roots under a temp dir (in production they come from config).
const base = mkdtempSync('/var/tmp/qk-carry-')
chmodSync(base, 0o755)
t.teardown(() => rmSync(base, { recursive: true, force: true }))
const rootA = `${base}/lib` // like /var/lib/libvirt/qemu
const rootB = `${base}/run` // like /run/libvirt/qemu
const rootMissing = `${base}/missing` // exists on the host, not in the pod
const domA = `${rootA}/domain-1-vm1`
const domB = `${rootB}/channel/target/domain-1-vm1`
const foreign = `${rootA}/domain-2-other`
const viaLink = `${rootA}/domain-3-link`
const domMissing = `${rootMissing}/domain-1-vm1`
for (const [dir, uid] of [[domA, UID], [domB, UID], [foreign, OTHER], [domMissing, UID]] as const) {
  mkdirSync(dir, { recursive: true, mode: 0o755 })
  chownSync(dir, uid, uid)
  chmodSync(dir, 0o700)
  writeFileSync(`${dir}/master-key.aes`, `key of ${dir}\n`, { mode: 0o600 })
  chownSync(`${dir}/master-key.aes`, uid, uid)
}
symlinkSync('domain-1-vm1', viaLink)

// The pod: own root and pid namespace; the roots exist in it (with a file only the pod has).
const podFile = `${base}/pod-file`
writeFileSync(podFile, 'pod only\n')
let n = 0
async function pod(): Promise<Pod> {
  const p = await makePod({
    uuid: `mountns-${process.pid}-${n}`, name: `mntvm${n}`, token: 'x.y.z', cgroupName: `mountns-${process.pid}-${n++}`,
    ownRoot: true, pidNs: true,
    rootFiles: { [`${rootA}/pod-only`]: podFile, [`${rootB}/pod-only`]: podFile },
  })
  t.teardown(() => p.destroy())
  return p
}
const p = await pod()
const podRoot = p.rootDir!

const nsInode = (pid: number | 'self', ns: string) => Number(/\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/${ns}`))![1])

interface Opts {
  ns?: string
  uid?: number
  mnt?: string | null
  carry?: string[]
  roots?: string[]
  devices?: string
  podLink?: string
  stopTimeout?: string
  files?: string[]
}

function enterArgs(o: Opts = {}): string[] {
  return [
    '--pidfd=-1', `--pid=${p.pid}`, `--ns=${o.ns ?? 'mnt,net,ipc,uts,cgroup,pid'}`, `--uid=${o.uid ?? UID}`, `--gid=${GID}`, '--groups=', '--fds=0,1,2',
    `--exec-host=${PROBE}`,
    ...(o.mnt === null ? [] : [`--mnt=${o.mnt ?? 'own'}`]),
    ...(o.mnt === 'pod' || o.mnt === null ? [] : [`--carry=${(o.carry ?? [domA, domB]).join(',')}`, `--carry-roots=${(o.roots ?? [rootA, rootB]).join(',')}`,
      `--devices=${o.devices ?? 'kvm,tun,vhost-net'}`]),
    ...(o.podLink !== undefined ? [`--pod-link=${o.podLink}`] : []),
    ...(o.stopTimeout !== undefined ? [`--pod-stop-timeout=${o.stopTimeout}`] : []),
    '--', 'qemu-system-x86_64', ...(o.files ?? []),
  ]
}

function enter(o: Opts = {}) {
  const r = spawnSync(ENTER, enterArgs(o), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

function refused(tt: Test, r: ReturnType<typeof enter>, code: string, status: number, msg: RegExp) {
  tt.equal(r.status, status, `exit ${status}`)
  const lines = r.stderr.trim().split('\n')
  tt.equal(lines.length, 1, 'one line on stderr')
  const e = JSON.parse(lines[0]!)
  tt.equal(e.code, code, `code ${code}`)
  tt.match(e.msg, msg, 'the message names the rule')
  tt.equal(r.stdout, '', 'the probe never ran')
}

t.test('--mnt=own: QEMU\'s own namespace, /proc, /dev and the carried directories', async (tt) => {
  const hidden = `${rootA}/pod-only`
  const r = enter({ files: [`${domA}/master-key.aes`, `${domB}/master-key.aes`, hidden] })
  tt.equal(r.status, 0, `exit 0 (${r.stderr.trim()})`)
  const rep = JSON.parse(r.stdout)
  tt.equal(rep.uid, UID, 'runs as --uid')
  const mnt = Number(/\[(\d+)\]/.exec(rep.mnt)![1])
  tt.not(mnt, p.ns.mnt, 'mount namespace differs from the pod\'s')
  tt.not(mnt, nsInode('self', 'mnt'), 'and from the host\'s')
  tt.equal(rep.procSelf, String(rep.pid), '/proc/self works (the pod pid namespace\'s procfs)')
  tt.ok(rep.procs.length > 0 && rep.procs.every(([, uid]: [number, number]) => uid === UID), `/proc shows only uid ${UID}: ${JSON.stringify(rep.procs)}`)
  tt.ok(rep.procs.some(([pid]: [number]) => pid === rep.pid), '... including itself')
  tt.equal(rep.procSysRo, true, '/proc/sys is read-only')

  const hostHas = (path: string) => existsSync(path) && statSync(path).isCharacterDevice()
  const want = ['null', 'zero', 'full', 'random', 'urandom', 'tty', 'pts', 'ptmx', 'shm', 'fd', 'stdin', 'stdout', 'stderr',
    ...(hostHas('/dev/kvm') ? ['kvm'] : []), ...(hostHas('/dev/vhost-net') ? ['vhost-net'] : []), ...(hostHas('/dev/net/tun') ? ['net'] : [])]
  tt.same(rep.dev.map((d: { name: string }) => d.name).sort(), want.sort(), '/dev holds exactly the allowed nodes')
  const byName = Object.fromEntries(rep.dev.map((d: { name: string }) => [d.name, d]))
  for (const [name, rdev] of [['null', '1:3'], ['zero', '1:5'], ['full', '1:7'], ['random', '1:8'], ['urandom', '1:9'], ['tty', '5:0']]) {
    tt.match(byName[name!], { type: 'c', rdev, mode: 0o666, uid: 0 }, `/dev/${name} ${rdev} 0666`)
  }
  tt.match(byName.ptmx, { type: 'l', link: 'pts/ptmx' }, '/dev/ptmx -> pts/ptmx')
  tt.match(byName.fd, { type: 'l', link: '/proc/self/fd' }, '/dev/fd -> /proc/self/fd')
  tt.match(byName.shm, { type: 'd', mode: 0o1777 }, '/dev/shm 1777')
  if (hostHas('/dev/kvm')) {
    const st = statSync('/dev/kvm')
    tt.match(byName.kvm, { type: 'c', rdev: `${st.rdev >> 8}:${st.rdev & 0xff}`, mode: 0o600, uid: UID, gid: GID }, '/dev/kvm: host major:minor, 0600, owned by --uid')
  }
  if (hostHas('/dev/net/tun')) tt.match(rep.devNet, [{ name: 'tun', type: 'c', mode: 0o600, uid: UID }], '/dev/net/tun')
  const mi: string[] = rep.mountinfo
  tt.ok(mi.some((l) => / \/dev rw,nosuid,noexec.* - tmpfs /.test(l)), '/dev is a nosuid,noexec tmpfs')
  tt.ok(mi.some((l) => / \/proc rw,nosuid,nodev,noexec.* - proc .*hidepid=invisible/.test(l)), '/proc: fresh procfs, hidepid=invisible')
  tt.ok(mi.some((l) => / \/dev\/pts .* - devpts .*ptmxmode=666/.test(l)), '/dev/pts: own devpts instance')

  tt.same(rep.files[`${domA}/master-key.aes`], { content: `key of ${domA}\n` }, 'carried file readable at its host path')
  tt.same(rep.files[`${domB}/master-key.aes`], { content: `key of ${domB}\n` }, 'carried file under the second root (mkdir -p below it)')
  tt.same(rep.files[hidden], { error: 'No such file or directory' }, 'the pod\'s own files under a carry root are hidden from QEMU')

  const launcherView = `/proc/${p.pid}/root`
  tt.notOk(existsSync(`${launcherView}${domA}`), 'the launcher does not see the carried directory')
  tt.notOk(existsSync(`${launcherView}${domB}`), '... nor the second one')
  tt.ok(existsSync(`${launcherView}${hidden}`), 'the launcher still sees its own file there')
  tt.ok(existsSync(`${podRoot}${rootA}`), 'the pod root keeps the root directory')
  const podMounts = readFileSync(`/proc/${p.pid}/mountinfo`, 'utf8')
  tt.notOk(podMounts.includes(base), 'no carry mount propagated into the pod')
  tt.notOk(readFileSync('/proc/self/mountinfo', 'utf8').includes(base), 'nor into the host')
})

t.test('--mnt=pod (and no --mnt): QEMU in the pod\'s mount namespace itself', async (tt) => {
  for (const mnt of ['pod', null] as const) {
    const r = enter({ mnt })
    tt.equal(r.status, 0, `exit 0 (${r.stderr.trim()})`)
    const rep = JSON.parse(r.stdout)
    tt.equal(Number(/\[(\d+)\]/.exec(rep.mnt)![1]), p.ns.mnt, `--mnt=${mnt ?? '(absent)'}: the pod's mount namespace`)
  }
})

t.test('refusals', async (tt) => {
  tt.test('a --carry directory owned by another uid', async (t2) => {
    refused(t2, enter({ carry: [domA, foreign] }), 'ERR_ENTER_CARRY', 71, /domain-2-other: owned by uid 20002, expected .*--uid 20001/)
  })
  tt.test('a symlink in the --carry path', async (t2) => {
    refused(t2, enter({ carry: [viaLink] }), 'ERR_ENTER_CARRY', 71, /domain-3-link: a symlink in the path/)
  })
  tt.test('a carry root missing in the pod', async (t2) => {
    refused(t2, enter({ carry: [domA, domMissing], roots: [rootA, rootMissing] }), 'ERR_ENTER_CARRY', 71,
      /carry root .*\/missing is not a directory in the pod/)
  })
  tt.test('--pod-link to a socket nobody listens on', async (t2) => {
    const sock = '/run/qk-dead.sock'
    const made = spawnSync('python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); import os; os.chmod(sys.argv[1], 0o777)', `${podRoot}${sock}`])
    t2.equal(made.status, 0, 'a bound, never listening socket')
    refused(t2, enter({ podLink: sock }), 'ERR_ENTER_PODLINK', 71, /pod link \/run\/qk-dead.sock: connect: Connection refused/)
    refused(t2, enter({ podLink: '/run/qk-nobody.sock' }), 'ERR_ENTER_PODLINK', 71, /connect: No such file or directory/)
  })
  tt.test('a listener that never acks (meanwhile: both helper processes have given up root)', async (t2) => {
    const sock = '/run/qk-mute.sock'
    const l = listener(`${podRoot}${sock}`, 'mute')
    await l.ready
    const start = Date.now()
    const c = spawn(ENTER, enterArgs({ podLink: sock }), { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    c.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const exited = new Promise<number | null>((r) => c.on('exit', (code) => r(code)))
    await l.connected
    const status = (pid: number) => readFileSync(`/proc/${pid}/status`, 'utf8')
    const kids = readFileSync(`/proc/${c.pid}/task/${c.pid}/children`, 'utf8').trim().split(/\s+/).map(Number)
    t2.equal(kids.length, 1, 'the parent has one child (the future QEMU)')
    for (const [who, pid] of [['parent', c.pid!], ['child', kids[0]!]] as const) {
      const st = status(pid)
      t2.match(st, new RegExp(`\nUid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}\n`), `${who}: uid ${UID} (real, effective, saved, fs)`)
      t2.match(st, /\nCapEff:\s+0+\n/, `${who}: no effective capabilities`)
      t2.match(st, /\nCapBnd:\s+0+\n/, `${who}: empty bounding set`)
      t2.match(st, /\nNoNewPrivs:\s+1\n/, `${who}: no_new_privs`)
    }
    const code = await exited
    refused(t2, { status: code, stdout, stderr }, 'ERR_ENTER_PODLINK', 71, /no ack within 2 s/)
    t2.ok(Date.now() - start >= 1900, 'waited about 2 s')
    l.kill()
  })
  tt.test('bad argv', async (t2) => {
    refused(t2, enter({ ns: 'net' }), 'ERR_ENTER_USAGE', 64, /--mnt=own needs mnt in --ns/)
    refused(t2, enter({ carry: [domA], roots: [rootB] }), 'ERR_ENTER_USAGE', 64, /not under any --carry-roots/)
    refused(t2, enter({ carry: [`${rootA}/../lib/domain-1-vm1`] }), 'ERR_ENTER_USAGE', 64, /normalised path/)
    refused(t2, enter({ roots: [rootA, `${rootA}/x`] }), 'ERR_ENTER_USAGE', 64, /must not repeat or nest/)
    refused(t2, enter({ devices: 'kvm,sda' }), 'ERR_ENTER_USAGE', 64, /unknown device/)
    refused(t2, enter({ mnt: 'host' }), 'ERR_ENTER_USAGE', 64, /--mnt must be own or pod/)
    for (const bad of ['3601', '-1', '1.5', '010', ''])
      refused(t2, enter({ stopTimeout: bad }), 'ERR_ENTER_USAGE', 64, bad === '' ? /option needs a value|bad number/ : /bad number in: --pod-stop-timeout=/)
  })
})

// A launcher stand-in: Node cannot receive SCM_RIGHTS, python3 can (socket.recv_fds).
const LISTENER = `
import json, os, socket, sys
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
msg, fds, _, _ = socket.recv_fds(c, 64, 4)
info = open("/proc/self/fdinfo/%d" % fds[0]).read() if fds else ""
if mode == "ack":
    c.sendall(b"k")
    c.recv(1)  # the watcher closes the link once QEMU has exited (closing first would stop QEMU)
else:
    print("connected", flush=True)
    sys.stdin.read()
print(json.dumps({"msg": msg.decode(), "nfds": len(fds), "fdinfo": info}), flush=True)
`

function listener(path: string, mode: 'ack' | 'mute') {
  const c = spawn('python3', ['-c', LISTENER, path, mode], { stdio: ['pipe', 'pipe', 'inherit'] })
  let out = ''
  let readyFn: () => void
  let connectedFn: () => void
  const ready = new Promise<void>((r) => { readyFn = r })
  const connected = new Promise<void>((r) => { connectedFn = r })
  c.stdout.on('data', (d: Buffer) => {
    out += d.toString()
    if (out.startsWith('ready\n')) readyFn()
    if (out.startsWith('ready\nconnected\n')) connectedFn()
  })
  const done = new Promise<string>((r) => c.on('exit', () => r(out.slice('ready\n'.length).trim())))
  return { ready, connected, done, kill: () => { c.stdin.end(); c.kill() } }
}

t.test('--pod-link: the launcher gets a pidfd of QEMU before QEMU starts', async (tt) => {
  const sock = '/run/qk-link.sock'
  const l = listener(`${podRoot}${sock}`, 'ack')
  await l.ready
  const r = enter({ podLink: sock })
  tt.equal(r.status, 0, `exit 0 (${r.stderr.trim()})`)
  const rep = JSON.parse(r.stdout)
  const got = JSON.parse(await l.done)
  tt.equal(got.msg, 'QKLINK1\n', 'the 8-byte hello')
  tt.equal(got.nfds, 1, 'one fd passed')
  const nspid = /\nNSpid:\s+([\d\s]+)\n/.exec(got.fdinfo)?.[1]?.trim().split(/\s+/).map(Number) ?? []
  tt.equal(nspid.at(-1), rep.pid, 'the pidfd names the process that became QEMU (its pid in the pod)')
  tt.equal(nspid.length, 2, '... a process in the pod\'s pid namespace')
})

// The watcher for real: the pod's real launcher (test/helpers/podman.ts, the launcher image),
// the enter helper run as qemu-kube runs it (in the launcher container's cgroups, a pidfd of the
// launcher, without the pid namespace unless asked), and the pause fixture in place of QEMU
// (it exits 0 on SIGTERM: exit 0 = SIGTERM came first, SIGKILL = it did not).
const why = podmanUnavailable()
t.test('the watcher: QEMU ends with its pod\'s launcher', { skip: why ?? false }, async (tt) => {
  await cleanupStale()
  const LINK = '/var/run/kubevirt-private/qemu-kube/launcher.sock'
  // Opens the pidfd (Node cannot), joins the cgroups as qemu-kube's Node process does, execs ENTER in place.
  const WRAP = 'import os,sys; fd=os.pidfd_open(int(sys.argv[1])); os.set_inheritable(fd, True)\n'
    + 'for f in sys.argv[2].split(","): open(f, "w").write(str(os.getpid()))\n'
    + 'os.execv(sys.argv[3], [sys.argv[3], "--pidfd=%d" % fd] + sys.argv[4:])'
  const nsOf = (pid: number, ns: string) => { try { return readlinkSync(`/proc/${pid}/ns/${ns}`) } catch { return null } }
  const alive = (pid: number) => { try { return !/^\d+ \(.*\) [ZX] /s.test(readFileSync(`/proc/${pid}/stat`, 'utf8')) } catch { return false } }
  const watchersOf = (qemu: number) => {
    const mnt = nsOf(qemu, 'mnt')
    return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/comm`, 'utf8') === 'qemu-kube-watch\n' && mnt !== null && nsOf(pid, 'mnt') === mnt
      } catch {
        return false
      }
    })
  }
  const until = async (what: string, ok: () => boolean, ms = 10_000) => {
    for (const end = Date.now() + ms; !ok();) {
      if (Date.now() > end) throw new Error(`timed out: ${what}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  async function linked(ttt: Test, o: { pidNs?: boolean; stopTimeout?: number } = {}) {
    const pod = await makePodmanPod({ uuid: randomUUID(), name: `watch-${randomUUID().slice(0, 6)}`, token: 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0In0.c2ln' })
    ttt.teardown(() => pod.destroy())
    const procs = [...Object.values(pod.cgroups.v1), ...(pod.cgroups.v2 ? [pod.cgroups.v2] : [])].map((d) => `${d}/cgroup.procs`)
    const args = [`--pid=${pod.pid}`, `--ns=mnt,net,ipc,uts,cgroup${o.pidNs ? ',pid' : ''}`, `--uid=${UID}`, `--gid=${GID}`, '--groups=', '--fds=0,1,2',
      `--exec-host=${PAUSE}`, '--mnt=own', '--carry=', '--carry-roots=', '--devices=', `--pod-link=${LINK}`,
      ...(o.stopTimeout === undefined ? [] : [`--pod-stop-timeout=${o.stopTimeout}`]), '--', 'qemu-system-x86_64']
    const c = spawn('python3', ['-c', WRAP, String(pod.pid), procs.join(','), ENTER, ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    c.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const exit = new Promise<{ code: number | null; signal: string | null }>((r) => c.on('exit', (code, signal) => r({ code, signal })))
    ttt.teardown(() => { c.kill('SIGKILL') })
    // QEMU: the helper itself without the pid namespace, its one child with it.
    const qemuPid = () => {
      if (!o.pidNs) return c.pid!
      const kids = readFileSync(`/proc/${c.pid}/task/${c.pid}/children`, 'utf8').trim()
      return kids === '' ? 0 : Number(kids.split(/\s+/)[0])
    }
    let qemu = 0
    let watcher = 0
    await until(`a running pause with its watcher (${stderr})`, () => {
      qemu = alive(c.pid!) ? qemuPid() : 0
      if (qemu === 0 || !readFileSync(`/proc/${qemu}/cmdline`, 'utf8').startsWith('qemu-system-x86_64')) return false
      const w = watchersOf(qemu)
      watcher = w.length === 1 ? w[0]! : 0
      return watcher !== 0
    })
    const log = async () => (await podman(['logs', pod.ctrId])).stderr
    return { pod, c, qemu, watcher, exit, log }
  }

  tt.test('the watcher: the VM\'s uid, no capabilities, only its own fds, the pod\'s cgroups, not QEMU\'s child', async (t2) => {
    const { qemu, watcher } = await linked(t2)
    const st = readFileSync(`/proc/${watcher}/status`, 'utf8')
    t2.match(st, new RegExp(`\nUid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}\n`), `uid ${UID}`)
    t2.match(st, /\nCapEff:\s+0+\n/, 'no effective capabilities')
    t2.match(st, /\nCapPrm:\s+0+\n/, 'none permitted')
    t2.match(st, /\nCapBnd:\s+0+\n/, 'empty bounding set')
    t2.match(st, /\nNoNewPrivs:\s+1\n/, 'no_new_privs')
    const ppid = Number(/\nPPid:\s+(\d+)\n/.exec(st)![1])
    t2.not(ppid, qemu, 'not QEMU\'s child')
    t2.equal(readFileSync(`/proc/${qemu}/task/${qemu}/children`, 'utf8').trim(), '', 'QEMU has no child')
    const fds = readdirSync(`/proc/${watcher}/fd`).map((fd) => readlinkSync(`/proc/${watcher}/fd/${fd}`)).sort()
    t2.same(fds, ['anon_inode:[pidfd]', 'anon_inode:[pidfd]', 'anon_inode:[signalfd]', fds.find((f) => f.startsWith('socket:'))].sort(),
      `the link, QEMU's and the launcher's pidfds, its signalfd; nothing else: ${fds.join(' ')}`)
    const qemuFds = new Set(readdirSync(`/proc/${qemu}/fd`).map((fd) => readlinkSync(`/proc/${qemu}/fd/${fd}`)))
    t2.notOk(fds.some((f) => qemuFds.has(f) && !f.startsWith('anon_inode:')), 'none of QEMU\'s files')
    t2.equal(readFileSync(`/proc/${watcher}/cgroup`, 'utf8'), readFileSync(`/proc/${qemu}/cgroup`, 'utf8'), 'QEMU\'s (the pod\'s) cgroups')
  })

  for (const pidNs of [false, true]) {
    tt.test(`the launcher gets SIGTERM (podman stop): QEMU gets SIGTERM and exits, the watcher is gone${pidNs ? ' (pid namespace)' : ''}`, async (t2) => {
      const { pod, qemu, watcher, exit, log } = await linked(t2, { pidNs })
      const t0 = Date.now()
      await pod.stop({ graceful: true, timeout: 20 })
      t2.same(await exit, { code: 0, signal: null }, 'the pause exited 0: it got SIGTERM')
      t2.ok(Date.now() - t0 < 5000, `within a few seconds (${Date.now() - t0} ms)`)
      t2.notOk(alive(qemu), 'QEMU is gone')
      await until('the watcher exits', () => !alive(watcher), 3000)
      t2.match(await log(), /"msg":"QEMU 1 of 1: stopped"/, 'the launcher logged it stopped')
    })
  }

  tt.test('the launcher is SIGKILLed (podman kill -s KILL): QEMU gets SIGTERM all the same, the watcher is gone', async (t2) => {
    const { pod, qemu, watcher, exit } = await linked(t2)
    const t0 = Date.now()
    await pod.stop({ graceful: false })
    t2.same(await exit, { code: 0, signal: null }, 'the pause exited 0: it got SIGTERM')
    t2.ok(Date.now() - t0 < 5000, `within a few seconds (${Date.now() - t0} ms)`)
    t2.notOk(alive(qemu), 'QEMU is gone')
    await until('the watcher exits', () => !alive(watcher), 3000)
  })

  tt.test('the launcher\'s host pid SIGKILLed: the same', async (t2) => {
    const { pod, exit, watcher } = await linked(t2)
    process.kill(pod.pid, 'SIGKILL')
    t2.same(await exit, { code: 0, signal: null }, 'the pause exited 0: it got SIGTERM')
    await until('the watcher exits', () => !alive(watcher), 3000)
  })

  tt.test('QEMU exits by itself: the watcher exits, the launcher drops the link, the pod stops without waiting', async (t2) => {
    const { pod, qemu, watcher, exit, log } = await linked(t2)
    process.kill(qemu, 'SIGKILL')
    t2.same(await exit, { code: null, signal: 'SIGKILL' })
    await until('the watcher exits', () => !alive(watcher), 3000)
    for (const end = Date.now() + 5000; !(await log()).includes('"msg":"qemu link: a linked QEMU exited"') && Date.now() < end;) await new Promise((r) => setTimeout(r, 100))
    t2.match(await log(), /"msg":"qemu link: a linked QEMU exited","linked":0/, 'the launcher dropped it')
    const t0 = Date.now()
    await pod.stop({ graceful: true, timeout: 20 })
    t2.ok(Date.now() - t0 < 5000, 'the launcher had nothing to wait for')
    t2.match(await log(), /"msg":"SIGTERM: stopping 0 linked QEMU\(s\), then exiting"/)
  })

  tt.test('the watcher gets SIGTERM (the runtime tearing down the cgroups, or QEMU\'s uid): it stops QEMU first', async (t2) => {
    const { qemu, watcher, exit, log } = await linked(t2)
    process.kill(watcher, 'SIGTERM')
    t2.same(await exit, { code: 0, signal: null }, 'the pause exited 0: it got SIGTERM')
    t2.notOk(alive(qemu), 'QEMU is gone')
    await until('the watcher exits', () => !alive(watcher), 3000)
    for (const end = Date.now() + 5000; !(await log()).includes('a linked QEMU exited') && Date.now() < end;) await new Promise((r) => setTimeout(r, 100))
    t2.match(await log(), /"msg":"qemu link: a linked QEMU exited","linked":0/)
  })

  tt.test('the watcher SIGKILLed while QEMU runs: the launcher logs that this QEMU is no longer tied to the pod', async (t2) => {
    const { qemu, watcher, log } = await linked(t2)
    process.kill(watcher, 'SIGKILL')
    const msg = 'qemu link: a watcher closed its link while its QEMU still runs; that QEMU is no longer tied to this pod'
    for (const end = Date.now() + 5000; !(await log()).includes(msg) && Date.now() < end;) await new Promise((r) => setTimeout(r, 100))
    t2.match(await log(), new RegExp(`"level":"error".*"msg":"${msg}"`))
    t2.ok(alive(qemu), 'QEMU runs on: a known limit (docs/CHAIN.md step 10); the pod\'s removal kills it by cgroup')
  })

  // The helper resets every disposition before exec, so the stand-in cannot ignore SIGTERM; a
  // stopped process does not act on it either (it stays pending), and SIGKILL still ends it.
  tt.test('a QEMU that does not end on SIGTERM: SIGKILL after --pod-stop-timeout', async (t2) => {
    const { pod, qemu, watcher, exit, log } = await linked(t2, { stopTimeout: 1 })
    process.kill(qemu, 'SIGSTOP')
    const t0 = Date.now()
    await pod.stop({ graceful: true, timeout: 20 })
    t2.same(await exit, { code: null, signal: 'SIGKILL' }, 'SIGKILLed')
    t2.ok(Date.now() - t0 >= 1000, `after the 1 s grace (${Date.now() - t0} ms)`)
    await until('the watcher exits', () => !alive(watcher), 3000)
    t2.match(await log(), /"msg":"QEMU 1 of 1: stopped"/)
  })
})
