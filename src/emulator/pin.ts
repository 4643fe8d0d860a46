// Stage: pin the target against pid reuse. A pid alone names whichever process holds it now;
// a pidfd names one process for as long as we hold it. We take the pidfd first, then prove it
// is the process we scanned (same start time), and re-prove it after every later read from
// /proc/PID, so nothing read there can come from a successor that recycled the pid.
import { readFileSync } from 'node:fs'
import { QkError } from './errors.ts'
import { readStat, type Target } from './target.ts'

/** The kernel calls this stage needs; tests of pure stages pass a fake. */
export interface PidfdOps {
  pidfdOpen(pid: number): number
  pidfdSignalZero(pidfd: number): number
}

export interface Pinned extends Target {
  readonly pidfd: number
  readonly procRoot: string
}

export function pin(target: Target, procRoot: string, ops: PidfdOps): Pinned {
  const pidfd = ops.pidfdOpen(target.pid)
  if (pidfd < 0) throw changed(target.pid, `pidfd_open failed (errno ${-pidfd})`)
  const pinned = { ...target, pidfd, procRoot }
  recheck(pinned, ops)
  return pinned
}

/** Call after every read from /proc/PID: the reads are valid only if this still passes. */
export function recheck(p: Pinned, ops: PidfdOps): void {
  const stat = readStat(p.procRoot, p.pid)
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X') throw changed(p.pid, 'it exited')
  if (stat.startTime !== p.startTime) throw changed(p.pid, `start time ${stat.startTime}, expected ${p.startTime}`)
  const err = ops.pidfdSignalZero(p.pidfd)
  if (err !== 0) throw changed(p.pid, `pidfd reports errno ${err}`)
}

function changed(pid: number, why: string): QkError {
  return new QkError('ERR_TARGET_CHANGED', `target pid ${pid} changed during the check: ${why}`, { pid })
}

/** Reads /proc/PID/<file> of the pinned process; the bytes count only because recheck passes after. */
export function readPinned(p: Pinned, file: string, ops: PidfdOps): string {
  let text: string
  try {
    text = readFileSync(`${p.procRoot}/${p.pid}/${file}`, 'utf8')
  } catch {
    throw changed(p.pid, `its ${file} cannot be read`)
  }
  recheck(p, ops)
  return text
}
