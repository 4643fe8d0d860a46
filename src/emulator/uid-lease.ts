// Stage: one live VM per host uid. The token issuer allocates each VM a uid from vm_uid_range
// and the token binds it (token.ts), but an issuer's mistake, or two tokens minted for one uid,
// must not let two live VMs share an identity: with one uid, either QEMU could read, ptrace and
// signal the other. So the node keeps a lease per uid in the state dir:
//
//   STATE_DIR/uids/UID       {"vm": uuid, "name": N, "pid": P, "startTime": T,
//                             "launcher": {"pid": L, "startTime": LT}}
//
// P is the consumer (replay.ts): the process that becomes QEMU, this one standalone, the front
// when the agent serves (the setuid chain execs in place, so P becomes QEMU; with the pid namespace,
// the enter helper stays as QEMU's parent under P), and the lease holds exactly as long as that
// process lives (pid + start time, so a recycled pid does not keep it). A launch for uid U is
// refused while U's lease names another VM whose process is alive. A restart of the same VM may
// take the lease over.
//
// Check and write happen under an exclusive flock on STATE_DIR/uids/UID.lock, one lock per uid:
// a caller may stop its own setuid chain (SIGSTOP) while it holds the lock, and then blocks only
// launches for its own uid. The lock is taken non-blocking and retried for a bounded time
// (waitMs); the agent passes 0 and refuses at once, because its retries would sleep on the one
// thread that serves every other launch. The launcher (the pod's pinned process) and the name
// are for `qemu-kube status`; leases written before they existed stay valid without them.
import { closeSync, constants, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { QkError, errnoOf } from './errors.ts'
import type { Vm } from './invocation.ts'
import { ensureStateDir, type Consumer } from './replay.ts'
import { sys } from './sys.ts'

export interface Lease {
  vm: string
  name?: string
  pid: number
  startTime: string
  launcher?: Consumer
}

export interface LeaseOps {
  /** flock(fd, LOCK_EX|LOCK_NB): true when taken. */
  tryLock(fd: number): boolean
  sleep(ms: number): void
  /** Field 22 of PROC/PID/stat, or null when there is no such process. */
  startTimeOf(pid: number): string | null
}

export interface HeldLease {
  /** Write this launch's lease (call once every other check has passed). */
  commit(launcher: Consumer): void
  release(): void
}

export const LOCK_WAIT_MS = 2000

export function acquireUidLease(stateDir: string, uid: number, vm: Vm, self: Consumer, ops: LeaseOps, waitMs = LOCK_WAIT_MS): HeldLease {
  const dir = `${stateDir}/uids`
  ensureStateDir(stateDir)
  ensureStateDir(dir)
  const lockFd = openSync(`${dir}/${uid}.lock`, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600)
  try {
    for (let waited = 0; !ops.tryLock(lockFd); waited += 20) {
      if (waitMs === 0) {
        throw new QkError('ERR_UID_IN_USE', `another launch for uid ${uid} holds its lease lock; the agent does not wait for it`, { uid })
      }
      if (waited >= waitMs) {
        throw new QkError('ERR_UID_IN_USE', `another launch for uid ${uid} has held its lease for over ${waitMs} ms`, { uid })
      }
      ops.sleep(20)
    }
    checkUidFree(stateDir, uid, vm.uuid, ops)
  } catch (e) {
    closeSync(lockFd) // closing the fd releases the flock
    throw e
  }
  return {
    commit(launcher) {
      const temp = `${dir}/${uid}.${self.pid}.tmp`
      const lease: Required<Lease> = { vm: vm.uuid, name: vm.name, pid: self.pid, startTime: self.startTime, launcher: { pid: launcher.pid, startTime: launcher.startTime } }
      writeFileSync(temp, JSON.stringify(lease), { mode: 0o600, flag: 'w' })
      renameSync(temp, `${dir}/${uid}`)
    },
    release() {
      closeSync(lockFd)
    },
  }
}

/** For `explain`: would this uid's lease refuse the launch? Takes no lock, writes nothing. */
export function checkUidFree(stateDir: string, uid: number, vm: string, ops: Pick<LeaseOps, 'startTimeOf'>): void {
  const holder = readLease(`${stateDir}/uids/${uid}`)
  if (holder !== null && holder.vm !== vm && ops.startTimeOf(holder.pid) === holder.startTime) {
    throw new QkError('ERR_UID_IN_USE', `uid ${uid} belongs to VM ${holder.vm} while its QEMU (pid ${holder.pid}) lives; this launch is for VM ${vm}`,
      { uid, holder: holder.vm, holderPid: holder.pid })
  }
}

export function readLease(path: string): Lease | null {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return null
    throw new QkError('ERR_OS', `cannot read the uid lease ${path}: ${errnoOf(err) ?? 'error'}`, { path })
  }
  try {
    const l = JSON.parse(text) as Partial<Lease>
    const launcherOk = l.launcher === undefined || (Number.isSafeInteger(l.launcher.pid) && typeof l.launcher.startTime === 'string')
    if (typeof l.vm === 'string' && Number.isSafeInteger(l.pid) && typeof l.startTime === 'string'
      && (l.name === undefined || typeof l.name === 'string') && launcherOk) return l as Lease
  } catch {
    // fall through
  }
  // Only root writes here (tmp + rename); a torn file means a bug or tampering by root.
  throw new QkError('ERR_INTERNAL', `the uid lease ${path} is not a lease record`, { path })
}

/** The real kernel calls; tests pass their own. */
export function leaseOps(procRoot: string): LeaseOps {
  const LOCK_EX = 2
  const LOCK_NB = 4
  const pause = new Int32Array(new SharedArrayBuffer(4))
  return {
    tryLock: (fd) => sys().flock(fd, LOCK_EX | LOCK_NB) === 0,
    sleep: (ms) => void Atomics.wait(pause, 0, 0, ms),
    startTimeOf(pid) {
      try {
        const stat = readFileSync(`${procRoot}/${pid}/stat`, 'latin1')
        return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null
      } catch {
        return null
      }
    },
  }
}

/** This process as the consumer (standalone: it becomes QEMU). */
export function selfConsumer(procRoot: string): Consumer {
  const startTime = leaseOps(procRoot).startTimeOf(process.pid)
  if (startTime === null) throw new QkError('ERR_OS', `cannot read ${procRoot}/${process.pid}/stat`)
  return { pid: process.pid, startTime }
}
