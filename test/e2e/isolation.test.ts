// Issue 7, against a real libvirtd and real podman pods, with the real QEMU from the launcher
// image: a compromised QEMU, or its host uid, reaches its own VM's pod and nothing else.
//   - two VMs in two pods: from VM A's identity (on the host, and from inside QEMU A's own mount
//     namespace) QEMU B's root, environ and memory, ptrace, kill and kill(-1) all fail; B keeps
//     running and answering;
//   - what QEMU sees: /proc/self, only its own processes, a minimal /dev, its domain's libvirt
//     files, which neither its pod's launcher nor another pod nor another QEMU can see;
//   - the lifecycle: destroy and start again; the pod deleted under a running VM; libvirtd
//     restarted under two running VMs.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { REPO } from '../helpers/install.ts'
import { defineAndStart, domainPid, requireLibvirt, restartLibvirtd, virsh } from '../helpers/libvirt.ts'
import { monitorStatus, nsInode, qemuProcesses, setupE2e, until, type Pod, type Vm } from '../helpers/e2e.ts'
import { rotateToken } from '../helpers/podman.ts'

if (!requireLibvirt(t)) process.exit(0)

const REACH = `${REPO}/dist/native/fixtures/reach`
const e = await setupE2e(t, 'iso')

/** The reach fixture as `uid` (root drops to it first), optionally from inside `mntnsOf`'s mount namespace. */
function reach(args: string[], uid: number, mntnsOf?: number): Promise<Record<string, any>> {
  const argv = [...(mntnsOf ? [`--mntns-of=${mntnsOf}`] : []), `--uid=${uid}`, `--gid=${uid}`, ...args]
  return new Promise((res, rej) => execFile(REACH, argv, (err, stdout, stderr) => {
    if (err) rej(new Error(`reach ${argv.join(' ')}: ${stderr}`))
    else res(JSON.parse(stdout))
  }))
}

const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
/** libvirt's per-domain directory: domain-<id>-<first 20 characters of the name>. */
async function domainDir(name: string): Promise<string | undefined> {
  const id = (await virsh(['domid', name])).stdout.trim()
  return readdirSync('/var/lib/libvirt/qemu').find((d) => d.startsWith(`domain-${id}-`))
}

async function running(t: Test, tag: string): Promise<{ vm: Vm; pod: Pod; pid: number; tok: string }> {
  const vm = e.vm(tag)
  const tok = await e.token(vm)
  const pod = await e.pod(vm, tok)
  const r = await e.start(vm, tok)
  t.equal(r.code, 0, `${vm.name} starts: ${r.stderr}`)
  const pid = domainPid(vm.name)!
  t.ok(pid, `${vm.name}: libvirt tracks its QEMU`)
  return { vm, pod, pid, tok }
}

t.test('two VMs in two pods: VM A\'s identity cannot reach QEMU B, in QEMU A\'s namespace or on the host', async (t) => {
  const a = await running(t, 'reach-a')
  const b = await running(t, 'reach-b')
  t.not(a.vm.uid, b.vm.uid, 'one uid per VM')

  const inside = await reach([String(b.pid)], a.vm.uid, a.pid)
  t.same(inside, { root: 'ENOENT', environ: 'ENOENT', mem: 'EPERM', ptrace: 'EPERM', kill: 'EPERM', killall: 'not tried' },
    'from QEMU A\'s mount namespace: B is not even listed in /proc; memory, ptrace and signals are refused')
  const host = await reach(['--killall', String(b.pid)], a.vm.uid)
  t.same(host, { root: 'EACCES', environ: 'EACCES', mem: 'EPERM', ptrace: 'EPERM', kill: 'EPERM', killall: 'sent' },
    'from the host as A\'s uid: B\'s pod filesystem, environment and memory are closed; ptrace and kill refused')
  await until('kill(-1) to reach what A\'s uid may signal: QEMU A', () => !alive(a.pid))
  t.ok(alive(b.pid), 'QEMU B survived A\'s kill(-1)')
  t.equal(await monitorStatus(b.vm.name), 'running', 'and its domain still answers: running')
  t.equal((await virsh(['domstate', b.vm.name])).stdout.trim(), 'running')
})

