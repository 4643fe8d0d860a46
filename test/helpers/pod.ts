// Simulated pods made with `unshare`, kept only where a test needs what a container runtime
// (test/helpers/podman.ts, the real pods every other test uses) cannot give through the helper:
//   - test/root/pod.test.ts: tests of this helper itself;
//   - test/root/chain.test.ts, one case: a hostile "pod" whose process is not our launcher (the
//     launcher image refuses to start without a token) and whose secret is an absolute symlink;
//   - test/root/enter-mountns.test.ts: the enter helper driven by hand against a pod with its
//     own root and pid namespace, with fixtures at host paths inside it.
// Such a pod shares the host's root unless ownRoot, and its pid namespace unless pidNs.
//
// Simulated pods for root tests: a launcher process (`virt-launcher -kubevirt.vm.uuid U
// -kubevirt.vm.name N`) in fresh cgroups and in its own mount, net, ipc, uts and cgroup
// namespaces (optionally pid, and optionally its own root directory), with the token on a tmpfs
// that only the pod's mount namespace sees.
//
//   host bash: joins qemu-kube-test/<cgroupName> in every hierarchy (before unshare --cgroup, so
//              the pod's cgroup namespace is rooted there)
//   -> unshare --mount --propagation private --net --ipc --uts --cgroup [--pid --fork --mount-proc]
//   -> pod bash: reads the token from its stdin pipe (never a host file, argv or environment),
//              sets the hostname, [builds its root: binds /usr, a small /dev, /proc; pivot_root;
//              detaches the old root], mounts a tmpfs at the secret's directory, lays the secret out
//   -> exec -a virt-launcher LAUNCHER -kubevirt.vm.uuid U -kubevirt.vm.name N [extraArgs]
//
// Without a pid namespace the launcher keeps the pid we spawned; with one it is that pid's child.
// Either way `pid` is the process whose cmdline shows argv0 and the uuid, found by polling /proc.
// Every pod's launcher carries QEMU_KUBE_TEST_POD_OWNER=<our pid> in its environment, so that
// cleanupStale() can tell the leftovers of a dead test run from the pods of a running one.
import { spawn, type ChildProcess } from 'node:child_process'
import {
  chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync,
  statSync, symlinkSync, writeFileSync,
} from 'node:fs'
import { basename, dirname, isAbsolute, resolve } from 'node:path'
import type { Test } from 'tap'

export const REPO = resolve(import.meta.dirname, '../..')
/** The pod's long-lived process by default: native/ builds it (test/fixtures/pause.c). */
export const PAUSE = `${REPO}/dist/native/fixtures/pause`
export const DEFAULT_SECRET_PATH = '/var/run/kubevirt/qemu-kube/token'
export const CGROUP_PARENT = 'qemu-kube-test'
const OWNER_ENV = 'QEMU_KUBE_TEST_POD_OWNER'
/** The timestamped directory of a Kubernetes Secret volume (the `..data` symlink points to it). */
export const K8S_DATA_DIR = '..2026_11_22_14_00_00.123456789'

export type SecretLayout = 'plain' | 'k8s' | 'abs-symlink' | 'fifo' | 'devzero' | 'missing'
export type NsName = 'mnt' | 'net' | 'ipc' | 'uts' | 'cgroup' | 'pid'
export const NS_NAMES: readonly NsName[] = ['mnt', 'net', 'ipc', 'uts', 'cgroup', 'pid']

export interface PodOptions {
  uuid: string
  name: string
  /** Written inside the pod only (layouts plain and k8s). */
  token?: string
  secretPath?: string
  /** The pod's long-lived process; default PAUSE. Any binary (with ownRoot: its libraries must be under /usr). */
  launcherPath?: string
  launcherArgv0?: string
  extraArgs?: readonly string[]
  /** Give the pod its own root (pivot_root into a small tree; the host's /usr bound read-only). */
  ownRoot?: boolean
  /** ownRoot only: files copied into the pod's root before it starts, { podPath: hostPath }. */
  rootFiles?: Readonly<Record<string, string>>
  secretLayout?: SecretLayout
  /** abs-symlink only: where the symlink at secretPath points (an absolute path). */
  symlinkTarget?: string
  /** The leaf cgroup, qemu-kube-test/<cgroupName> in every hierarchy; default unique per pod. */
  cgroupName?: string
  /** Also a pid namespace (the launcher is its pid 1). */
  pidNs?: boolean
  /** Default: the VM name. */
  hostname?: string
}

