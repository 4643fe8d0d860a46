// Stage: who called us, and whom QEMU will run as. The front recorded the caller's real ids
// before it became root; here they are checked against allowed_users/allowed_groups. Names are
// resolved from the host's /etc/passwd and /etc/group in TypeScript, so the C parts make no NSS
// calls (the node's libc is unknown: glibc or musl).
import { readFileSync } from 'node:fs'
import { QkError } from './errors.ts'
import type { Config } from './config.ts'

export interface Caller {
  uid: number
  gid: number
  groups: readonly number[]
}

/** Who QEMU runs as: the same shape as a caller. */
export type Credentials = Caller

export interface IdFiles {
  passwd: string
  group: string
}

export const HOST_ID_FILES: IdFiles = { passwd: '/etc/passwd', group: '/etc/group' }

export function checkCaller(caller: Caller, cfg: Config, files: IdFiles = HOST_ID_FILES): void {
  const allowed = resolveAllowed(cfg, files)
  if (allowed.users.includes(caller.uid) || [caller.gid, ...caller.groups].some((g) => allowed.groups.includes(g))) return
  throw new QkError('ERR_CALLER_NOT_ALLOWED',
    `expected a caller in allowed_users [${cfg.allowed_users.join(', ')}] or allowed_groups [${cfg.allowed_groups.join(', ')}], got uid ${caller.uid} gid ${caller.gid}`,
    { uid: caller.uid, gid: caller.gid })
}

export function resolveAllowed(cfg: Config, files: IdFiles = HOST_ID_FILES): { users: number[]; groups: number[] } {
  const db = new IdDb(files)
  return {
    users: cfg.allowed_users.map((p) => db.id(p, 'allowed_users', 'passwd')),
    groups: cfg.allowed_groups.map((p) => db.id(p, 'allowed_groups', 'group')),
  }
}

/** QEMU runs as the caller unless qemu_user/qemu_group say otherwise (then groups are explicit). */
export function qemuCredentials(caller: Caller, cfg: Config, files: IdFiles = HOST_ID_FILES): Credentials {
  if (cfg.qemu_user === undefined && cfg.qemu_group === undefined) return caller
  const db = new IdDb(files)
  const uid = cfg.qemu_user === undefined ? caller.uid : db.id(cfg.qemu_user, 'qemu_user', 'passwd')
  const gid = cfg.qemu_group === undefined ? caller.gid : db.id(cfg.qemu_group, 'qemu_group', 'group')
  return { uid, gid, groups: [gid] }
}

/** A user's ids as login would set them: passwd's uid and gid, and every group listing the name. */
export function lookupUser(name: string, files: IdFiles = HOST_ID_FILES): Caller {
  const db = new IdDb(files)
  const row = db.rows('passwd').find((r) => r[0] === name || r[2] === name)
  if (row === undefined) throw new QkError('ERR_USAGE', `no such user ${JSON.stringify(name)}`)
  const groups = db.rows('group').filter((r) => (r[3] ?? '').split(',').includes(row[0]!)).map((r) => Number(r[2]))
  return { uid: Number(row[2]), gid: Number(row[3]), groups }
}

/** passwd and group share the layout `name:x:id:...`; each is read at most once per use. */
class IdDb {
  private readonly cache = new Map<keyof IdFiles, string[][]>()
  constructor(private readonly files: IdFiles) {}

  rows(table: keyof IdFiles): string[][] {
    let rows = this.cache.get(table)
    if (rows === undefined) {
      rows = readFileSync(this.files[table], 'utf8').split('\n').map((l) => l.split(':')).filter((r) => r.length >= 3 && /^\d+$/.test(r[2]!))
      this.cache.set(table, rows)
    }
    return rows
  }

  id(p: string | number, key: string, table: keyof IdFiles): number {
    if (typeof p === 'number') return p
    if (/^\d+$/.test(p)) return Number(p)
    const row = this.rows(table).find((r) => r[0] === p)
    if (row === undefined) throw new QkError('ERR_CONFIG_INVALID', `${key}: no such ${table === 'passwd' ? 'user' : 'group'} "${p}" on this node`, { key })
    return Number(row[2])
  }
}
