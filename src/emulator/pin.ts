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
  /** For the pidfds of claimants that were not chosen. */
  close(fd: number): number
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

/**
 * Runs one read of the pinned process's files, then rechecks the pin. A failed read is first
 * put to the pin: if the process died or its pid was reused, that is what is reported
 * (ERR_TARGET_CHANGED), not the read's own error (a pod that dies mid-read is no bug and no
 * missing secret).
 */
export function whilePinned<T>(p: Pinned, ops: PidfdOps, read: () => T): T {
  let value: T
  try {
    value = read()
  } catch (err) {
    recheck(p, ops)
    throw err
  }
  recheck(p, ops)
  return value
}

/** Reads /proc/PID/<file> of the pinned process; the bytes count only because recheck passes after. */
export function readPinned(p: Pinned, file: string, ops: PidfdOps): string {
  return whilePinned(p, ops, () => {
    try {
      return readFileSync(`${p.procRoot}/${p.pid}/${file}`, 'utf8')
    } catch {
      throw changed(p.pid, `its ${file} cannot be read`)
    }
  })
}