export interface Pod {
  /** The launcher (host pid). */
  pid: number
  uuid: string
  name: string
  /** v1: hierarchy as /proc/self/cgroup names it ("cpu", "name=systemd", ...) -> directory. */
  cgroups: { v1: Record<string, string>; v2: string | null }
  /** Namespace inodes of the launcher. */
  ns: Record<NsName, number>
  /** ownRoot: the host directory that is the pod's "/" (the pod sees files placed there later). */
  rootDir: string | null
  /** The launcher's path inside the pod. */
  launcherInPod: string
  destroy(): Promise<void>
}

/**
 * Unless root, skips the whole file with a printed reason: `if (!requireRoot(t)) process.exit(0)`.
 * The skip is a test point of its own (not a `1..0` plan), so scripts/test.mjs counts it.
 */
export function requireRoot(t: Test, what = 'real namespaces, cgroups and mounts'): boolean {
  if (process.getuid?.() === 0) return true
  t.test(`needs root (${what})`, { skip: `not root (uid ${process.getuid?.()})` }, () => {})
  t.end()
  return false
}

// ---------------------------------------------------------------------------------------------
// cgroups

export interface Hierarchy {
  /** "cpu", "cpu,cpuacct", "name=systemd" for v1; "" for the v2 unified hierarchy. */
  key: string
  version: 1 | 2
  mountPoint: string
}

/** Every hierarchy /proc/self/cgroup lists, with the mount that holds it (from mountinfo). */
export function hierarchies(): Hierarchy[] {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').flatMap((line) => {
    const dash = line.indexOf(' - ')
    if (dash < 0) return []
    const [fstype = '', , superOpts = ''] = line.slice(dash + 3).split(' ')
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') return []
    const mountPoint = line.slice(0, dash).split(' ')[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
    return [{ fstype, opts: new Set(superOpts.split(',')), mountPoint }]
  })
  const out: Hierarchy[] = []
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const m = /^(\d+):([^:]*):/.exec(line)
    if (!m) continue
    const key = m[2]!
    const mount = m[1] === '0' && key === ''
      ? mounts.find((x) => x.fstype === 'cgroup2')
      : mounts.find((x) => x.fstype === 'cgroup' && key.split(',').every((c) => x.opts.has(c)))
    if (mount) out.push({ key, version: key === '' ? 2 : 1, mountPoint: mount.mountPoint })
  }
  return out
}

/** Every qemu-kube-test/<name> cgroup directory, in every hierarchy. */
export function listQemuKubeTestCgroups(): string[] {
  return hierarchies().flatMap((h) => {
    const parent = `${h.mountPoint}/${CGROUP_PARENT}`
    return existsSync(parent) ? readdirSync(parent, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => `${parent}/${d.name}`) : []
  })
}

