// Stage: find the pod's launcher in the host's /proc. Exactly one process must have argv[0]
// basename == launcher_name and carry this VM's uuid and name as whole arguments. Every other
// process on the node is hostile input: it may vanish mid-scan, lie in its argv or claim our VM.
//
// The scan is the hot loop of a launch (a node runs 10k+ processes): one preallocated buffer,
// one open/pread/close per process, and argv[0] compared as bytes before any string is made.
import { closeSync, constants, openSync, readFileSync, readSync, readdirSync } from 'node:fs'
import { QkError } from './errors.ts'
import { parseStat, splitCmdline } from './procfs.ts'

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
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW

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
  const buf = Buffer.allocUnsafe(BUF_SIZE)
  for (const entry of readdirSync(procRoot)) {
    const c = entry.charCodeAt(0)
    if (c < 0x31 || c > 0x39) continue
    let fd: number
    try {
      fd = openSync(`${procRoot}/${entry}/cmdline`, OPEN_FLAGS)
    } catch {
      continue // exited since readdir, or not a process directory
    }
    let n = 0
    try {
      n = readSync(fd, buf, 0, BUF_SIZE, 0)
    } catch {
      n = 0
    } finally {
      closeSync(fd)
    }
    if (n > 0 && argv0BasenameIs(buf, n, launcher)) yield Number(entry)
  }
}

function argv0BasenameIs(buf: Buffer, n: number, name: Buffer): boolean {
  let end = buf.indexOf(0)
  if (end < 0 || end > n) end = n
  if (end === 0) return false
  let start = buf.lastIndexOf(0x2f, end - 1) + 1
  if (end - start !== name.length) return false
  for (let i = 0; i < name.length; i++) if (buf[start++] !== name[i]) return false
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
