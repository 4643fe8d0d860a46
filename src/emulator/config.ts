// The config: qemu.conf-style `key = value` lines, read as TOML, checked by a strict schema.
// Its path is fixed when qemu-kube is built (paths.ts); the emulator never takes it from argv or
// the environment, because the caller controls both. Every problem names its key and line.
import { parse as parseToml } from 'smol-toml'
import * as z from 'zod/mini'
import { QkError } from './errors.ts'
import { readTrustedFile, type FileMeta } from './trusted-file.ts'

const absPath = z.string().check(z.regex(/^\/[^\0]*$/, 'must be an absolute path'))
const seconds = (min: number, max: number) => z.int().check(z.minimum(min), z.maximum(max))
const principal = z.union([z.string().check(z.regex(/^[a-z_][a-z0-9_.-]*\$?$/i, 'must be a user/group name or a numeric id')), z.int().check(z.minimum(0))])
export const NAMESPACES = ['mnt', 'net', 'ipc', 'uts', 'cgroup', 'pid'] as const
export const ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const

const namespace = z.string().check(
  z.refine((v) => v !== 'user', 'the user namespace is never joined (it would hand QEMU root in the pod)'),
  z.refine((v) => (NAMESPACES as readonly string[]).includes(v), `must be one of ${NAMESPACES.join(', ')}`),
)
const algorithm = z.string().check(
  z.refine((v) => !/^(none|HS\d+)$/i.test(v), '"none" and HMAC algorithms are never accepted'),
  z.refine((v) => (ALGORITHMS as readonly string[]).includes(v), `must be one of ${ALGORITHMS.join(', ')}`),
)
const unique = (what: string) => z.refine<unknown[]>((v) => new Set(v).size === v.length, `${what} must not repeat`)

export const schema = z.strictObject({
  proc_root: z._default(absPath, '/proc'),
  cgroup_root: z._default(absPath, '/sys/fs/cgroup'),
  launcher_name: z._default(z.string().check(z.regex(/^[^/\0]{1,255}$/, 'must be a file name without "/"')), 'virt-launcher'),
  pod_secret_path: z._default(absPath, '/var/run/kubevirt/qemu-kube/token'),
  token_issuer: z._default(z.string().check(z.minLength(1)), 'kubevirt.io/virt-handler'),
  token_audience: z._default(z.string().check(z.minLength(1)), 'qemu-kube'),
  token_algorithms: z._default(z.array(algorithm).check(z.minLength(1), unique('algorithms')), ['RS256', 'PS256']),
  token_public_keys: z._default(z.array(absPath).check(z.minLength(1)), ['/etc/kubevirt/qemu-kube/token.pub']),
  token_max_lifetime: z._default(seconds(1, 3600), 60),
  token_clock_tolerance: z._default(seconds(0, 300), 5),
  namespaces: z._default(z.array(namespace).check(unique('namespaces')), ['mnt', 'net', 'ipc', 'uts', 'cgroup']),
  qemu_binary: z._default(absPath, '/usr/bin/qemu-system-x86_64'),
  qemu_binary_from: z._default(z.enum(['pod', 'host']), 'pod'),
  probe_qemu_binary: z._default(absPath, '/usr/bin/qemu-system-x86_64'),
  allowed_users: z._default(z.array(principal), ['libvirt-qemu']),
  allowed_groups: z._default(z.array(principal), []),
  qemu_user: z.optional(principal),
  qemu_group: z.optional(principal),
  state_dir: z._default(absPath, '/run/qemu-kube'),
  log_level: z._default(z.enum(['debug', 'info', 'warn', 'error']), 'info'),
})

export type Config = z.infer<typeof schema>
export type Namespace = (typeof NAMESPACES)[number]

export function loadConfig(path: string, meta?: FileMeta): Config {
  const text = readTrustedFile(path, { missing: 'ERR_CONFIG_MISSING', unsafe: 'ERR_CONFIG_UNSAFE' }, meta).toString('utf8')
  return parseConfig(text, path)
}

export function parseConfig(text: string, path: string): Config {
  let doc: unknown
  try {
    doc = parseToml(text)
  } catch (err) {
    const line = typeof err === 'object' && err !== null && 'line' in err ? Number(err.line) : undefined
    throw new QkError('ERR_CONFIG_SYNTAX', `${path}${line === undefined ? '' : `:${line}`}: not valid key = value syntax`, { path, line })
  }
  const result = schema.safeParse(doc)
  if (result.success) return result.data
  const problems = result.error.issues.map((issue) => {
    const key = issue.code === 'unrecognized_keys' ? (issue.keys[0] ?? '') : String(issue.path[0] ?? '')
    const where = lineOf(text, key)
    const sub = issue.path.length > 1 ? `[${issue.path.slice(1).join('][')}]` : ''
    const what = issue.code === 'unrecognized_keys' ? `unknown key(s) ${issue.keys.join(', ')}` : `${key}${sub}: ${issue.message}`
    return `${path}${where === undefined ? '' : `:${where}`}: ${what}`
  })
  throw new QkError('ERR_CONFIG_INVALID', problems.join('; '), { path, problems })
}

function lineOf(text: string, key: string): number | undefined {
  if (key === '') return undefined
  const i = text.split('\n').findIndex((l) => new RegExp(`^\\s*${key}\\s*=`).test(l))
  return i < 0 ? undefined : i + 1
}