function procsOf(dir: string): number[] {
  try {
    return readFileSync(`${dir}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number)
  } catch {
    return []
  }
}

/** The pid exists (kill(pid, 0)); a zombie counts. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

function ownerOf(pid: number): number | null {
  try {
    const env = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').find((e) => e.startsWith(`${OWNER_ENV}=`))
    return env ? Number(env.slice(OWNER_ENV.length + 1)) : null
  } catch {
    return null
  }
}

/**
 * Removes the cgroups (and kills the processes) that earlier, crashed runs left under
 * qemu-kube-test/. A pod whose owning test process is alive is left alone, and so is an empty
 * cgroup younger than a minute (a pod being made), so this is safe while other tests run.
 * Returns the directories removed.
 */
export async function cleanupStale(): Promise<string[]> {
  const dirs = listQemuKubeTestCgroups()
  const owned = (dir: string) => procsOf(dir).some((p) => { const o = ownerOf(p); return o !== null && alive(o) })
  const fresh = (dir: string) => procsOf(dir).length === 0 && Date.now() - statSync(dir).ctimeMs < 60_000
  const inUse = new Set(dirs.filter((d) => owned(d) || fresh(d)).map((d) => basename(d)))
  const stale = dirs.filter((d) => !inUse.has(basename(d)))
  for (const dir of stale) for (const p of procsOf(dir)) killQuietly(p, 'SIGKILL')
  const removed: string[] = []
  for (const dir of stale) if (await rmdirRetry(dir)) removed.push(dir)
  for (const h of hierarchies()) tryRmdir(`${h.mountPoint}/${CGROUP_PARENT}`)
  return removed
}

function makeCgroups(name: string): { v1: Record<string, string>; v2: string | null; all: string[] } {
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(name) || name.startsWith('.')) throw new Error(`makePod: bad cgroupName ${JSON.stringify(name)}`)
  const v1: Record<string, string> = {}
  let v2: string | null = null
  const all: string[] = []
  try {
    for (const h of hierarchies()) {
      const parent = `${h.mountPoint}/${CGROUP_PARENT}`
      const leaf = `${parent}/${name}`
      if (existsSync(leaf)) {
        if (procsOf(leaf).length > 0) throw new Error(`makePod: ${leaf} exists and has processes (a live pod, or run cleanupStale())`)
        rmdirSync(leaf)
      }
      mkdirRetry(parent, leaf)
      all.push(leaf)
      // cpuset: a new v1 cpuset cgroup starts with no cpus and no mems, and refuses tasks then.
      if (h.version === 1 && h.key.split(',').includes('cpuset')) {
        for (const [from, to] of [[h.mountPoint, parent], [parent, leaf]] as const) {
          for (const f of ['cpuset.cpus', 'cpuset.mems']) {
            if (readFileSync(`${to}/${f}`, 'utf8').trim() === '') writeFileSync(`${to}/${f}`, readFileSync(`${from}/${f}`))
          }
        }
      }
      if (h.version === 2) v2 = leaf
      else v1[h.key] = leaf
    }
  } catch (err) {
    for (const dir of all) tryRmdir(dir)
    throw err
  }
  return { v1, v2, all }
}

// Another pod's destroy() may remove the shared parent between our two mkdirs: retry.
function mkdirRetry(parent: string, leaf: string): void {
  for (let i = 0; ; i++) {
    mkdirSync(parent, { recursive: true })
    try {
      mkdirSync(leaf)
      return
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || i >= 5) throw err
    }
  }
}

function tryRmdir(dir: string): boolean {
  try {
    rmdirSync(dir)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT'
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** rmdir a cgroup, retrying while it is still busy (its last tasks are being torn down). */
async function rmdirRetry(dir: string, ms = 5000): Promise<boolean> {
  for (const end = Date.now() + ms; ;) {
    if (tryRmdir(dir)) return true
    if (Date.now() > end) return false
    await sleep(10)
  }
}

function killQuietly(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig)
  } catch {
    // already gone
  }
}

// ---------------------------------------------------------------------------------------------
// the pod's root directory (ownRoot)

// Top-level entries the pod takes from the host (bound read-only or mirrored as symlinks): the
// pod's "image" is the host's /usr, which keeps dynamic binaries (mount, umount, QEMU) working.
const FROM_HOST = ['usr', 'bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32']
const RESERVED = new Set([...FROM_HOST, 'dev', 'proc', 'tmp'])

function makeRoot(launcherPath: string, rootFiles: Readonly<Record<string, string>>): { dir: string; binds: string[]; launcher: string } {
  const dir = mkdtempSync('/tmp/qk-pod-root-')
  chmodSync(dir, 0o755)
  const binds: string[] = []
  for (const name of FROM_HOST) {
    let st
    try {
      st = lstatSync(`/${name}`)
    } catch {
      continue
    }
    if (st.isSymbolicLink()) symlinkSync(readlinkSync(`/${name}`), `${dir}/${name}`)
    else if (st.isDirectory()) {
      mkdirSync(`${dir}/${name}`)
      binds.push(name)
    }
  }
  for (const d of ['dev', 'proc', 'tmp', 'run', 'etc', 'var', 'launcher']) mkdirSync(`${dir}/${d}`, { mode: 0o755 })
  symlinkSync('../run', `${dir}/var/run`) // as in a Debian image, but relative: safe to follow from the host
  const launcher = `/launcher/${basename(launcherPath)}`
  copyFileSync(launcherPath, `${dir}${launcher}`)
  chmodSync(`${dir}${launcher}`, 0o755)
  for (const [podPath, hostPath] of Object.entries(rootFiles)) {
    const first = podPath.split('/')[1] ?? ''
    if (!isAbsolute(podPath) || podPath.split('/').includes('..') || RESERVED.has(first)) {
      throw new Error(`makePod: rootFiles path ${JSON.stringify(podPath)} must be absolute, without "..", outside /${first}`)
    }
    mkdirSync(dirname(`${dir}${podPath}`), { recursive: true })
    copyFileSync(hostPath, `${dir}${podPath}`)
  }
  return { dir, binds, launcher }
}

/** Removes a pod's root tree, after checking that no mount under it leaked to the host. */
function removeRoot(dir: string): void {
  const mounted = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
  if (mounted.length > 0) throw new Error(`pod root ${dir} has mounts on the host (${mounted.join(', ')}); not removing it`)
  rmSync(dir, { recursive: true, force: true })
}

// ---------------------------------------------------------------------------------------------
// the pod's processes

// Host side, argv: N cgroup.procs-files... command...
const JOIN_CGROUPS = `set -eu
n=$1; shift
for ((i = 0; i < n; i++)); do echo $$ > "$1"; shift; done
exec "$@"`

// Pod side, in the new namespaces. Settings come in QK_* variables (unset before the exec);
// argv: launcher argv0 args...
const IN_POD = `set -euo pipefail
token=$(cat)  # the pipe from the test: never in a host file, an argv or an environment
exec </dev/null
printf '%s' "$QK_HOSTNAME" > /proc/sys/kernel/hostname
ip link set lo up 2>/dev/null || true
if [[ -n $QK_ROOT ]]; then
  r=$QK_ROOT
  mount --bind "$r" "$r"  # pivot_root needs a mount point
  for d in $QK_ROOT_BINDS; do mount -o bind,ro "/$d" "$r/$d"; done
  mount -t tmpfs -o mode=755,size=64k tmpfs "$r/dev"
  for d in null zero full random urandom tty; do touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
  mount -t proc proc "$r/proc"
  mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
  cd "$r"
  mkdir .oldroot
  pivot_root . .oldroot
  cd /
  umount -l /.oldroot
  rmdir /.oldroot
fi
d=$(dirname "$QK_SECRET_PATH")
b=$(basename "$QK_SECRET_PATH")
mkdir -p "$d"
mount -t tmpfs -o mode=755,size=1m tmpfs "$d"  # only this mount namespace sees it
case $QK_LAYOUT in
  plain) printf '%s' "$token" > "$d/$b" ;;
  k8s)
    mkdir "$d/$QK_K8S_DIR"
    printf '%s' "$token" > "$d/$QK_K8S_DIR/$b"
    ln -s "$QK_K8S_DIR" "$d/..data"
    ln -s "..data/$b" "$d/$b" ;;
  abs-symlink) ln -s "$QK_SYMLINK_TARGET" "$d/$b" ;;
  fifo) mkfifo -m 644 "$d/$b" ;;
  devzero) touch "$d/$b"; mount --bind /dev/zero "$d/$b" ;;
  missing) ;;
  *) echo "unknown secret layout $QK_LAYOUT" >&2; exit 64 ;;
