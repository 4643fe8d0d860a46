// The installer image, built for real from initcontainer/Dockerfile with podman, and the
// DaemonSet's pod template played as a Pod, in test/helpers/podman.ts's private store.
//
//   const img = await installerImage()        base (scripts/delivery-base-image.mjs) + the Dockerfile
//   const yaml = daemonSetAsPod(text, {...})   the template as a Pod; hostPaths and images swapped
//
// Caching: the base image is tagged by its recipe's hash (a fresh machine builds it, ~1 min); the
// installer is built with podman's layer cache at fixed paths (ROOT), so an unchanged tree is
// a cached build. The paths are compiled into the front, hence fixed: one delivery test file at
// a time holds LOCK (flock) while it uses ROOT.
import { execFile } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs'
import { REPO, STORE } from './podman.ts'

/** The node's directories in the tests (the image is built for them): under /var/tmp (root, sticky). */
export const ROOT = '/var/tmp/qemu-kube-delivery'
// Named as on a node (PREFIX's basename is qemu-kube): deploy/uninstall.yaml mounts its parent.
export const PREFIX = `${ROOT}/qemu-kube`
export const SYSCONFDIR = `${ROOT}/etc`
export const INSTALLER = 'localhost/qemu-kube-installer:delivery-test'
/** One user of ROOT at a time (and one image build at a time, with the launcher image's lock). */
export const LOCK = '/run/qemu-kube-test/delivery.lock'

export interface Ran { code: number; stdout: string; stderr: string; seconds: number }