t.test('QEMU in a real pod: /proc/self, only its own processes, a minimal /dev, its own libvirt files and no one else\'s', async (t) => {
  const a = await running(t, 'view-a')
  const b = await running(t, 'view-b')
  for (const q of [a, b]) {
    t.not(nsInode(q.pid, 'mnt'), q.pod.ns.mnt, `${q.vm.name}: its mount namespace is not its pod's`)
    t.not(nsInode(q.pid, 'mnt'), nsInode(process.pid, 'mnt'), `${q.vm.name}: nor the host's`)
  }
  const dirA = await domainDir(a.vm.name)
  const dirB = await domainDir(b.vm.name)
  t.not(dirA, dirB)
  t.ok(dirA && dirB, `libvirt made the domain directories (${dirA}, ${dirB})`)
  const keyA = `/var/lib/libvirt/qemu/${dirA}/master-key.aes`
  const keyB = `/var/lib/libvirt/qemu/${dirB}/master-key.aes`

  const view = await reach(['--view', `--read=${keyA}`, `--read=${keyB}`], a.vm.uid, a.pid)
  t.equal(view.self, String(view.pid), '/proc/self works')
  // Its own uid's processes: QEMU and this probe. (QEMU's pod-link watcher runs as the same uid
  // but is not dumpable, so /proc gives it to root and hidepid hides it.)
  t.same([...view.pids].sort((x: number, y: number) => x - y), [a.pid, view.pid].sort((x, y) => x - y),
    '/proc lists only its own processes (hidepid=invisible, one uid per VM)')
  t.same([...view.dev].sort(), ['fd', 'full', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero'],
    '/dev holds only the allowed nodes')
  t.same(view.read, { [keyA]: 'ok', [keyB]: 'ENOENT' }, 'its master key is there and readable; the other domain\'s does not exist')

  const launcherA = readdirSync(`/proc/${a.pod.pid}/root/var/lib/libvirt/qemu`)
  t.same(launcherA, [], 'its own pod\'s launcher sees none of the carried files')
  t.same(readdirSync(`/proc/${b.pod.pid}/root/var/lib/libvirt/qemu`), [], 'nor does the other pod')
  const fromB = await reach(['--view', `--read=${keyA}`], b.vm.uid, b.pid)
  t.same(fromB.read, { [keyA]: 'ENOENT' }, 'nor does the other VM\'s QEMU')
  t.same(readdirSync(`/proc/${a.pid}/root/var/lib/libvirt/qemu`).sort(), [dirA], 'QEMU A\'s view: exactly its domain directory')
})

t.test('the monitor, domstats, destroy, and a start again with a fresh token', async (t) => {
  const a = await running(t, 'again')
  t.equal(await monitorStatus(a.vm.name), 'running')
  t.match((await virsh(['domstats', a.vm.name, '--state', '--cpu-total'])).stdout, /state\.state=1/, 'domstats')
  t.equal((await virsh(['destroy', a.vm.name])).code, 0, 'destroy')
  await until('QEMU gone', () => !alive(a.pid))
  const tok = await e.token(a.vm)
  rotateToken(a.pod, tok) // the kubelet updates the Secret volume: a fresh token per start
  const again = await defineAndStart(e.xml(a.vm, tok))
  t.equal(again.code, 0, `defined again with the new token, started: ${again.stderr}`)
  t.equal(await monitorStatus(a.vm.name), 'running', 'running again')
})

t.test('the pod deleted under a running VM: QEMU is gone within seconds, libvirt says shut off, no cgroup is left', async (t) => {
  const a = await running(t, 'poddel')
  const started = Date.now()
  // What the kubelet does: SIGTERM to the pod's PID 1, a grace period, then removal.
  await a.pod.stop({ graceful: true, timeout: 30 })
  await until('QEMU to be gone', () => !alive(a.pid), 15_000)
  const gone = (Date.now() - started) / 1000
  t.ok(gone < 10, `QEMU gone ${gone.toFixed(2)} s after the pod's stop began`)
  let state = ''
  for (const end = Date.now() + 10_000; Date.now() < end && state !== 'shut off'; await new Promise((r) => setTimeout(r, 100))) {
    state = (await virsh(['domstate', a.vm.name])).stdout.trim()
  }
  t.equal(state, 'shut off', 'libvirt: shut off')
  await a.pod.destroy() // throws if any of the pod's cgroup directories is left
  t.same(qemuProcesses(a.vm, [a.pod]), [], 'no QEMU anywhere')
})

t.test('libvirtd restarted while two VMs run: both keep running, libvirt reconnects, destroy works', async (t) => {
  const a = await running(t, 'restart-a')
  const b = await running(t, 'restart-b')
  const { before, after } = await restartLibvirtd()
  t.not(after, before, `a new libvirtd (pid ${before} -> ${after})`)
  for (const q of [a, b]) {
    t.ok(alive(q.pid), `${q.vm.name}: QEMU kept running`)
    t.equal(domainPid(q.vm.name), q.pid, `${q.vm.name}: libvirt tracks the same pid`)
  }
  const list = (await virsh(['list', '--name', '--state-running'])).stdout.split('\n')
  t.ok(list.includes(a.vm.name) && list.includes(b.vm.name), 'virsh list: both running')
  t.equal(await monitorStatus(a.vm.name), 'running', 'A\'s monitor answers')
  t.equal(await monitorStatus(b.vm.name), 'running', 'B\'s monitor answers')
  for (const q of [a, b]) {
    t.equal((await virsh(['destroy', q.vm.name])).code, 0, `${q.vm.name}: destroy`)
    await until(`${q.vm.name} gone`, () => !alive(q.pid))
  }
})
