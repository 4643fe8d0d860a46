// libvirtd in a privileged podman container, with qemu-kube delivered into it by the installer
// image through a shared volume (the emptyDir case), for test/e2e/libvirt-container.test.ts.
//
//   const img = await libvirtdImage()              scripts/libvirt-image.mjs (staged from dpkg -L)
//   await installWith(installer, {...})             one run of the init container (install-entrypoint.sh)
//   const lv = await runLibvirtContainer({...})     virtlogd + libvirtd inside; resolves when virsh answers
//   await lv.virsh(['list'])                        virsh inside the container
//   await lv.remove()                               container gone, its cgroup leftovers removed
//
// The container has its own mount namespace (so /run/libvirt, /var/lib/libvirt and the domain
// logs are its own), its own pid namespace unless hostPid, the host's /proc at /host/proc (the
// configured proc_root), and a caller-chosen list of binds (the shared PREFIX volume, the
// sysconfdir, the agent's socket directory). PID 1 is podman's catatonit (--init): QEMU's
// -daemonize reparents the capability-probe QEMUs to PID 1, and libvirtd as PID 1 never reaps
// them (libvirt then waits 40 s per probe, "Failed to terminate process ... with SIGKILL").
// Everything is in test/helpers/podman.ts's private store and carries its owner label.
//
// Traps (measured): a podman named volume (the emptyDir here) is mounted nosuid unless the bind
// says `:suid`, and install-entrypoint.sh rightly refuses a nosuid target (exit 78); podman
// refuses --init with --pid host (there conmon, a child subreaper, reaps the probe QEMUs); the
// image has no grep/ps: use bash builtins and cat in sh().
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { podman, REPO, STORE, type Run } from './podman.ts'
import { removeCgroupDirs } from './delivery.ts'
// For the test file, which must not name the e2e or transport helpers (scripts/test.mjs would
// run it once per transport; its transports are its own subtests).
export { allocateUid, nsInode, qemuKubeLines, status, until } from './e2e.ts'
export { startAgent, type RunningAgent } from './transport.ts'

export const HOST_PROC = '/host/proc'
export const OWNER_LABEL = 'qemu-kube-test.owner'

export interface LibvirtdImage { image: string; built: boolean; seconds: number; bytes: number; packages: number }

/** Why the libvirtd image cannot be staged here, or null (it is made from the host's packages). */
export function libvirtdImageUnavailable(): string | null {
  for (const f of ['/usr/sbin/libvirtd', '/usr/sbin/virtlogd', '/usr/bin/virsh', '/usr/bin/qemu-system-x86_64', '/usr/bin/dpkg-query']) {
    if (!existsSync(f)) return `no ${f} on the host (run scripts/setup.sh): the libvirtd image is staged from the host's packages`
  }
  return null
}

/** The libvirtd image (found by its tag, or staged: ~4 s), under the store's image lock. */
export function libvirtdImage(): Promise<LibvirtdImage> {
  return new Promise((res, rej) => {
    execFile('flock', [STORE.lock, process.execPath, `${REPO}/scripts/libvirt-image.mjs`, '--root', STORE.root, '--runroot', STORE.runroot], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: STORE.conf }, timeout: 300_000, maxBuffer: 16 << 20,
    }, (err, stdout, stderr) => (err ? rej(new Error(`libvirtd image: ${err.message} ${stderr.trim()}`)) : res(JSON.parse(stdout) as LibvirtdImage)))
  })
}

/** "<pid>:<start time>" (as podman.ts labels its pods): a pid alone may be reused. */
const ownerTag = (pid = process.pid) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return `${pid}:${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]}`
  } catch {
    return 'gone'
  }
}

/** This file's container names (and the volume's), PID the test process: what cleanupStaleContainers() may remove. */
const OURS = /^qkt-(\d+)-(?:libvirtd|libvirtd-hostpid|install-host|install-vol|prefix)$/

/**
 * Removes the libvirt containers, installer containers and PREFIX volumes that runs which died
 * without their teardown left (their owner label, or the volume name's pid, is not a live
 * process with that start time). Returns the names removed.
 */
export async function cleanupStaleContainers(): Promise<string[]> {
  const removed: string[] = []
  const ps = await podman(['ps', '-a', '--no-trunc', '--filter', `label=${OWNER_LABEL}`, '--format', `{{.Names}} {{.ID}} {{index .Labels "${OWNER_LABEL}"}}`])
  for (const line of ps.stdout.split('\n').filter(Boolean)) {
    const [name = '', id = '', owner = ''] = line.split(' ')
    if (!OURS.test(name) || ownerTag(Number(owner.split(':')[0])) === owner) continue
    await podman(['rm', '-f', '-t', '0', name])
    await removeCgroupDirs([`libpod-${id}`])
    removed.push(name)
  }
  const vols = await podman(['volume', 'ls', '--format', '{{.Name}}'])
  for (const name of vols.stdout.split('\n').filter(Boolean)) {
    const pid = OURS.exec(name)?.[1]
    if (pid === undefined || !name.endsWith('-prefix') || existsSync(`/proc/${pid}`)) continue
    await podman(['volume', 'rm', '-f', name])
    removed.push(name)
  }
  return removed
}

