// Real container pods (podman + runc) for root tests, the bench and the demo: the pod's launcher
// is the real virt-launcher from the self-contained launcher image (scripts/launcher-image.mjs),
// found by qemu-kube in host /proc as `virt-launcher ... -kubevirt.vm.uuid U -kubevirt.vm.name N`.
// The measured recipe and its traps: docs/PODS.md (and facts/podman-here.md).
//
//   const pod = await makePodmanPod({ uuid, name, token })
//     podman pod create --network none              (infra container: the pod's net, ipc, uts)
//     podman run -d --pod P --cgroupns=private -v SECRET:/var/run/kubevirt/qemu-kube:ro IMAGE
//         -kubevirt.vm.uuid U -kubevirt.vm.name N -ready-file F [extraArgs]
//     -> resolves once the launcher has written its ready file (it checked the token first)
//   await pod.destroy()                             pod removed, cgroup leftovers removed
//
// Bundled by esbuild for plain .mjs callers (bench/pod.mjs, bench/storm.mjs, scripts/demo.sh):
// REPO comes from import.meta.dirname, which those bundles define as this directory.
//
// Everything lives in one private store (STORE): its own containers.conf (runc, ulimits, file
// event log), root under /var/lib (the image stays cached between runs) and runroot under /run.
// Every pod carries the label qemu-kube-test.owner=<pid>:<start time> so that cleanupStale() can
// tell the leftovers of a dead test run from the pods of a running one.
import { execFile, execFileSync } from 'node:child_process'
import {
  chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, renameSync, rmdirSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs'
import { resolve } from 'node:path'
import { alive, hierarchies, NS_NAMES, type NsName } from './pod.ts'

export const REPO = resolve(import.meta.dirname, '../..')
export const STORE = {
  root: '/var/lib/qemu-kube-test/containers',
  runroot: '/run/qemu-kube-test/containers',
  conf: '/run/qemu-kube-test/containers.conf',
  tmp: '/run/qemu-kube-test/libpod',
  /** flock(1) lock: one image build at a time (tap runs two test files at once). */
  lock: '/run/qemu-kube-test/launcher-image.lock',
  /** Host side of the pods' Secret volumes (tmpfs): one private 0700 directory per pod. */
  secrets: '/run/qemu-kube-test/pod-secrets',
} as const
export const SECRET_DIR = '/var/run/kubevirt/qemu-kube'
export const SECRET_PATH = `${SECRET_DIR}/token`
/** The timestamped directory of a Kubernetes Secret volume (the `..data` symlink points to it). */
export const K8S_DATA_DIR = '..2026_12_01_00_00_00.1'
const OWNER_LABEL = 'qemu-kube-test.owner'
const READY_FILE = '/tmp/virt-launcher.ready'

// podman's defaults fail here: crun refuses the hybrid cgroup host, and root lacks
// CAP_SYS_RESOURCE for the 1048576 nofile default (facts/podman-here.md).
const CONTAINERS_CONF = `# written by test/helpers/podman.ts
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "${STORE.tmp}"
`

export type SecretLayout = 'k8s' | 'plain' | 'abs-symlink' | 'fifo' | 'missing'
export { NS_NAMES, type NsName }

export interface PodmanPodOptions {
  uuid: string
  name: string
  /** Laid out in the pod's Secret volume (layouts k8s and plain). */
  token?: string
  /** Where the launcher finds its token in the pod (its directory is the Secret volume); default SECRET_PATH. */
  secretPath?: string
  /** Default k8s: token -> ..data/token, ..data -> K8S_DATA_DIR/. */
  secretLayout?: SecretLayout
  /** abs-symlink only: where the symlink `token` points (an absolute path). */
  symlinkTarget?: string
  /** The launcher's required -qemu-uid (the VM's host uid); default 65534. Ignored when extraArgs has one. */
  qemuUid?: number
  /** Appended to the launcher's flags (e.g. -emulator PATH, -qemu-link PATH). */
  extraArgs?: readonly string[]
  /** Host devices for the launcher's container (`--device`), e.g. ['/dev/kvm']. */
  devices?: readonly string[]
  /** Extra binds `HOST:POD[:ro]` for fixtures the image lacks (bench only: a test should not need host paths in a pod). */
  volumes?: readonly string[]
  /** `--pid host`: the launcher in the host's pid namespace (its /proc is the host's). Bench only; a real pod has its own. */
  hostPid?: boolean
  /** Default: the current launcher image (built or found by launcherImage()). */
  image?: string
  /** kubelet-like cgroup paths, e.g. /kubepods/besteffort/podX (default podman's /libpod_parent). */
  cgroupParent?: string
  /** 'ready' (default): the launcher wrote its ready file. 'started': its process exists (for launchers expected to fail). */
  wait?: 'ready' | 'started'
}

export interface PodmanPod {
  /** The launcher (host pid; PID 1 of the container's pid namespace). */
  pid: number
  uuid: string
  name: string
  podName: string
  podId: string
  ctrId: string
  /** Namespace inodes of the launcher. */
  ns: Record<NsName, number>
  /** The launcher container's cgroups. v1: hierarchy as /proc/PID/cgroup names it ("cpu", "name=systemd") -> directory. */
  cgroups: { v1: Record<string, string>; v2: string | null }
  /** The pod's cgroup directories (parent of the containers'), in every hierarchy. */
  podCgroups: string[]
  /** The host directory bind-mounted at SECRET_DIR (root 0700; swap ..data there for a fresh token). */
  secretHostDir: string
  /** `podman stop`: graceful sends PID 1 SIGTERM, then SIGKILL after timeout seconds; not graceful: SIGKILL now. */
  stop(opts?: { graceful?: boolean; timeout?: number }): Promise<void>
  /**
   * `podman pod rm -f -t 0`, then podman's cgroup leftovers and the secret directory. Idempotent.
   * First SIGKILLs every process in the launcher container's cgroups that is outside its pid
   * namespace (a QEMU that joined them): with one there, the runtime takes 3-9 s per pod instead
   * of 0.3 s (docs/PODS.md). `leaveStrays` leaves them to the runtime, to test what it does.
   */
  remove(opts?: { leaveStrays?: boolean }): Promise<void>
  /** remove(), then throws if any of the pod's cgroup directories is still there. */
  destroy(opts?: { leaveStrays?: boolean }): Promise<void>
  /** remove(), synchronously (exit handlers, plain scripts); returns the cgroup directories left. */
  removeSync(): string[]
}

export interface Run { code: number; stdout: string; stderr: string }

/** podman on the private store. Never throws for a non-zero exit: see `code`. */
export function podman(args: readonly string[], timeoutMs = 120_000): Promise<Run> {
  ensureStore()
  return new Promise((res) => {
    execFile('podman', ['--root', STORE.root, '--runroot', STORE.runroot, ...args], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: STORE.conf }, timeout: timeoutMs, maxBuffer: 16 << 20,
    }, (err, stdout, stderr) => res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }))
  })
}