esac
mount -o remount,ro "$d"  # as a Secret volume
unset token "\${!QK_@}"
launcher=$1 argv0=$2
shift 2
exec -a "$argv0" "$launcher" "$@"`

let seq = 0
const live = new Set<{ procs: () => number[]; dirs: string[]; root: () => string | null }>()

/** Starts a pod and resolves once its launcher runs (cmdline = argv0 + the uuid). */
export async function makePod(opts: PodOptions): Promise<Pod> {
  const layout = opts.secretLayout ?? 'plain'
  const secretPath = opts.secretPath ?? DEFAULT_SECRET_PATH
  const argv0 = opts.launcherArgv0 ?? 'virt-launcher'
  const launcherPath = opts.launcherPath ?? PAUSE
  if (!isAbsolute(secretPath) || secretPath.split('/').includes('..') || secretPath.endsWith('/')) throw new Error(`makePod: bad secretPath ${secretPath}`)
  if (!existsSync(launcherPath)) throw new Error(`makePod: no launcher at ${launcherPath} (run npm run build)`)
  if ((layout === 'plain' || layout === 'k8s') && opts.token === undefined) throw new Error(`makePod: layout ${layout} needs a token`)
  if (layout === 'abs-symlink' && !opts.symlinkTarget?.startsWith('/')) throw new Error('makePod: abs-symlink needs an absolute symlinkTarget')
  if (opts.rootFiles && !opts.ownRoot) throw new Error('makePod: rootFiles needs ownRoot')

  const cgroups = makeCgroups(opts.cgroupName ?? `pod-${process.pid}-${seq++}`)
  let root: ReturnType<typeof makeRoot> | null = null
  let child: ChildProcess | null = null
  const procs = () => procsOf(cgroups.v2 ?? cgroups.all[0]!)
  const entry = { procs, dirs: cgroups.all, root: () => root?.dir ?? null }
  live.add(entry)
  let destroyed: Promise<void> | null = null
  const destroy = () => (destroyed ??= teardown())

  async function teardown(): Promise<void> {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.ref() // or the loop may end before its exit event
      const exited = new Promise((r) => child!.once('exit', r))
      // The launcher first (pid 1 of a pid namespace takes SIGTERM only with a handler), then
      // whatever else runs in the pod's cgroups (e.g. a QEMU that joined them).
      for (const p of [...launcher, child.pid!]) killQuietly(p, 'SIGTERM')
      if (await Promise.race([exited.then(() => true), sleep(2000).then(() => false)]) === false) killQuietly(child.pid!, 'SIGKILL')
      await exited
    }
    for (const end = Date.now() + 5000; procs().length > 0 && Date.now() < end;) {
      for (const p of procs()) killQuietly(p, 'SIGKILL')
      await sleep(10)
    }
    const stuck = []
    for (const dir of cgroups.all) if (!(await rmdirRetry(dir))) stuck.push(dir)
    for (const dir of cgroups.all) tryRmdir(dirname(dir)) // the shared parent, once empty
    live.delete(entry)
    if (root) removeRoot(root.dir)
    if (stuck.length > 0) throw new Error(`pod ${opts.name}: cgroups still busy: ${stuck.join(', ')}`)
  }

  const launcher: number[] = []
  try {
    root = opts.ownRoot ? makeRoot(launcherPath, opts.rootFiles ?? {}) : null
    const launcherInPod = root ? root.launcher : launcherPath
    const unshare = ['unshare', '--mount', '--propagation', 'private', '--net', '--ipc', '--uts', '--cgroup',
      ...(opts.pidNs ? ['--pid', '--fork', '--kill-child', '--mount-proc'] : [])]
    const args = ['-kubevirt.vm.uuid', opts.uuid, '-kubevirt.vm.name', opts.name, ...(opts.extraArgs ?? [])]
    const c = spawn('bash', ['--norc', '--noprofile', '-c', JOIN_CGROUPS, 'qk-pod', String(cgroups.all.length), ...cgroups.all.map((d) => `${d}/cgroup.procs`),
      ...unshare, '--', 'bash', '--norc', '--noprofile', '-c', IN_POD, 'qk-pod', launcherInPod, argv0, ...args], {
      stdio: ['pipe', 'ignore', 'pipe'],
      env: {
        PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
        [OWNER_ENV]: String(process.pid),
        QK_HOSTNAME: opts.hostname ?? opts.name,
        QK_ROOT: root?.dir ?? '',
        QK_ROOT_BINDS: root?.binds.join(' ') ?? '',
        QK_SECRET_PATH: secretPath,
        QK_LAYOUT: layout,
        QK_K8S_DIR: K8S_DATA_DIR,
        QK_SYMLINK_TARGET: opts.symlinkTarget ?? '',
      },
    })
    child = c
    let stderr = ''
    c.stderr!.on('data', (d: Buffer) => { if (stderr.length < 16384) stderr += d.toString() })
    c.stdin!.on('error', () => {}) // the pod may die before reading: reported below
    c.stdin!.end(opts.token ?? '')
    const pid = await findLauncher(c, argv0, opts.uuid, () => stderr)
    launcher.push(pid)
    // A live pod must not keep the test's event loop alive; destroy() takes it back.
    c.unref()
    ;(c.stderr as unknown as { unref?: () => void }).unref?.()
    const ns = Object.fromEntries(NS_NAMES.map((n) => [n, Number(/\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/${n}`))![1])])) as Record<NsName, number>
    return { pid, uuid: opts.uuid, name: opts.name, cgroups: { v1: cgroups.v1, v2: cgroups.v2 }, ns, rootDir: root?.dir ?? null, launcherInPod, destroy }
  } catch (err) {
    await destroy().catch(() => {})
    throw err
  }
}

