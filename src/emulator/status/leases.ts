// The VMs launched on this node, as the uid leases record them (uid-lease.ts writes them):
//
//   STATE_DIR/uids/UID   {"vm","name","pid","startTime","launcher":{"pid","startTime"}}
//                        (leases written before the launcher was recorded: only vm, pid, startTime)
//
// Only root writes there (tmp + rename), so a record that does not parse is a bug or root's own
// tampering; status must still list every other VM, so such a file is skipped and reported, never
// fatal. Whether a lease's process still lives is decided by the caller (pid + start time).
import { readFileSync, readdirSync } from 'node:fs'
import { QkError, errnoOf } from '../errors.ts'

export interface LeaseRecord {
  uid: number
  vm: string
  /** null in leases written before the name was recorded. */
  name: string | null
  pid: number
  startTime: string
  launcher: { pid: number; startTime: string } | null
}

export interface SkippedLease {
  uid: string
  reason: string
}

/** A lease is at most a few hundred bytes; anything far larger is not one. */
const MAX_LEASE = 4096
const UID_NAME = /^(0|[1-9]\d{0,9})$/

export function readLeases(stateDir: string, onSkip: (s: SkippedLease) => void = () => undefined): LeaseRecord[] {
  const dir = `${stateDir}/uids`
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [] // no launch has happened on this node yet
    throw new QkError('ERR_OS', `cannot list the uid leases in ${dir}: ${errnoOf(err) ?? 'error'}`, { path: dir })
  }
  const out: LeaseRecord[] = []
  // The directory also holds UID.lock and UID.PID.tmp; only bare uids are leases.
  for (const name of names.filter((n) => UID_NAME.test(n)).sort((a, b) => Number(a) - Number(b))) {
    let text: string
    try {
      text = readFileSync(`${dir}/${name}`, 'utf8')
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') onSkip({ uid: name, reason: `cannot read: ${errnoOf(err) ?? 'error'}` })
      continue // ENOENT: released between readdir and read
    }
    const lease = parseLease(Number(name), text)
    if (typeof lease === 'string') onSkip({ uid: name, reason: lease })
    else out.push(lease)
  }
  return out
}

/** The record, or why it is not one. */
export function parseLease(uid: number, text: string): LeaseRecord | string {
  if (text.length > MAX_LEASE) return `larger than ${MAX_LEASE} bytes`
  let l: unknown
  try {
    l = JSON.parse(text)
  } catch {
    return 'not JSON'
  }
  if (typeof l !== 'object' || l === null) return 'not a JSON object'
  const r = l as Record<string, unknown>
  if (typeof r.vm !== 'string' || r.vm === '') return 'no "vm"'
  if (!isPid(r.pid)) return 'no valid "pid"'
  if (!isTicks(r.startTime)) return 'no valid "startTime"'
  if (r.name !== undefined && typeof r.name !== 'string') return '"name" is not a string'
  let launcher: LeaseRecord['launcher'] = null
  if (r.launcher !== undefined) {
    const ln = r.launcher as Record<string, unknown> | null
    if (typeof ln !== 'object' || ln === null || !isPid(ln.pid) || !isTicks(ln.startTime)) return '"launcher" is not {"pid","startTime"}'
    launcher = { pid: ln.pid, startTime: ln.startTime }
  }
  return { uid, vm: r.vm, name: typeof r.name === 'string' ? r.name : null, pid: r.pid, startTime: r.startTime, launcher }
}

const isPid = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0
const isTicks = (v: unknown): v is string => typeof v === 'string' && /^\d{1,20}$/.test(v)