async function podmanOk(args: readonly string[]): Promise<string> {
  const r = await podman(args)
  if (r.code !== 0) throw new Error(`podman ${args.slice(0, 3).join(' ')}: exit ${r.code}: ${r.stderr.trim()}`)
  return r.stdout.trim()
}

let storeReady = false
function ensureStore(): void {
  if (storeReady) return
  for (const d of [STORE.root, STORE.runroot, STORE.tmp, STORE.secrets]) mkdirSync(d, { recursive: true, mode: 0o700 })
  // Same content every time: a rename, so a concurrent reader never sees half a file.
  const cur = existsSync(STORE.conf) ? readFileSync(STORE.conf, 'utf8') : ''
  if (cur !== CONTAINERS_CONF) {
    writeFileSync(`${STORE.conf}.${process.pid}`, CONTAINERS_CONF, { mode: 0o644 })
    renameSync(`${STORE.conf}.${process.pid}`, STORE.conf)
  }
  storeReady = true
}

/** Why real pods cannot run here, or null. */
export function podmanUnavailable(): string | null {
  if (process.getuid?.() !== 0) return `not root (uid ${process.getuid?.()})`
  for (const bin of ['/usr/bin/podman', '/usr/sbin/runc', '/usr/bin/catatonit', '/usr/bin/flock']) {
    if (!existsSync(bin)) return `no ${bin} (run scripts/setup.sh)`
  }
  if (!existsSync(`${REPO}/dist/virt-launcher.cjs`)) return `no ${REPO}/dist/virt-launcher.cjs (run npm run build)`
  return null
}

