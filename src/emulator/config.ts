// The config: qemu.conf-style `key = value` lines, read as TOML, checked by a strict schema.
// Its path is fixed when qemu-kube is built (paths.ts); the emulator never takes it from argv or
// the environment, because the caller controls both. Every problem names its key and line, and
// says what was expected against what the file holds.
import { statSync } from 'node:fs'
import { parse as parseToml } from 'smol-toml'
import * as z from 'zod/mini'
import { SHARED } from '../shared/constants.ts'
import { QkError } from './errors.ts'
import { FS_MAGIC, type FsType } from './secret.ts'
import { readTrustedFile, type FileMeta } from './trusted-file.ts'

// zod/mini carries no messages of its own ("Invalid input"); its English ones say expected
// against received ("expected number, received string"). Our own rules override them below.
z.config(z.locales.en())

const absPath = z.string().check(z.regex(/^\/[^\0]*$/, 'must be an absolute path'))
// A wrong type keeps zod's "expected number, received string"; only a fraction gets ours.
const seconds = (min: number, max: number) => z.int({ error: (iss) => (iss.code === 'invalid_type' && iss.expected !== 'int' ? undefined : 'must be a whole number of seconds') }).check(z.minimum(min, `must be at least ${min}`), z.maximum(max, `must be at most ${max}`))
// zod's own messages say only "Invalid input"; each choice names what it accepts.
const oneOf = <const T extends readonly [string, ...string[]]>(values: T) => z.enum(values, { error: (iss) => (iss.code === 'invalid_value' ? `must be one of ${values.join(', ')}` : undefined) })
// A host uid/gid for QEMU: never 0 (root, or root's group, in a pod owns the pod), never -1.
const id = z.int().check(z.minimum(1, 'must not be 0 (root)'), z.maximum(4294967294))
export const DEVICES = ['kvm', 'tun', 'vhost-net'] as const
export const NAMESPACES = ['mnt', 'net', 'ipc', 'uts', 'cgroup', 'pid'] as const
export const ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const

const namespace = z.string().check(
  // abort: the rule that names the reason is enough; "must be one of" would only repeat it.
  z.refine((v) => v !== 'user', { error: 'the user namespace is never joined (it would hand QEMU root in the pod)', abort: true }),
  z.refine((v) => (NAMESPACES as readonly string[]).includes(v), `must be one of ${NAMESPACES.join(', ')}`),
)
const algorithm = z.string().check(
  z.refine((v) => !/^(none|HS\d+)$/i.test(v), { error: '"none" and HMAC algorithms are never accepted', abort: true }),
  z.refine((v) => (ALGORITHMS as readonly string[]).includes(v), `must be one of ${ALGORITHMS.join(', ')}`),
)
const unique = (what: string) => z.refine<unknown[]>((v) => new Set(v).size === v.length, `${what} must not repeat`)

export const schema = z.strictObject({
  proc_root: z._default(absPath, '/proc'),
  cgroup_root: z._default(absPath, '/sys/fs/cgroup'),
  launcher_name: z._default(z.string().check(z.regex(/^[^/\0]{1,255}$/, 'must be a file name without "/"')), 'virt-launcher'),
  pod_secret_path: z._default(absPath, SHARED.DEFAULT_POD_SECRET_PATH),
  pod_secret_fs_types: z._default(z.array(oneOf(Object.keys(FS_MAGIC) as [FsType, ...FsType[]])).check(z.minLength(1, 'must name at least one filesystem type'), unique('filesystem types')), ['tmpfs']),
  token_issuer: z._default(z.string().check(z.minLength(1)), 'kubevirt.io/virt-handler'),
  token_audience: z._default(z.string().check(z.minLength(1)), 'qemu-kube'),
  token_algorithms: z._default(z.array(algorithm).check(z.minLength(1), unique('algorithms')), ['RS256', 'PS256']),
  token_public_keys: z._default(z.array(absPath).check(z.minLength(1)), ['/etc/kubevirt/qemu-kube/token.pub']),
  token_max_lifetime: z._default(seconds(1, 3600), 60),
  token_clock_tolerance: z._default(seconds(0, 300), 5),
  namespaces: z._default(z.array(namespace).check(unique('namespaces')), ['mnt', 'net', 'ipc', 'uts', 'cgroup']),
  qemu_binary: z._default(absPath, '/usr/bin/qemu-system-x86_64'),
  qemu_binary_from: z._default(oneOf(['pod', 'host']), 'pod'),
  probe_qemu_binary: z._default(absPath, '/usr/bin/qemu-system-x86_64'),
  // One host identity per VM: libvirt runs each domain's emulator as the uid:gid of its
  // <seclabel model='dac'> (uid = gid), the token binds that uid, QEMU keeps it.
  vm_uid_range: z._default(z.tuple([id, id]).check(z.refine((r) => r[0] <= r[1], 'must be [first, last] with first <= last')), [20000, 29999]),
  qemu_groups: z._default(z.array(id).check(unique('qemu_groups')), []),
  qemu_mount_namespace: z._default(z.enum(['own', 'pod']), 'own'),
  qemu_devices: z._default(z.array(z.enum(DEVICES)).check(unique('qemu_devices')), []),
  libvirt_domain_roots: z._default(z.array(absPath).check(z.minLength(1), unique('libvirt_domain_roots')), ['/var/lib/libvirt/qemu', '/run/libvirt/qemu']),
  pod_link_socket: z._default(z.union([absPath, z.literal('')]), SHARED.DEFAULT_QEMU_LINK),
  state_dir: z._default(absPath, SHARED.DEFAULT_STATE_DIR),
  log_level: z._default(oneOf(['debug', 'info', 'warn', 'error']), 'info'),
})