/** Polls the spawned process and its descendants until one is the launcher. */
async function findLauncher(c: ChildProcess, argv0: string, uuid: string, stderr: () => string): Promise<number> {
  const isLauncher = (pid: number) => {
    try {
      // argv0 and the uuid flag, not necessarily adjacent: dist/virt-launcher execs
      // `node --no-warnings virt-launcher.cjs -kubevirt.vm.uuid U ...` under argv0.
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      return argv[0] === argv0 && argv.some((a, i) => a === '-kubevirt.vm.uuid' && argv[i + 1] === uuid)
    } catch {
      return false
    }
  }
  const children = (pid: number) => {
    try {
      return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number)
    } catch {
      return []
    }
  }
  for (const end = Date.now() + 10_000; ;) {
    if (c.exitCode !== null || c.signalCode !== null) {
      throw new Error(`makePod: the pod exited (${c.exitCode ?? c.signalCode}) before its launcher ran: ${stderr().trim()}`)
    }
    // With a pid namespace: pid -> unshare's child -> (bash, then) the launcher.
    const found = [c.pid!, ...children(c.pid!)].find(isLauncher)
    if (found !== undefined) return found
    if (Date.now() > end) throw new Error(`makePod: no ${argv0} process after 10 s: ${stderr().trim()}`)
    await sleep(2)
  }
}

// Last resort when a test process ends without destroying its pods (a crash between makePod and
// the teardown, a forgotten destroy): kill what runs in their cgroups and remove, synchronously.
process.on('exit', () => {
  const wait = new Int32Array(new SharedArrayBuffer(4))
  for (const { procs, dirs, root } of live) {
    for (let i = 0; i < 100 && procs().length > 0; i++) {
      for (const p of procs()) killQuietly(p, 'SIGKILL')
      Atomics.wait(wait, 0, 0, 10)
    }
    for (const d of dirs) tryRmdir(d)
    for (const d of dirs) tryRmdir(dirname(d))
    const dir = root()
    if (dir) {
      try {
        removeRoot(dir)
      } catch {
        // left for the operator: removeRoot refuses a tree with mounts
      }
    }
  }
})
