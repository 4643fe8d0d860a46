// Stage: find the pod's launcher in the host's /proc and pin it. Exactly one process must have
// argv[0] basename == launcher_name, carry this VM's uuid and name as whole arguments, and hold
// the launch token in its mount namespace. Every other process on the node is hostile input: it
// may vanish mid-scan, lie in its argv or claim our VM.
//
// Order, per claimant (a process whose argv[0] and flags match on a first, unpinned read):
//   1. pidfd_open: from here on the pidfd names one process;
//   2. read stat (start time) and the whole cmdline again, and match them again;
//   3. recheck through the pidfd that the same process (same start time) still lives, so the
//      cmdline that matched and the start time pinned both belong to the pidfd's process;
//   4. the caller's proof (the token in its mount namespace), itself read through the pin.
// A claimant that cannot prove itself does not count, so a stranger naming itself virt-launcher
// cannot block a start; two that can are refused as ambiguous. A read that fails on a live
// claimant is an error, never a silent miss.
//
// The scan is the hot loop of a launch (a node runs 10k+ processes): one preallocated buffer,
// one open/pread/close per process, and argv[0] compared as bytes before any string is made.
// Only processes that pass the scan cost more.
//
// The agent may pass `candidates` (its proc index, proc-index.ts) instead: pids whose argv[0]
// matched as far as the index knows. They are read, pinned and proven exactly as scanned ones,
// so the index can only cost time (a stale pid) or, if it missed one, an ambiguity; without
// it, /proc is scanned as before.
import { closeSync, constants, type Dir, openSync, opendirSync, readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { QkError, type ErrorCode } from './errors.ts'
import { recheck, type PidfdOps, type Pinned } from './pin.ts'
import { parseStat, splitCmdline } from './procfs.ts'
import { sys } from './sys.ts'

export interface TargetQuery {
  procRoot: string
  launcherName: string
  uuid: string
  name: string
}

export interface Target {
  pid: number
  startTime: string
}

/** Throws (a QkError) unless the pinned claimant proves it is the VM's pod. */
export type Proof = (p: Pinned) => void

/** What a claimant that is not the pod fails its proof with; anything else is an error. */
const NOT_PROVEN: ReadonlySet<ErrorCode> = new Set([
  'ERR_SECRET_MISSING', 'ERR_SECRET_ESCAPE', 'ERR_SECRET_NOT_REGULAR', 'ERR_SECRET_TOO_BIG', 'ERR_SECRET_MISMATCH', 'ERR_SECRET_UNSAFE',
])

const UUID_FLAG = 'kubevirt.vm.uuid'
const NAME_FLAG = 'kubevirt.vm.name'
const BUF_SIZE = 4096
// libc's openat, unlike Node's fs, does not add O_CLOEXEC (asm-generic value, x86_64 and arm64).
const O_CLOEXEC = 0o2000000
const SCAN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | O_CLOEXEC
const CMDLINE = Buffer.from('/cmdline\0')
/** pid_max is at most 2^22: seven digits. */
const MAX_PID_DIGITS = 7
const ESRCH = 3

export function findTarget(q: TargetQuery, ops: PidfdOps = sys(), prove: Proof = () => {}, candidates?: Iterable<number>): Pinned {
  const claimants: Pinned[] = []
  const changed: QkError[] = []
  try {
    for (const pid of candidates ?? scanLaunchers(q.procRoot, Buffer.from(q.launcherName))) {
      // A cmdline that cannot be read here is read again once pinned: a live process whose
      // cmdline stays unreadable is an error, not a miss.
      const argv = readCmdline(`${q.procRoot}/${pid}/cmdline`)
      if (argv !== undefined && !isLauncher(argv, q)) continue
      const p = pinClaimant(pid, q, ops, argv !== undefined, changed)
      if (p !== undefined) claimants.push(p)
    }
    const target = choose(claimants, changed, q, prove)
    claimants.splice(claimants.indexOf(target), 1)
    return target
  } finally {
    for (const c of claimants) ops.close(c.pidfd)
  }
}

/**
 * Steps 1-3 above. Undefined when the process is no claimant; a process that claimed the VM
 * on the first read but not on the pinned one (it exited, or its pid now names another
 * process) is noted in `changed`.
 */
function pinClaimant(pid: number, q: TargetQuery, ops: PidfdOps, claimed: boolean, changed: QkError[]): Pinned | undefined {
  const gone = (why: string) => {
    if (claimed) changed.push(new QkError('ERR_TARGET_CHANGED', `target pid ${pid} changed during the check: ${why}`, { pid }))
    return undefined
  }
  const pidfd = ops.pidfdOpen(pid)
  if (pidfd === -ESRCH) return gone('it exited')
  if (pidfd < 0) throw new QkError('ERR_OS', `pidfd_open(${pid}) failed: errno ${-pidfd}`, { pid })
  let keep = false
  try {
    const stat = readStat(q.procRoot, pid)
    const argv = readCmdline(`${q.procRoot}/${pid}/cmdline`)
    // Whatever was read is no claim once the pidfd's process has died.
    if (ops.pidfdSignalZero(pidfd) !== 0) return gone('it exited')
    if (stat === undefined || argv === undefined) {
      throw new QkError('ERR_OS', `cannot read ${q.procRoot}/${pid}/stat or cmdline of a live claimant`, { pid })
    }
    if (stat.state === 'Z' || stat.state === 'X') return gone('it exited')
    if (!isLauncher(argv, q)) return gone(`its command line no longer claims VM ${q.uuid}`)
    const p: Pinned = { pid, startTime: stat.startTime, pidfd, procRoot: q.procRoot }
    // The start time was read after pidfd_open; unchanged now, with the pidfd alive, the
    // cmdline read between belongs to the pidfd's process.
    recheck(p, ops)
    keep = true
    return p
  } finally {
    if (!keep) ops.close(pidfd)
  }
}

function choose(claimants: readonly Pinned[], changed: readonly QkError[], q: TargetQuery, prove: Proof): Pinned {
  const proven: Pinned[] = []
  const failed: QkError[] = []
  for (const c of claimants) {
    try {
      prove(c)
      proven.push(c)
    } catch (err) {
      if (!(err instanceof QkError) || !NOT_PROVEN.has(err.code)) throw err
      failed.push(err)
    }
  }
  if (proven.length === 1) return proven[0]!
  if (proven.length > 1) {
    const pids = proven.map((m) => m.pid)
    throw new QkError('ERR_TARGET_AMBIGUOUS',
      `expected 1 ${q.launcherName} process for VM ${q.uuid} holding its token, got ${proven.length}: pids ${pids.join(', ')}`,
      { pids })
  }
  // None proved itself. A claimant that changed under us may have been the pod: say so (retry).
  if (changed.length > 0) throw changed[0]!
  if (claimants.length === 0) {
    throw new QkError('ERR_TARGET_NOT_FOUND',
      `expected 1 ${q.launcherName} process with -${UUID_FLAG} ${q.uuid} -${NAME_FLAG} ${q.name}, got 0`,
      { procRoot: q.procRoot })
  }
  // The only claimant says why it is not the pod (e.g. the Secret was rotated).
  if (failed.length === 1) throw failed[0]!
  const pids = claimants.map((m) => m.pid)
  throw new QkError('ERR_TARGET_NOT_FOUND',
    `expected 1 ${q.launcherName} process for VM ${q.uuid} holding its token, got 0 of ${claimants.length} claimants: pids ${pids.join(', ')}`,
    { pids })
}

function isLauncher(argv: readonly string[], q: TargetQuery): boolean {
  return argv.length > 0 && basename(argv[0]!) === q.launcherName && !argv[0]!.endsWith('/') && carriesVm(argv, q.uuid, q.name)
}

/** Pids whose argv[0] basename equals `launcher`; the only per-process work for the whole node. */
export function* scanLaunchers(procRoot: string, launcher: Buffer): Generator<number> {
  // Three libc calls per process through koffi (Node's fs adds ~0.4 µs of validation and
  // request set-up per process), relative to one fd for the root (shorter path walks), over a
  // streamed directory (readdirSync sorts every name first).
  const io = sys()
  const buf = Buffer.allocUnsafe(BUF_SIZE)
  const path = Buffer.allocUnsafe(MAX_PID_DIGITS + CMDLINE.length)
  const dirfd = openSync(procRoot, constants.O_RDONLY | constants.O_DIRECTORY)
  let dir: Dir | undefined
  try {
    dir = opendirSync(procRoot, { bufferSize: 256 })
    for (let entry = dir.readSync(); entry !== null; entry = dir.readSync()) {
      const name = entry.name
      const len = name.length
      if (len > MAX_PID_DIGITS || name.charCodeAt(0) === 0x30) continue
      let i = 0
      for (; i < len; i++) {
        const c = name.charCodeAt(i)
        if (c < 0x30 || c > 0x39) break
        path[i] = c
      }
      if (i !== len || len === 0) continue // not a process directory
      for (let j = 0; j < CMDLINE.length; j++) path[len + j] = CMDLINE[j]!
      const fd = io.openatZ(dirfd, path, SCAN_FLAGS)
      if (fd < 0) continue // exited since readdir
      const n = io.read(fd, buf, BUF_SIZE)
      io.close(fd)
      // A read error (not EOF) makes it a candidate: the pinned read decides, or fails loudly.
      if (n < 0 || (n > 0 && argv0BasenameIs(buf, n, launcher))) yield Number(name)
    }
  } finally {
    dir?.closeSync()
    closeSync(dirfd)
  }
}

/** A cut-off argv[0] (no NUL in the buffer) is a candidate: the whole cmdline is read next. */
function argv0BasenameIs(buf: Buffer, n: number, name: Buffer): boolean {
  let end = 0
  while (end < n && buf[end] !== 0) end++
  if (end === 0) return false
  if (end === n && n === buf.length) return true
  let start = end
  while (start > 0 && buf[start - 1] !== 0x2f) start--
  if (end - start !== name.length) return false
  for (let i = 0; i < name.length; i++) if (buf[start + i] !== name[i]) return false
  return true
}

function readCmdline(path: string): string[] | undefined {
  try {
    return splitCmdline(readFileSync(path, 'latin1'))
  } catch {
    return undefined
  }
}

export function readStat(procRoot: string, pid: number) {
  try {
    return parseStat(readFileSync(`${procRoot}/${pid}/stat`, 'latin1'))
  } catch {
    return undefined
  }
}

/**
 * Go `flag` style: `-f v`, `--f v`, `-f=v`, `--f=v`; whole arguments only. Each flag must appear
 * exactly once: a process that names two uuids is not trusted to mean either.
 */
export function carriesVm(argv: readonly string[], uuid: string, name: string): boolean {
  const seen = new Map<string, string[]>()
  for (let i = 1; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--') break
    const m = /^--?([^-=][^=]*)(?:=(.*))?$/s.exec(arg)
    if (m === null) continue
    const flag = m[1]!
    if (flag !== UUID_FLAG && flag !== NAME_FLAG) continue
    let value = m[2]
    if (value === undefined) value = argv[++i]
    if (value === undefined) return false
    seen.set(flag, [...(seen.get(flag) ?? []), value])
  }
  const u = seen.get(UUID_FLAG)
  const n = seen.get(NAME_FLAG)
  return u?.length === 1 && n?.length === 1 && u[0] === uuid && n[0] === name
}