export interface LauncherImage { image: string; built: boolean; seconds: number; bytes: number }
let image: Promise<LauncherImage> | null = null

/** The launcher image of the current tree (once per process), built under the store's lock. */
export function launcherImage(): Promise<LauncherImage> {
  ensureStore()
  image ??= new Promise<LauncherImage>((res, rej) => {
    execFile('flock', [STORE.lock, process.execPath, `${REPO}/scripts/launcher-image.mjs`, '--root', STORE.root, '--runroot', STORE.runroot, '--repo', REPO], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: STORE.conf }, timeout: 300_000,
    }, (err, stdout, stderr) => (err ? rej(new Error(`launcher image: ${err.message} ${stderr.trim()}`)) : res(JSON.parse(stdout) as LauncherImage)))
  })
  return image
}

let seq = 0
const live = new Set<PodmanPod>()

/** A KubeVirt-shaped pod running the launcher; resolves once the launcher is ready (see wait). */
export async function makePodmanPod(opts: PodmanPodOptions): Promise<PodmanPod> {
  const layout = opts.secretLayout ?? 'k8s'
  const secretPath = opts.secretPath ?? SECRET_PATH
  const cut = secretPath.lastIndexOf('/')
  if (cut < 1 || secretPath.split('/').includes('..') || !/^[A-Za-z0-9/._-]+$/.test(secretPath)) throw new Error(`makePodmanPod: bad secretPath ${secretPath}`)
  if ((layout === 'k8s' || layout === 'plain') && opts.token === undefined) throw new Error(`makePodmanPod: layout ${layout} needs a token`)
  if (layout === 'abs-symlink' && !opts.symlinkTarget?.startsWith('/')) throw new Error('makePodmanPod: abs-symlink needs an absolute symlinkTarget')
  const img = opts.image ?? (await launcherImage()).image
  const owner = ownerTag()
  const podName = `qkt-${process.pid}-${seq++}-${opts.name}`.slice(0, 63)
  secretsTmpfs()
  const secretHostDir = mkdtempSync(`${STORE.secrets}/${process.pid}-`)
  chmodSync(secretHostDir, 0o700)
  layOutSecret(secretHostDir, secretPath.slice(cut + 1), layout, opts)

  let podId = ''
  let ctrId = ''
  let removed: Promise<void> | null = null
  const pod: PodmanPod = {
    pid: 0, uuid: opts.uuid, name: opts.name, podName, podId, ctrId, ns: {} as Record<NsName, number>, cgroups: { v1: {}, v2: null },
    podCgroups: [], secretHostDir,
    async stop({ graceful = true, timeout = 10 } = {}) {
      await podmanOk(graceful ? ['stop', '-t', String(timeout), ctrId] : ['kill', '-s', 'KILL', ctrId])
    },
    remove: ({ leaveStrays = false } = {}) => (removed ??= teardown(leaveStrays)),
    removeSync() {
      if (removed === null) {
        removed = Promise.resolve()
        removeNow(pod)
      }
      return leftDirs(pod)
    },
    async destroy(o = {}) {
      await pod.remove(o)
      const left = leftDirs(pod)
      if (left.length > 0) throw new Error(`pod ${podName}: cgroup directories left: ${left.join(', ')}`)
    },
  }
  async function teardown(leaveStrays: boolean): Promise<void> {
    live.delete(pod)
    if (!leaveStrays) await killStrays(pod)
    await podman(['pod', 'rm', '-f', '-t', '0', podName])
    removeCgroupTree(pod.podCgroups)
    rmSync(secretHostDir, { recursive: true, force: true })
  }
  live.add(pod)
  try {
    const labels = ['--label', `${OWNER_LABEL}=${owner}`]
    podId = pod.podId = await podmanOk(['pod', 'create', '--name', podName, '--network', 'none', '--hostname', opts.name, ...labels,
      ...(opts.cgroupParent ? ['--cgroup-parent', opts.cgroupParent] : [])])
    pod.podCgroups = hierarchies().map((h) => `${h.mountPoint}${opts.cgroupParent ?? '/libpod_parent'}/${podId}`)
    const pidFile = `${secretHostDir}.pid`
    ctrId = pod.ctrId = await podmanOk(['run', '-d', '--pod', podName, '--name', `${podName}-launcher`, '--cgroupns=private', ...labels,
      '--pidfile', pidFile, '-v', `${secretHostDir}:${secretPath.slice(0, cut)}:ro`, ...(opts.devices ?? []).flatMap((d) => ['--device', d]),
      ...(opts.volumes ?? []).flatMap((v) => ['-v', v]), ...(opts.hostPid ? ['--pid', 'host'] : []),
      img, '-kubevirt.vm.uuid', opts.uuid, '-kubevirt.vm.name', opts.name, '-ready-file', READY_FILE,
      ...(secretPath === SECRET_PATH ? [] : ['-secret-path', secretPath]),
      ...(flagIn(opts.extraArgs ?? [], 'qemu-uid') ? [] : ['-qemu-uid', String(opts.qemuUid ?? 65534)]), ...(opts.extraArgs ?? [])])
    pod.pid = Number(readFileSync(pidFile, 'utf8'))
    rmSync(pidFile, { force: true })
    await waitFor(pod, opts.wait ?? 'ready', readyFileOf(opts.extraArgs ?? []))
    pod.ns = Object.fromEntries(NS_NAMES.map((n) => [n, Number(/\[(\d+)\]/.exec(readlinkSync(`/proc/${pod.pid}/ns/${n}`))![1])])) as Record<NsName, number>
    pod.cgroups = cgroupsOf(pod.pid)
    return pod
  } catch (err) {
    await pod.remove().catch(() => {})
    throw err
  }
}