export type Config = z.infer<typeof schema>
export type Namespace = (typeof NAMESPACES)[number]

export function loadConfig(path: string, meta?: FileMeta): Config {
  const text = readTrustedFile(path, { missing: 'ERR_CONFIG_MISSING', unsafe: 'ERR_CONFIG_UNSAFE' }, meta).toString('utf8')
  const config = parseConfig(text, path)
  // Checked here, not in the schema: parseConfig stays pure. A missing proc_root would
  // otherwise surface later as "no virt-launcher found" or "only the agent can serve".
  if (!isDirectory(config.proc_root)) {
    throw new QkError('ERR_CONFIG_INVALID', `${path}${lineSuffix(text, 'proc_root')}: proc_root: expected the node's procfs directory, got ${JSON.stringify(config.proc_root)}, which does not exist`, { path })
  }
  return config
}

export function parseConfig(text: string, path: string): Config {
  let doc: unknown
  try {
    doc = parseToml(text)
  } catch (err) {
    // smol-toml's reason is its message's first line, after its fixed prefix; the rest is an
    // excerpt of the file, which the line and column already point at.
    const num = (k: string) => (typeof err === 'object' && err !== null && k in err ? Number((err as Record<string, unknown>)[k]) : NaN)
    const first = (err instanceof Error ? err.message : '').split('\n')[0]!.replace(/^Invalid TOML document: /, '')
    const reason = first === '' ? 'not valid key = value syntax' : first
    const line = num('line')
    const column = num('column')
    const where = Number.isInteger(line) ? `:${line}${Number.isInteger(column) ? `:${column}` : ''}` : ''
    throw new QkError('ERR_CONFIG_SYNTAX', `${path}${where}: ${reason}`, { path, ...(Number.isInteger(line) ? { line } : {}), ...(Number.isInteger(column) ? { column } : {}) })
  }
  const record = doc as Record<string, unknown>
  const removed = Object.keys(record).filter((k) => Object.hasOwn(REMOVED, k))
  const result = schema.safeParse(Object.fromEntries(Object.entries(record).filter(([k]) => !Object.hasOwn(REMOVED, k))))
  if (result.success && removed.length === 0) return result.data
  // Every problem of the file at once, in the order of its lines.
  const problems: { line: number | undefined; text: string }[] = removed.map((k) => ({ line: lineOf(text, k), text: `${k} is no longer read: ${REMOVED[k]}` }))
  for (const issue of result.success ? [] : result.error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) problems.push({ line: lineOf(text, k), text: `unknown key ${k}${didYouMean(k)}` })
      continue
    }
    const key = String(issue.path[0] ?? '')
    const sub = issue.path.length > 1 ? `[${issue.path.slice(1).join('][')}]` : ''
    const message = issue.message.replace(/^Invalid input: /, '')
    const got = /\breceived\b/.test(message) ? '' : `, got ${shown(valueAt(record, issue.path))}`
    problems.push({ line: lineOf(text, key), text: `${key}${sub}: ${message}${got}` })
  }
  problems.sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity))
  const lines = problems.map((p) => `${path}${p.line === undefined ? '' : `:${p.line}`}: ${p.text}`)
  throw new QkError('ERR_CONFIG_INVALID', lines.join('; '), { path, problems: lines })
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}

function valueAt(doc: Record<string, unknown>, path: readonly PropertyKey[]): unknown {
  let v: unknown = doc
  for (const k of path) v = typeof v === 'object' && v !== null ? (v as Record<PropertyKey, unknown>)[k] : undefined
  return v
}

/** The file's own value, short: a config is root's, but may be long. */
function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v)
  return s.length > 64 ? `${s.slice(0, 64)}...` : s
}

/** The known key an unknown one is most likely a typo of. */
function didYouMean(key: string): string {
  let best = ''
  let bestDistance = Infinity
  for (const k of Object.keys(schema.shape)) {
    const d = editDistance(key, k)
    if (d < bestDistance) [best, bestDistance] = [k, d]
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 4)) ? ` (did you mean ${best}?)` : ''
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    prev = cur
  }
  return prev[b.length]!
}

// Keys of earlier releases, refused with what replaced them rather than as unknown.
const REMOVED: Record<string, string> = {
  allowed_users: 'launches come from the per-VM uids in vm_uid_range (one host identity per VM)',
  allowed_groups: 'launches come from the per-VM uids in vm_uid_range (one host identity per VM)',
  qemu_user: 'QEMU runs as its VM\'s own uid (the domain\'s DAC <seclabel>, bound by the token\'s qemu_uid claim)',
  qemu_group: 'QEMU runs with its VM\'s own gid (= its uid) plus qemu_groups',
}

function lineSuffix(text: string, key: string): string {
  const where = lineOf(text, key)
  return where === undefined ? '' : `:${where}`
}

/** The first line that sets `key` (bare or quoted, also as a dotted key or a table header). */
function lineOf(text: string, key: string): number | undefined {
  if (key === '') return undefined
  const k = key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const at = new RegExp(`^\\s*(\\[\\s*)?(${k}|"${k}"|'${k}')\\s*[=.\\]]`)
  const i = text.split('\n').findIndex((l) => at.test(l))
  return i < 0 ? undefined : i + 1
}