/** One run of the installer image's entrypoint (the init container), removed after; its exit code and log. */
export async function installWith(image: string, o: { name: string; binds: readonly string[]; args: readonly string[]; env?: Record<string, string> }): Promise<Run> {
  // As deploy/daemonset.yaml's init container: root, not privileged, all capabilities dropped
  // but CHOWN, no privilege escalation, a read-only root filesystem.
  const r = await podman(['run', '--name', o.name, '--label', `${OWNER_LABEL}=${ownerTag()}`, '--network', 'none', '--cap-drop', 'ALL', '--cap-add', 'CHOWN',
    '--security-opt', 'no-new-privileges', '--read-only', ...Object.entries(o.env ?? {}).flatMap(([k, v]) => ['-e', `${k}=${v}`]),
    ...o.binds.flatMap((b) => ['-v', b]), image, ...o.args], 120_000)
  const id = (await podman(['inspect', '--format', '{{.Id}}', o.name])).stdout.trim()
  await podman(['rm', '-f', '-t', '0', o.name])
  if (/^[0-9a-f]{64}$/.test(id)) await removeCgroupDirs([`libpod-${id}`])
  return r
}

export interface LibvirtContainer {
  name: string
  id: string
  /** libvirtd's host pid. */
  libvirtdPid: number
  virsh(args: readonly string[], input?: string): Promise<Run>
  /** A command inside the container (bash -c SCRIPT ARGS...), stdin from input. */
  sh(script: string, args?: readonly string[], input?: string): Promise<Run>
  /** libvirt's log of a domain, inside the container. */
  domainLog(name: string): Promise<string>
  remove(): Promise<void>
}

export interface LibvirtContainerOptions {
  name: string
  image: string
  /** `HOST:CONTAINER[:OPTS]` binds, in order (a bind inside an earlier one comes after it). */
  binds: readonly string[]
  /** --pid host: libvirtd (and so the front) in the host's pid namespace. */
  hostPid?: boolean
}

/** Runs virtlogd and libvirtd (foreground, under catatonit) in a privileged container; resolves once `virsh version` answers. */
export async function runLibvirtContainer(o: LibvirtContainerOptions): Promise<LibvirtContainer> {
  // --init only with a pid namespace of its own (podman refuses it with --pid host, where
  // conmon, a child subreaper, reaps the probe QEMUs).
  const run = await podman(['run', '-d', ...(o.hostPid ? [] : ['--init']), '--name', o.name, '--label', `${OWNER_LABEL}=${ownerTag()}`, '--privileged', '--network', 'none',
    ...(o.hostPid ? ['--pid', 'host'] : []), '-v', `/proc:${HOST_PROC}`, ...o.binds.flatMap((b) => ['-v', b]), o.image,
    'bash', '-c', 'virtlogd -d && exec libvirtd'])
  if (run.code !== 0) throw new Error(`podman run ${o.name}: exit ${run.code}: ${run.stderr.trim()}`)
  const id = run.stdout.trim()
  let removed: Promise<void> | null = null
  const exec = (args: readonly string[], input?: string): Promise<Run> => new Promise((res) => {
    const child = execFile('podman', ['--root', STORE.root, '--runroot', STORE.runroot, 'exec', ...(input === undefined ? [] : ['-i']), o.name, ...args], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: STORE.conf }, timeout: 120_000, maxBuffer: 16 << 20,
    }, (err, stdout, stderr) => res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }))
    if (input !== undefined) child.stdin!.end(input)
  })
  const lv: LibvirtContainer = {
    name: o.name,
    id,
    libvirtdPid: 0,
    virsh: (args, input) => exec(['env', 'LC_ALL=C', 'virsh', '-c', 'qemu:///system', ...args], input),
    sh: (script, args = [], input) => exec(['bash', '-c', script, 'bash', ...args], input),
    async domainLog(name) {
      return (await exec(['cat', `/var/log/libvirt/qemu/${name}.log`])).stdout
    },
    remove: () => (removed ??= (async () => {
      await podman(['rm', '-f', '-t', '5', o.name])
      await removeCgroupDirs([`libpod-${id}`])
    })()),
  }
  try {
    for (const end = Date.now() + 60_000; ;) {
      const v = await lv.virsh(['version'])
      if (v.code === 0) break
      if (Date.now() > end) throw new Error(`libvirtd in ${o.name} does not answer: ${v.stderr.trim()} ${(await podman(['logs', o.name])).stderr.slice(-2000)}`)
      await new Promise((r) => setTimeout(r, 200))
    }
    const pid = (await podman(['inspect', '--format', '{{.State.Pid}}', o.name])).stdout.trim()
    // State.Pid is catatonit (libvirtd is its child), or bash exec'd into libvirtd.
    lv.libvirtdPid = o.hostPid ? Number(pid) : Number(readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ')[0])
    return lv
  } catch (err) {
    await lv.remove()
    throw err
  }
}

/**
 * Host pids of the processes whose argv names guest=NAME: QEMU, and (qemu: true) only QEMU.
 * The other one is the enter helper's pod-link watcher (native/podlink.c), forked before the
 * exec with the helper's argv, which stays until QEMU exits.
 */
export function guestPids(name: string, o: { qemu?: boolean } = {}): number[] {
  const out: number[] = []
  for (const d of readdirProc()) {
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0')
      if (argv.includes(`guest=${name},debug-threads=on`) && (!o.qemu || /\/qemu-system-x86_64$/.test(argv[0]!))) out.push(d)
    } catch {
      // gone
    }
  }
  return out
}

const readdirProc = () => readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number)
