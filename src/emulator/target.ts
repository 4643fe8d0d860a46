// Stage: find the pod's launcher in the host's /proc. Exactly one process must have argv[0]
// basename == launcher_name and carry this VM's uuid and name as whole arguments. Every other
// process on the node is hostile input: it may vanish mid-scan, lie in its argv or claim our VM.
//
// The scan is the hot loop of a launch (a node runs 10k+ processes): one preallocated buffer,
// one open/pread/close per process, and argv[0] compared as bytes before any string is made.
import { closeSync, constants, type Dir, openSync, opendirSync, readFileSync } from 'node:fs'
import { QkError } from './errors.ts'
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

const UUID_FLAG = 'kubevirt.vm.uuid'
const NAME_FLAG = 'kubevirt.vm.name'
const BUF_SIZE = 4096
// libc's openat, unlike Node's fs, does not add O_CLOEXEC (asm-generic value, x86_64 and arm64).
const O_CLOEXEC = 0o2000000
const SCAN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | O_CLOEXEC
const CMDLINE = Buffer.from('/cmdline\0')
/** pid_max is at most 2^22: seven digits. */
const MAX_PID_DIGITS = 7

export function findTarget(q: TargetQuery): Target {
  const matches: Target[] = []
  for (const pid of scanLaunchers(q.procRoot, Buffer.from(q.launcherName))) {
    const argv = readCmdline(`${q.procRoot}/${pid}/cmdline`)
    if (argv === undefined || !carriesVm(argv, q.uuid, q.name)) continue
    const stat = readStat(q.procRoot, pid)
    // Zombies keep no cmdline, but one may die between our two reads.
    if (stat === undefined || stat.state === 'Z' || stat.state === 'X') continue
    matches.push({ pid, startTime: stat.startTime })
  }
  if (matches.length === 0) {
    throw new QkError('ERR_TARGET_NOT_FOUND',
      `expected 1 ${q.launcherName} process with -${UUID_FLAG} ${q.uuid} -${NAME_FLAG} ${q.name}, got 0`,
      { procRoot: q.procRoot })
  }
  if (matches.length > 1) {
    const pids = matches.map((m) => m.pid)
    throw new QkError('ERR_TARGET_AMBIGUOUS',
      `expected 1 ${q.launcherName} process for VM ${q.uuid}, got ${matches.length}: pids ${pids.join(', ')}`,
      { pids })
  }
  return matches[0]!
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
      if (n > 0 && argv0BasenameIs(buf, n, launcher)) yield Number(name)
    }
  } finally {
    dir?.closeSync()
    closeSync(dirfd)
  }
}

function argv0BasenameIs(buf: Buffer, n: number, name: Buffer): boolean {
  let end = 0
  while (end < n && buf[end] !== 0) end++
  if (end === 0) return false
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
