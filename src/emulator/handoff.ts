// The hand-off: everything after the decision. Join the pod's cgroups here (Node can write
// cgroup.procs; it moves all our threads), then exec the single-threaded enter helper, which
// does what a multi-threaded process cannot: setns into the mount namespace, drop root, exec
// QEMU in place. Node marked fds 0..15 close-on-exec when it started; the recorded fds and the
// pidfd must survive this exec, so their FD_CLOEXEC is cleared first (the helper re-asserts
// exactly this list for QEMU and closes everything else).
import { joinAll } from './cgroup.ts'
import type { Caller } from './caller.ts'
import type { CarryPlan } from './carry.ts'
import type { Config } from './config.ts'
import { ENV_NAME, ENV_UUID } from './invocation.ts'
import { ENTER_PATH } from './paths.ts'
import type { Sys } from './sys.ts'
import type { Authorized } from './verify.ts'

export interface EnterPlan {
  pidfd: number
  pid: number
  namespaces: readonly string[]
  runAs: Caller
  keepFds: readonly number[]
  exec: { from: 'pod' | 'host'; path: string }
  /** own: QEMU gets its own mount namespace, derived from the pod's (docs/CHAIN.md). */
  mnt: 'own' | 'pod'
  carry: CarryPlan
  devices: readonly string[]
  /** The pod launcher's socket (QEMU's pidfd goes there, so the pod can stop QEMU); '' none. */
  podLink: string
  argv: readonly string[]
  env: readonly string[]
}

const NO_CARRY: CarryPlan = { dirs: [], roots: [] }

const BASE_ENV = ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL=C']

export function launchPlan(a: Authorized, keepFds: readonly number[], cfg: Pick<Config, 'qemu_mount_namespace' | 'qemu_devices' | 'pod_link_socket'>): EnterPlan {
  // Without the pod's mount namespace QEMU stays in the host's: nothing to derive from.
  const own = cfg.qemu_mount_namespace === 'own' && a.namespaces.includes('mnt')
  return {
    pidfd: a.target.pidfd,
    pid: a.target.pid,
    namespaces: a.namespaces,
    runAs: a.runAs,
    keepFds,
    exec: { from: a.qemu.from, path: a.qemu.path },
    mnt: own ? 'own' : 'pod',
    carry: own ? a.carry : NO_CARRY,
    devices: own ? cfg.qemu_devices : [],
    podLink: a.namespaces.includes('mnt') ? cfg.pod_link_socket : '',
    argv: [a.qemu.path, ...a.qemu.argv],
    // QEMU may read its VM's identity; the token never goes further than this process.
    env: [...BASE_ENV, `${ENV_UUID}=${a.vm.uuid}`, `${ENV_NAME}=${a.vm.name}`],
  }
}

/** The probe needs no pod: no namespaces, the host's probe QEMU, run as the caller. */
export function probePlan(caller: Caller, probeBinary: string, argv: readonly string[], keepFds: readonly number[]): EnterPlan {
  return {
    pidfd: -1,
    pid: 0,
    namespaces: [],
    runAs: caller,
    keepFds,
    exec: { from: 'host', path: probeBinary },
    mnt: 'pod',
    carry: NO_CARRY,
    devices: [],
    podLink: '',
    argv: [probeBinary, ...argv],
    env: BASE_ENV,
  }
}

export function enterArgv(p: EnterPlan): string[] {
  return [
    ENTER_PATH,
    `--pidfd=${p.pidfd}`,
    `--pid=${p.pid}`,
    `--ns=${p.namespaces.join(',')}`,
    `--uid=${p.runAs.uid}`,
    `--gid=${p.runAs.gid}`,
    `--groups=${p.runAs.groups.join(',')}`,
    `--fds=${p.keepFds.join(',')}`,
    `--mnt=${p.mnt}`,
    `--carry=${p.carry.dirs.join(',')}`,
    `--carry-roots=${p.carry.roots.join(',')}`,
    `--devices=${p.devices.join(',')}`,
    `--pod-link=${p.podLink}`,
    p.exec.from === 'pod' ? `--exec-pod=${p.exec.path}` : `--exec-host=${p.exec.path}`,
    '--',
    ...p.argv,
  ]
}

export function joinCgroups(a: Authorized): void {
  joinAll(a.cgroups, process.pid)
}

export function handOff(p: EnterPlan, os: Sys): never {
  for (const fd of p.keepFds) os.clearCloexec(fd)
  if (p.pidfd >= 0) os.clearCloexec(p.pidfd)
  return os.execve(ENTER_PATH, enterArgv(p), p.env)
}