/** SIGKILLs the processes in the launcher container's cgroups that are not in its pid namespace; waits up to 2 s for them to leave. */
async function killStrays(pod: PodmanPod): Promise<void> {
  if (pod.cgroups.v2 === null || pod.ns.pid === undefined) return
  const strays = () => readPids(`${pod.cgroups.v2}/cgroup.procs`).filter((p) => {
    try {
      return readlinkSync(`/proc/${p}/ns/pid`) !== `pid:[${pod.ns.pid}]`
    } catch {
      return false // gone
    }
  })
  for (const end = Date.now() + 2000; Date.now() < end;) {
    const left = strays()
    if (left.length === 0) return
    for (const p of left) {
      try {
        process.kill(p, 'SIGKILL')
      } catch {
        // gone
      }
    }
    await sleep(10)
  }
}

function readPids(file: string): number[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number)
  } catch {
    return []
  }
}

/** The last value of a Go-style flag in args (-f V, --f V, -f=V), or undefined. */
function flagIn(args: readonly string[], flag: string): string | undefined {
  let v: string | undefined
  args.forEach((a, i) => {
    const m = new RegExp(`^--?${flag.replace(/[.-]/g, '\\$&')}(?:=(.*))?$`).exec(a)
    if (m) v = m[1] ?? args[i + 1]
  })
  return v
}

/** The ready file the launcher writes: a caller's own -ready-file wins over ours (it comes later). */
const readyFileOf = (extra: readonly string[]) => flagIn(extra, 'ready-file') ?? READY_FILE

