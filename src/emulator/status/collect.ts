// `qemu-kube status [VM]`: every VM launched on this node that still runs, with its pod and the
// pod's CPU and memory as kubelet would report them. The steps, in order:
//   1. the leases (leases.ts); a lease counts only while its pid has the recorded start time;
//   2. per live lease: QEMU (the lease's pid, or the enter helper's child with a pid namespace),
//      its uid and namespaces, its launcher, the pod's cgroup usage;
//   3. the start time again: if the pid died (and was maybe reused) while we read, the facts
//      may be another process's, so the entry is dropped rather than shown wrong.
// QEMU is in its pod's cgroup (the launch joined the launcher's), so its own cgroup file names
// the pod's; a QEMU found elsewhere (someone moved it) is reported as a problem.
import { readFileSync } from 'node:fs'
import type { Config } from '../config.ts'
import { QkError, errnoOf } from '../errors.ts'
import { podUsage } from './cgroup-usage.ts'
import { readLeases, type LeaseRecord, type SkippedLease } from './leases.ts'
import { namespacesOf, pidNsChildOf, realUidOf, startTimeOf, uptimeSeconds, type StatusNamespace } from './proc-facts.ts'
import { ID_RE } from '../../shared/constants.ts'

export interface StatusEntry {
  /** The host uid the lease is for (libvirt's per-VM DAC label). */
  uid: number
  vm: string
  name: string | null
  qemu: {
    /** QEMU's pid: the lease's, or with a pid namespace the enter helper's one child. */
    pid: number
    /**
     * The lease's pid when it is the enter helper above QEMU (pid namespace), else null.
     * Optional only for entries rebuilt from older JSON (agent-client.ts); collectStatus sets it.
     */
    helperPid?: number | null
    /** The lease's start time (of `helperPid` when there is one). */
    startTime: string
    /** QEMU's real uid as /proc shows it now; should equal `uid`. */
    uid: number | null
    namespaces: Record<StatusNamespace, string | null>
    uptimeSeconds: number | null
  }
  /** null for leases that did not record the launcher. */
  launcher: { pid: number; alive: boolean } | null
  /** The unified-hierarchy line of QEMU's cgroup file (relative to our cgroup namespace). */
  cgroup: string | null
  cpu: { timestamp: bigint; usageCoreNanoSeconds: bigint; source: 'v1' | 'v2'; dir: string } | null
  memory: { timestamp: bigint; workingSetBytes: bigint; source: 'v1' | 'v2'; dir: string } | null
  problems: string[]
}

export interface CollectOptions {
  /** Nanoseconds since the epoch (CRI timestamps). */
  now?: () => bigint
  /** A lease file that is not a lease: reported here, the others still listed. */
  onSkip?: (s: SkippedLease) => void
}

export type StatusConfig = Pick<Config, 'proc_root' | 'cgroup_root' | 'state_dir'>

/** Same shape as KUBEVIRT_VM_UUID / KUBEVIRT_VM_NAME (invocation.ts). */
const VM_FILTER = ID_RE

export function collectStatus(cfg: StatusConfig, vmFilter?: string, opts: CollectOptions = {}): StatusEntry[] {
  if (vmFilter !== undefined && !VM_FILTER.test(vmFilter)) {
    throw new QkError('ERR_USAGE', `the VM to show must be a uuid or name matching ${VM_FILTER.source}`, { what: 'status VM' })
  }
  const now = opts.now ?? (() => BigInt(Date.now()) * 1_000_000n)
  const leases = readLeases(cfg.state_dir, opts.onSkip).filter((l) => vmFilter === undefined || l.vm === vmFilter || l.name === vmFilter)
  let mountinfo: string | null = null
  const out: StatusEntry[] = []
  for (const lease of leases) {
    if (startTimeOf(cfg.proc_root, lease.pid) !== lease.startTime) continue // that VM has ended
    mountinfo ??= readMountinfo(cfg.proc_root)
    const entry = entryFor(cfg, lease, mountinfo, now)
    if (startTimeOf(cfg.proc_root, lease.pid) !== lease.startTime) continue // ended while we read
    out.push(entry)
  }
  return out
}

function entryFor(cfg: StatusConfig, lease: LeaseRecord, mountinfo: string, now: () => bigint): StatusEntry {
  const proc = cfg.proc_root
  const problems: string[] = []
  const cgroupText = readOr(`${proc}/${lease.pid}/cgroup`)
  let launcher: StatusEntry['launcher'] = null
  if (lease.launcher !== null) {
    const alive = startTimeOf(proc, lease.launcher.pid) === lease.launcher.startTime
    launcher = { pid: lease.launcher.pid, alive }
    if (!alive) problems.push(`the launcher (pid ${lease.launcher.pid}) has exited: QEMU outlives its pod`)
    else if (cgroupText !== null && readOr(`${proc}/${lease.launcher.pid}/cgroup`) !== cgroupText) {
      problems.push(`QEMU is not in its launcher's cgroups: usage below is QEMU's own`)
    }
  }
  let cpu: StatusEntry['cpu'] = null
  let memory: StatusEntry['memory'] = null
  if (cgroupText === null) problems.push(`cannot read ${proc}/${lease.pid}/cgroup`)
  else {
    const usage = podUsage(cgroupText, mountinfo, cfg.cgroup_root)
    const at = now()
    problems.push(...usage.problems)
    if (usage.cpu !== null) cpu = { timestamp: at, usageCoreNanoSeconds: usage.cpu.value, source: usage.cpu.source, dir: usage.cpu.dir }
    if (usage.memory !== null) memory = { timestamp: at, workingSetBytes: usage.memory.value, source: usage.memory.source, dir: usage.memory.dir }
  }
  const child = pidNsChildOf(proc, lease.pid)
  const qemuPid = child ?? lease.pid
  const uid = realUidOf(proc, qemuPid)
  if (uid !== null && uid !== lease.uid) problems.push(`QEMU runs as uid ${uid}, its lease is for uid ${lease.uid}`)
  return {
    uid: lease.uid,
    vm: lease.vm,
    name: lease.name,
    qemu: {
      pid: qemuPid,
      helperPid: child === null ? null : lease.pid,
      startTime: lease.startTime,
      uid,
      namespaces: namespacesOf(proc, qemuPid),
      uptimeSeconds: uptimeSeconds(proc, lease.startTime),
    },
    launcher,
    cgroup: cgroupText?.split('\n').find((l) => l.startsWith('0::'))?.slice(3) ?? null,
    cpu,
    memory,
    problems,
  }
}

function readMountinfo(procRoot: string): string {
  try {
    return readFileSync(`${procRoot}/self/mountinfo`, 'utf8')
  } catch (err) {
    throw new QkError('ERR_OS', `cannot read ${procRoot}/self/mountinfo: ${errnoOf(err) ?? 'error'}`, { path: `${procRoot}/self/mountinfo` })
  }
}

function readOr(path: string): string | null {
  try {
    return readFileSync(path, 'latin1')
  } catch {
    return null
  }
}
