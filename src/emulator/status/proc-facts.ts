// What /proc says about one process: its start time (with the pid, its identity), real uid,
// namespaces and uptime. procRoot is a parameter so units run against fake trees.
import { readFileSync, readlinkSync } from 'node:fs'
import { parseStat } from '../procfs.ts'

/** USER_HZ: /proc/PID/stat counts in these ticks on every Linux ABI we run on. */
export const CLK_TCK = 100
export const STATUS_NAMESPACES = ['mnt', 'net', 'ipc', 'uts', 'cgroup', 'pid', 'user'] as const
export type StatusNamespace = (typeof STATUS_NAMESPACES)[number]

/** Field 22 of PROC/PID/stat, or null when there is no such process. */
export function startTimeOf(procRoot: string, pid: number): string | null {
  try {
    return parseStat(readFileSync(`${procRoot}/${pid}/stat`, 'latin1'))?.startTime ?? null
  } catch {
    return null
  }
}

/** The real uid (first of the four on the Uid: line), or null when unreadable. */
export function realUidOf(procRoot: string, pid: number): number | null {
  try {
    const m = /\nUid:\t(\d+)\t/.exec(readFileSync(`${procRoot}/${pid}/status`, 'latin1'))
    return m === null ? null : Number(m[1])
  } catch {
    return null
  }
}

/** Namespace inode numbers from PROC/PID/ns/NAME links ("net:[4026531840]"); null when unreadable. */
export function namespacesOf(procRoot: string, pid: number): Record<StatusNamespace, string | null> {
  const out = {} as Record<StatusNamespace, string | null>
  for (const ns of STATUS_NAMESPACES) {
    try {
      const m = /^[a-z_]+:\[(\d+)\]$/.exec(readlinkSync(`${procRoot}/${pid}/ns/${ns}`))
      out[ns] = m === null ? null : m[1]!
    } catch {
      out[ns] = null
    }
  }
  return out
}

/** Seconds the process has run: PROC/uptime (since boot) minus its start time (ticks since boot). */
export function uptimeSeconds(procRoot: string, startTime: string): number | null {
  try {
    const up = /^(\d+)(?:\.(\d+))?\s/.exec(readFileSync(`${procRoot}/uptime`, 'latin1'))
    if (up === null) return null
    const upTicks = BigInt(up[1]!) * BigInt(CLK_TCK) + BigInt(((up[2] ?? '') + '00').slice(0, 2))
    const ran = upTicks - BigInt(startTime)
    return ran > 0n ? Number(ran / BigInt(CLK_TCK)) : 0
  } catch {
    return null
  }
}

/**
 * With namespaces = [..., 'pid'] the lease's process is the enter helper, which stays in the
 * host's pid namespace as QEMU's transparent parent; QEMU is its one child in the new namespace
 * (pid_for_children differs from pid). Returns that child's pid, or null when pid is QEMU itself.
 */
export function pidNsChildOf(procRoot: string, pid: number): number | null {
  try {
    if (readlinkSync(`${procRoot}/${pid}/ns/pid_for_children`) === readlinkSync(`${procRoot}/${pid}/ns/pid`)) return null
    const kids = readFileSync(`${procRoot}/${pid}/task/${pid}/children`, 'latin1').trim().split(' ').filter((k) => k !== '')
    return kids.length === 1 && /^[1-9]\d{0,9}$/.test(kids[0]!) ? Number(kids[0]) : null
  } catch {
    return null
  }
}