export function sh(cmd: string, args: readonly string[], timeoutMs = 300_000): Promise<Ran> {
  const t0 = process.hrtime.bigint()
  return new Promise((res) => {
    execFile(cmd, args, {
      encoding: 'utf8', env: { PATH: '/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: STORE.conf }, timeout: timeoutMs, maxBuffer: 64 << 20,
    }, (err, stdout, stderr) => res({
      code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr, seconds: Number(process.hrtime.bigint() - t0) / 1e9,
    }))
  })
}

export const podman = (args: readonly string[], timeoutMs?: number) => sh('podman', ['--root', STORE.root, '--runroot', STORE.runroot, ...args], timeoutMs)

export interface InstallerImage { image: string; base: string; baseBuilt: boolean; baseSeconds: number; seconds: number; bytes: number }

/** The base (found or made under the store's image lock), then `podman build` of the Dockerfile. */
export async function installerImage(): Promise<InstallerImage> {
  const base = await sh('flock', [STORE.lock, process.execPath, `${REPO}/scripts/delivery-base-image.mjs`, '--root', STORE.root, '--runroot', STORE.runroot])
  if (base.code !== 0) throw new Error(`delivery base image: exit ${base.code}: ${base.stderr.trim()}`)
  const b = JSON.parse(base.stdout) as { image: string; built: boolean; seconds: number }
  // --network host: npm ci reaches the npm registry without podman's bridge (which would set
  // ip_forward and leave iptables chains: facts/podman-here.md).
  const built = await sh('flock', [STORE.lock, 'podman', '--root', STORE.root, '--runroot', STORE.runroot, 'build', '--pull=never', '--network', 'host',
    '--quiet', '-f', `${REPO}/initcontainer/Dockerfile`, '--ignorefile', `${REPO}/initcontainer/Dockerfile.dockerignore`,
    '--build-arg', `NODE_IMAGE=${b.image}`, '--build-arg', `PREFIX=${PREFIX}`, '--build-arg', `SYSCONFDIR=${SYSCONFDIR}`,
    '-t', INSTALLER, REPO], 600_000)
  if (built.code !== 0) throw new Error(`podman build: exit ${built.code}: ${built.stderr.trim().slice(-4000)}`)
  const size = await podman(['image', 'inspect', '--format', '{{.Size}}', INSTALLER])
  return { image: INSTALLER, base: b.image, baseBuilt: b.built, baseSeconds: b.seconds, seconds: built.seconds, bytes: Number(size.stdout.trim()) }
}

/**
 * The DaemonSet's pod template as a Pod (podman 4.3 has no DaemonSet kind): apiVersion v1,
 * kind Pod, the template's metadata and spec, its images, node paths and ConfigMap volumes
 * swapped as given, restartPolicy OnFailure (see below). Nothing else changes: the containers,
 * args, securityContexts and mounts are the manifest's.
 */
export function daemonSetAsPod(text: string, o: {
  name: string; images: Record<string, string>
  /** The node's paths (hostPaths, and the agent's command naming the installed front) -> the test's. */
  nodePaths: Record<string, string>
  /** ConfigMap volumes by name -> a host directory laid out as the kubelet does (podman's own are buggy: facts/podman-here.md). */
  configMaps?: Record<string, string>
}): string {
  const lines = text.split('\n')
  const at = lines.findIndex((l) => l === '  template:')
  if (at < 0 || !/^kind: DaemonSet$/m.test(text)) throw new Error('daemonSetAsPod: not a DaemonSet with spec.template')
  const body: string[] = []
  for (const l of lines.slice(at + 1)) {
    if (l.trim() !== '' && !l.startsWith('    ')) break
    body.push(l.slice(4))
  }
  let pod = `apiVersion: v1\nkind: Pod\n${body.join('\n')}\n`
  // The one podman-ism: podman 4.3 restarts an init container under the DaemonSet's implied
  // restartPolicy Always and then fails to remove it ("container state improper"); the kubelet
  // never restarts a succeeded init container, which OnFailure gives here.
  pod = pod.replace(/^spec:\n/m, 'spec:\n  restartPolicy: OnFailure\n')
  pod = pod.replace(/^metadata:\n/m, `metadata:\n  name: ${o.name}\n`)
  for (const [from, to] of Object.entries(o.images)) pod = pod.split(`image: ${from}`).join(`image: ${to}`)
  for (const [from, to] of Object.entries(o.nodePaths)) pod = pod.split(from).join(to)
  for (const [name, dir] of Object.entries(o.configMaps ?? {})) {
    const before = pod
    pod = pod.replace(new RegExp(`( +)configMap:\n +name: ${name}\n`), (_m, ind: string) => `${ind}hostPath:\n${ind}  path: ${dir}\n${ind}  type: Directory\n`)
    if (pod === before) throw new Error(`daemonSetAsPod: no configMap volume ${name}`)
  }
  return pod
}

/** A ConfigMap volume as the kubelet lays it out (FILE -> ..data/FILE, ..data -> ..TIMESTAMP/), swapped by one rename. */
export function writeConfigMapDir(dir: string, files: Record<string, string>, gen: number): void {
  const ts = `..2026_12_01_00_00_0${gen}.1`
  mkdirSync(`${dir}/${ts}`, { recursive: true, mode: 0o755 })
  chmodSync(dir, 0o755)
  for (const [name, text] of Object.entries(files)) {
    writeFileSync(`${dir}/${ts}/${name}`, text, { mode: 0o644 })
    if (!existsSync(`${dir}/${name}`)) symlinkSync(`..data/${name}`, `${dir}/${name}`)
  }
  symlinkSync(ts, `${dir}/..data_tmp`)
  renameSync(`${dir}/..data_tmp`, `${dir}/..data`)
}

/**
 * podman leaves the empty cgroup directories of a removed pod or container (facts/podman-here.md):
 * rmdir them bottom-up in every hierarchy. `names` are libpod_parent's children (a pod's id, or
 * libpod-<id> of a container outside a pod).
 */
export async function removeCgroupDirs(names: readonly string[]): Promise<void> {
  for (const name of names.filter((n) => /^[\w-]+$/.test(n))) {
    await sh('sh', ['-c', 'for d in /sys/fs/cgroup/*/libpod_parent/"$1"; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done; true', 'sh', name])
  }
}
