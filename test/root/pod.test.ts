// The test-pod helper itself (test/helpers/pod.ts), against the real kernel: namespaces, cgroups,
// the secret layouts seen from inside the pod and not from the host, its own root, clean-up.
import t, { type Test } from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { basename } from 'node:path'
import { existsSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs'
import {
  CGROUP_PARENT, DEFAULT_SECRET_PATH, K8S_DATA_DIR, NS_NAMES, cleanupStale, hierarchies, listQemuKubeTestCgroups, makePod, requireRoot,
  type Pod, type PodOptions,
} from '../helpers/pod.ts'
import { tempDir } from '../helpers/tokens.ts'

if (!requireRoot(t)) process.exit(0)

const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.pod-test-token.c2ln'
let n = 0
async function pod(opts: Partial<PodOptions> = {}): Promise<Pod> {
  const p = await makePod({ uuid: `pod-test-${process.pid}-${n}`, name: `podvm${n}`, token: TOKEN, cgroupName: `podtest-${process.pid}-${n++}`, ...opts })
  t.teardown(() => p.destroy())
  return p
}

/** A shell command in the pod's mount and uts namespaces (and so its root). */
function inPod(p: Pod, script: string): string {
  return execFileSync('nsenter', ['-t', String(p.pid), '-m', '-u', '--', 'sh', '-c', script], { encoding: 'utf8' }).trim()
}

const nsInode = (pid: number | 'self', ns: string) => Number(/\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/${ns}`))![1])

function checkPod(t: Test, p: Pod, opts: { pidNs?: boolean } = {}) {
  t.same(readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').split('\0').slice(0, -1),
    ['virt-launcher', '-kubevirt.vm.uuid', p.uuid, '-kubevirt.vm.name', p.name], 'the launcher\'s cmdline')
  for (const ns of NS_NAMES) t.equal(p.ns[ns], nsInode(p.pid, ns), `ns.${ns} is the launcher's`)
  for (const ns of ['mnt', 'net', 'ipc', 'uts', 'cgroup']) t.not(p.ns[ns as 'mnt'], nsInode('self', ns), `own ${ns} namespace`)
  if (opts.pidNs) {
    t.not(p.ns.pid, nsInode('self', 'pid'), 'own pid namespace')
    t.match(readFileSync(`/proc/${p.pid}/status`, 'utf8'), new RegExp(`\\nNSpid:\\s+${p.pid}\\s+1\\n`), 'pid 1 in it')
  } else t.equal(p.ns.pid, nsInode('self', 'pid'), 'the host pid namespace')

  const cgroupName = `${CGROUP_PARENT}/${basename(p.cgroups.v2!)}`
  const lines = readFileSync(`/proc/${p.pid}/cgroup`, 'utf8').trim().split('\n')
  t.equal(lines.length, hierarchies().length, 'one line per hierarchy')
  for (const line of lines) t.match(line, new RegExp(`:/${cgroupName}$`), `in the test cgroup: ${line}`)
  const v1 = hierarchies().filter((h) => h.version === 1)
  t.same(Object.keys(p.cgroups.v1).sort(), v1.map((h) => h.key).sort(), 'every v1 hierarchy, name=systemd included')
  for (const dir of [...Object.values(p.cgroups.v1), p.cgroups.v2!]) {
    t.ok(readFileSync(`${dir}/cgroup.procs`, 'utf8').split('\n').includes(String(p.pid)), `launcher in ${dir}`)
  }
  t.equal(inPod(p, 'hostname'), p.name, 'the hostname is the VM name')
}

async function checkDestroy(t: Test, p: Pod) {
  const dirs = [...Object.values(p.cgroups.v1), p.cgroups.v2!]
  await p.destroy()
  t.notOk(existsSync(`/proc/${p.pid}`), 'the launcher is gone')
  for (const dir of dirs) t.notOk(existsSync(dir), `${dir} removed`)
  if (p.rootDir) t.notOk(existsSync(p.rootDir), 'the root tree removed')
  await p.destroy() // idempotent
}

t.test('plain: the token in the pod only', async (t) => {
  const p = await pod()
  checkPod(t, p)
  t.equal(inPod(p, `cat ${DEFAULT_SECRET_PATH}`), TOKEN, 'the pod reads the token')
  t.notOk(existsSync(DEFAULT_SECRET_PATH) && readFileSync(DEFAULT_SECRET_PATH, 'utf8') === TOKEN, 'the host does not see it')
  t.match(inPod(p, `grep ' ${DEFAULT_SECRET_PATH.replace('/var/run', '/run').replace(/\/token$/, '')} ' /proc/self/mounts`), /^tmpfs .* ro,/,
    'a read-only tmpfs, like a Secret volume')
  await checkDestroy(t, p)
})

t.test('k8s: the Secret-volume symlink chain', async (t) => {
  const p = await pod({ secretLayout: 'k8s', secretPath: '/var/run/secrets/qk/token' })
  t.equal(inPod(p, 'readlink /var/run/secrets/qk/token'), '..data/token')
  t.equal(inPod(p, 'readlink /var/run/secrets/qk/..data'), K8S_DATA_DIR)
  t.equal(inPod(p, `cat /var/run/secrets/qk/${K8S_DATA_DIR}/token`), TOKEN)
  t.equal(inPod(p, 'cat /var/run/secrets/qk/token'), TOKEN)
  await checkDestroy(t, p)
})

t.test('ownRoot + abs-symlink: the pod has its own "/", the host file is not in it', async (t) => {
  const host = tempDir(t, 'qk-podtest-')
  writeFileSync(`${host}/token`, TOKEN)
  const p = await pod({ ownRoot: true, secretLayout: 'abs-symlink', symlinkTarget: `${host}/token`, rootFiles: { '/etc/hostname': '/etc/hostname' } })
  checkPod(t, p)
  const root = statSync(`/proc/${p.pid}/root/`)
  t.not(`${root.dev}:${root.ino}`, `${statSync('/').dev}:${statSync('/').ino}`, '/proc/PID/root is not the host\'s /')
  t.equal(`${root.dev}:${root.ino}`, `${statSync(p.rootDir!).dev}:${statSync(p.rootDir!).ino}`, 'it is rootDir')
  t.equal(inPod(p, `readlink ${DEFAULT_SECRET_PATH}`), `${host}/token`, 'an absolute symlink')
  t.equal(inPod(p, `test -e ${DEFAULT_SECRET_PATH} && echo yes || echo no`), 'no', 'dangling inside the pod')
  t.equal(inPod(p, 'cat /etc/hostname'), readFileSync('/etc/hostname', 'utf8').trim(), 'rootFiles copied in')
  t.notOk(inPod(p, 'ls /').split('\n').includes('work'), 'no host directories but the bound /usr')
  t.notMatch(inPod(p, 'cat /proc/self/mountinfo'), /oldroot/, 'the old root is detached')
  // Files placed in rootDir later are visible in the pod.
  mkdirSync(`${p.rootDir}/opt`)
  writeFileSync(`${p.rootDir}/opt/later`, 'later')
  t.equal(inPod(p, 'cat /opt/later'), 'later')
  await checkDestroy(t, p)
})

t.test('fifo, devzero and missing secrets', async (t) => {
  const fifo = await pod({ secretLayout: 'fifo' })
  t.equal(inPod(fifo, `test -p ${DEFAULT_SECRET_PATH} && echo fifo`), 'fifo')
  const zero = await pod({ secretLayout: 'devzero', ownRoot: true })
  t.equal(inPod(zero, `stat -c %F:%t:%T ${DEFAULT_SECRET_PATH}`), 'character special file:1:5', '/dev/zero at the secret path')
  const missing = await pod({ secretLayout: 'missing' })
  t.equal(inPod(missing, `test -e ${DEFAULT_SECRET_PATH} && echo yes || echo no`), 'no')
  for (const p of [fifo, zero, missing]) await checkDestroy(t, p)
})

t.test('pid namespace: the launcher is its pid 1', async (t) => {
  const p = await pod({ pidNs: true })
  checkPod(t, p, { pidNs: true })
  await checkDestroy(t, p)
})

t.test('two pods for one VM: two launchers, two sets of cgroups', async (t) => {
  const a = await pod({ uuid: 'same-vm', name: 'podvmA' })
  const b = await pod({ uuid: 'same-vm', name: 'podvmB' })
  t.not(a.pid, b.pid)
  t.not(a.ns.net, b.ns.net)
  t.not(a.cgroups.v2, b.cgroups.v2)
})

t.test('a launcher that dies: makePod rejects and leaves nothing', async (t) => {
  // A launcher that cannot even be exec'd (not executable): one that starts and then fails (/usr/bin/false) can
  // be seen under argv[0] virt-launcher for a moment, and then makePod rightly finds it.
  await t.rejects(makePod({ uuid: 'u', name: 'dies', token: TOKEN, launcherPath: '/etc/hostname', cgroupName: `podtest-${process.pid}-dies` }),
    /exited \(\d+\) before its launcher ran/)
  t.notOk(listQemuKubeTestCgroups().some((d) => d.endsWith(`-${process.pid}-dies`)), 'no cgroups left')
})

t.test('cleanupStale: removes leftovers of a dead run, keeps live pods', async (t) => {
  const keep = await pod()
  // A leftover: a process in qemu-kube-test/stale-* everywhere, owned by a test run now dead.
  const dead = spawn('true')
  await new Promise((r) => dead.on('exit', r))
  const dirs = hierarchies().map((h) => `${h.mountPoint}/${CGROUP_PARENT}/stale-${process.pid}`)
  const orphan = spawn('sleep', ['1000'], { env: { QEMU_KUBE_TEST_POD_OWNER: String(dead.pid) }, stdio: 'ignore' })
  for (const [i, dir] of dirs.entries()) {
    mkdirSync(dir, { recursive: true })
    if (hierarchies()[i]!.key.includes('cpuset')) {
      for (const f of ['cpuset.cpus', 'cpuset.mems']) writeFileSync(`${dir}/${f}`, readFileSync(`${dir}/../${f}`))
    }
    writeFileSync(`${dir}/cgroup.procs`, String(orphan.pid))
  }
  const exited = new Promise((r) => orphan.on('exit', (_code, sig) => r(sig)))
  const removed = await cleanupStale()
  t.same(removed.sort(), dirs.sort(), 'the stale cgroups, in every hierarchy')
  t.equal(await exited, 'SIGKILL', 'their process killed')
  t.ok(existsSync(`/proc/${keep.pid}`), 'a live pod survives')
  t.ok(existsSync(keep.cgroups.v2!), 'and keeps its cgroups')
})
