// Stage: the pod's cgroups. QEMU must be accounted and limited where the pod is, so before the
// hand-off we move ourselves (and so the QEMU we become) into every cgroup the target is in:
// each v1 hierarchy listed in /proc/PID/cgroup and the v2 unified one, mapped to a directory
// through our own /proc/self/mountinfo. Paths in /proc/PID/cgroup are relative to *our* cgroup
// namespace root, and a mount may expose a sub-tree (mountinfo field 4), so both are accounted.
// Joining happens before the enter helper enters the pod's cgroup namespace, so inside the pod
// QEMU's /proc/self/cgroup reads "/" like every other process there.
import { readFileSync, writeFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { QkError, errnoOf } from './errors.ts'

export interface CgroupJoin {
  /** "cpu,cpuacct", "name=systemd", or "" for the v2 unified hierarchy. */
  hierarchy: string
  dir: string
}

interface CgroupMount {
  version: 1 | 2
  controllers: Set<string>
  root: string
  mountPoint: string
}

export function planJoins(targetCgroups: string, mountinfo: string, cgroupRoot: string): CgroupJoin[] {
  const mounts = parseMounts(mountinfo, cgroupRoot)
  const joins: CgroupJoin[] = []
  for (const line of targetCgroups.split('\n')) {
    if (line === '') continue
    const m = /^(\d+):([^:]*):(.*)$/.exec(line)
    if (m === null) throw bad(`unparsable line in the target's cgroup file: ${JSON.stringify(line.slice(0, 80))}`)
    const hierarchy = m[2]!
    const path = m[3]!
    const controllers = new Set(hierarchy.split(',').filter((c) => c !== ''))
    const mount = m[1] === '0' && hierarchy === ''
      ? mounts.find((x) => x.version === 2)
      : mounts.find((x) => x.version === 1 && sameSet(x.controllers, controllers))
    if (mount === undefined) throw bad(`no mount under ${cgroupRoot} for hierarchy "${hierarchy || 'unified'}"`)
    joins.push({ hierarchy, dir: dirFor(mount, path, hierarchy) })
  }
  return joins
}

export function joinAll(joins: readonly CgroupJoin[], pid: number): void {
  for (const j of joins) {
    try {
      writeFileSync(`${j.dir}/cgroup.procs`, `${pid}\n`)
    } catch (err) {
      throw new QkError('ERR_CGROUP_JOIN', `cannot join ${j.dir}: ${errnoOf(err) ?? 'error'}`, { dir: j.dir, hierarchy: j.hierarchy })
    }
  }
}

function dirFor(mount: CgroupMount, path: string, hierarchy: string): string {
  // The target's own cgroup names are chosen by whoever manages the pod: refuse anything odd.
  if (!path.startsWith('/') || path.includes('/../') || path.endsWith('/..') || path.includes(' (deleted)')) {
    throw bad(`unusable cgroup path for "${hierarchy || 'unified'}": ${JSON.stringify(path.slice(0, 200))}`)
  }
  const root = mount.root === '/' ? '' : mount.root
  if (path !== root && !path.startsWith(`${root}/`) && root !== '') {
    throw bad(`cgroup ${path} is outside the mounted sub-tree ${mount.root} at ${mount.mountPoint}`)
  }
  const rest = path.slice(root.length)
  return rest === '/' || rest === '' ? mount.mountPoint : `${mount.mountPoint}${rest}`
}

function parseMounts(mountinfo: string, cgroupRoot: string): CgroupMount[] {
  const mounts: CgroupMount[] = []
  for (const line of mountinfo.split('\n')) {
    const dash = line.indexOf(' - ')
    if (dash < 0) continue
    const pre = line.slice(0, dash).split(' ')
    const [fstype, , superOpts = ''] = line.slice(dash + 3).split(' ')
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue
    const root = unescape(pre[3] ?? '')
    const mountPoint = unescape(pre[4] ?? '')
    if (mountPoint !== cgroupRoot && !mountPoint.startsWith(`${cgroupRoot}/`)) continue
    const controllers = new Set(superOpts.split(',').filter(isController))
    mounts.push({ version: fstype === 'cgroup2' ? 2 : 1, controllers, root, mountPoint })
  }
  return mounts
}

const MOUNT_OPTIONS = new Set(['rw', 'ro', 'xattr', 'noprefix', 'clone_children', 'cpuset_v2_mode', 'nsdelegate',
  'favordynmods', 'memory_localevents', 'memory_recursiveprot', 'memory_hugetlb_accounting'])

/** v1 super options list the controllers (and `name=` for named hierarchies) among mount options. */
function isController(opt: string): boolean {
  return opt.startsWith('name=') || (!MOUNT_OPTIONS.has(opt) && !opt.includes('='))
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

function sameSet(a: Set<string>, b: Set<string>): boolean {
  if (a.size !== b.size) return false
  for (const x of a) if (!b.has(x)) return false
  return true
}

function bad(msg: string): QkError {
  return new QkError('ERR_CGROUP_JOIN', msg)
}

/**
 * Moving a process between cgroups takes the kernel's global cgroup_threadgroup_rwsem for
 * writing, and the first writer after a quiet spell waits for an RCU grace period (8-14 ms
 * measured here with cgroup v1) before it may proceed; writers within the next grace period do
 * not wait. So a launch starts one harmless write at once, off the main thread: our own pid into
 * the cgroup we are already in (a move to where we are), and the real joins that follow the
 * verification find the lock already warm. The caller must await it before joinAll: a late
 * warm-up write would move us back out of the pod's cgroup. Failures are ignored; the joins
 * then just pay the wait themselves.
 */
export function warmCgroupLock(ownProcs: string | undefined): Promise<void> {
  if (ownProcs === undefined) return Promise.resolve()
  return writeFile(ownProcs, `${process.pid}\n`).catch(() => undefined)
}

/**
 * The warm-up's target: our own cgroup.procs in the first hierarchy a launch joins; undefined
 * when it cannot be found (the joins then pay the wait). The agent finds it once per config.
 */
export function ownCgroupProcs(procRoot: string, cgroupRoot: string): string | undefined {
  try {
    const own = planJoins(readFileSync(`${procRoot}/self/cgroup`, 'utf8'), readFileSync(`${procRoot}/self/mountinfo`, 'utf8'), cgroupRoot)[0]
    return own === undefined ? undefined : `${own.dir}/cgroup.procs`
  } catch {
    return undefined
  }
}