async function waitFor(pod: PodmanPod, wait: 'ready' | 'started', readyFile: string): Promise<void> {
  for (const end = Date.now() + 15_000; ;) {
    // The shim has exec'd Node once the cmdline names the bundle; then the ready file, seen
    // through the launcher's own root.
    let cmdline = ''
    try {
      cmdline = readFileSync(`/proc/${pod.pid}/cmdline`, 'utf8')
    } catch {
      // gone (or not yet visible)
    }
    const started = cmdline.startsWith('virt-launcher\0') && cmdline.includes(`\0-kubevirt.vm.uuid\0${pod.uuid}\0`) && cmdline.includes('virt-launcher.cjs')
    if (started && (wait === 'started' || existsSync(`/proc/${pod.pid}/root${readyFile}`))) return
    // An empty cmdline alone is not an exit (it reads empty while the process has no mm, e.g.
    // mid-exec under load): gone or a zombie is.
    const gone = cmdline === '' && !running(pod.pid)
    if (gone || Date.now() > end) {
      const logs = await podman(['logs', pod.ctrId])
      throw new Error(`makePodmanPod ${pod.podName}: the launcher ${gone ? 'exited' : 'is not ready after 15 s'}: ${(logs.stdout + logs.stderr).trim()}`)
    }
    await sleep(5)
  }
}

function layOutSecret(dir: string, file: string, layout: SecretLayout, opts: PodmanPodOptions): void {
  switch (layout) {
    case 'k8s':
      // As the kubelet does: the file in a timestamped dir, two relative symlinks.
      mkdirSync(`${dir}/${K8S_DATA_DIR}`, { mode: 0o755 })
      writeFileSync(`${dir}/${K8S_DATA_DIR}/${file}`, opts.token!, { mode: 0o644 })
      symlinkSync(K8S_DATA_DIR, `${dir}/..data`)
      symlinkSync(`..data/${file}`, `${dir}/${file}`)
      break
    case 'plain':
      writeFileSync(`${dir}/${file}`, opts.token!, { mode: 0o644 })
      break
    case 'abs-symlink':
      symlinkSync(opts.symlinkTarget!, `${dir}/${file}`)
      break
    case 'fifo':
      execFileSync('mkfifo', ['-m', '644', `${dir}/${file}`])
      break
    case 'missing':
      break
  }
}

/**
 * A fresh token in a running pod's Secret volume (k8s layout), swapped in as the kubelet does:
 * a new timestamped directory, then `..data` renamed over atomically. The pod sees it at once.
 */
export function rotateToken(pod: PodmanPod, token: string, file = 'token'): void {
  const stamp = `..${new Date().toISOString().replace(/[-:]/g, '_').replace('T', '_').replace(/\..*$/, '')}.${process.hrtime.bigint()}`
  mkdirSync(`${pod.secretHostDir}/${stamp}`, { mode: 0o755 })
  writeFileSync(`${pod.secretHostDir}/${stamp}/${file}`, token, { mode: 0o644 })
  const old = readlinkSync(`${pod.secretHostDir}/..data`)
  symlinkSync(stamp, `${pod.secretHostDir}/..data_tmp`)
  renameSync(`${pod.secretHostDir}/..data_tmp`, `${pod.secretHostDir}/..data`)
  rmSync(`${pod.secretHostDir}/${old}`, { recursive: true, force: true })
}

/** The cgroup directories of a process, from the host's view of /proc/PID/cgroup. */
export function cgroupsOf(pid: number): { v1: Record<string, string>; v2: string | null } {
  const mounts = new Map(hierarchies().map((h) => [h.key, h.mountPoint]))
  const v1: Record<string, string> = {}
  let v2: string | null = null
  for (const line of readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line)
    const mp = m ? mounts.get(m[2]!) : undefined
    if (!m || mp === undefined) continue
    if (m[2] === '') v2 = `${mp}${m[3]}`
    else v1[m[2]!] = `${mp}${m[3]}`
  }
  return { v1, v2 }
}

/** rmdir each tree bottom-up (podman leaves the pod's directories and their conmon child behind). */
function removeCgroupTree(dirs: readonly string[]): void {
  const rm = (d: string): void => {
    let subs: string[] = []
    try {
      subs = readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => `${d}/${e.name}`)
    } catch {
      return
    }
    for (const s of subs) rm(s)
    try {
      rmdirSync(d)
    } catch {
      // busy: destroy() reports it
    }
  }
  for (const d of dirs) rm(d)
}

/** "<pid>:<start time>": a pid alone may be reused by the time cleanupStale() looks. */
function ownerTag(pid = process.pid): string {
  return `${pid}:${startTime(pid)}`
}

function startTime(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '?'
  } catch {
    return 'gone'
  }
}

/**
 * Removes the pods (and their cgroup leftovers and secret directories) of test runs that died
 * without their teardown. Pods of live owners are left alone. Returns the pod names removed.
 */
export async function cleanupStale(): Promise<string[]> {
  if (!existsSync(STORE.root)) return []
  const r = await podman(['pod', 'ps', '--filter', `label=${OWNER_LABEL}`, '--format', `{{.Name}} {{.Id}} {{index .Labels "${OWNER_LABEL}"}}`])
  const removed: string[] = []
  for (const line of r.stdout.split('\n').filter(Boolean)) {
    const [name = '', id = '', owner = ''] = line.split(' ')
    const pid = Number(owner.split(':')[0])
    if (Number.isInteger(pid) && pid > 0 && ownerTag(pid) === owner) continue
    await podman(['pod', 'rm', '-f', '-t', '0', name])
    removeCgroupTree(hierarchies().flatMap((h) => [`${h.mountPoint}/libpod_parent/${id}`]))
    removed.push(name)
  }
  for (const d of existsSync(STORE.secrets) ? readdirSync(STORE.secrets) : []) {
    const pid = Number(d.split(/[-.]/)[0])
    if (!alive(pid)) rmSync(`${STORE.secrets}/${d}`, { recursive: true, force: true })
  }
  return removed
}

/**
 * The kubelet puts Secret volumes on a tmpfs, and qemu-kube checks that (pod_secret_fs_types):
 * the pods' secret directories live on one tmpfs, mounted once per boot (under a lock: two test
 * processes must not stack two mounts, the second would hide the first's directories).
 */
function secretsTmpfs(): void {
  mkdirSync(STORE.secrets, { recursive: true, mode: 0o700 })
  execFileSync('flock', [`${STORE.secrets}.lock`, 'sh', '-c',
    'mountpoint -q "$1" || mount -t tmpfs -o mode=0700,size=16m,nosuid,nodev,noexec qemu-kube-test-secrets "$1"', 'sh', STORE.secrets],
  { stdio: 'ignore', timeout: 30_000 })
}

function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))
  } catch {
    return false
  }
}

const leftDirs = (pod: PodmanPod) => [...pod.podCgroups, ...Object.values(pod.cgroups.v1), ...(pod.cgroups.v2 ? [pod.cgroups.v2] : [])].filter((d) => existsSync(d))

/** The synchronous teardown: `podman pod rm -f -t 0`, cgroup leftovers, the secret directory. */
function removeNow(pod: PodmanPod): void {
  live.delete(pod)
  try {
    execFileSync('podman', ['--root', STORE.root, '--runroot', STORE.runroot, 'pod', 'rm', '-f', '-t', '0', pod.podName], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: STORE.conf }, stdio: 'ignore', timeout: 30_000,
    })
  } catch {
    // cleanupStale() of a later run finds it by its owner label
  }
  removeCgroupTree(pod.podCgroups)
  rmSync(pod.secretHostDir, { recursive: true, force: true })
}

// Last resort when a test process ends without removing its pods.
process.on('exit', () => {
  for (const pod of live) removeNow(pod)
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
