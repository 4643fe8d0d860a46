// The config: qemu.conf-style `key = value` lines, read as TOML, checked by a strict schema.
// Its path is fixed when qemu-kube is built (paths.ts); the emulator never takes it from argv or
// the environment, because the caller controls both. Every problem names its key and line.
import { parse as parseToml } from 'smol-toml'
import * as z from 'zod/mini'
import { QkError } from './errors.ts'
import { FS_MAGIC, type FsType } from './secret.ts'
import { readTrustedFile, type FileMeta } from './trusted-file.ts'

const absPath = z.string().check(z.regex(/^\/[^\0]*$/, 'must be an absolute path'))
const seconds = (min: number, max: number) => z.int({ error: 'must be a whole number of seconds' }).check(z.minimum(min, `must be at least ${min}`), z.maximum(max, `must be at most ${max}`))
// zod's own messages say only "Invalid input"; each choice names what it accepts.
const oneOf = <const T extends readonly [string, ...string[]]>(values: T) => z.enum(values, { error: `must be one of ${values.join(', ')}` })
// A host uid/gid for QEMU: never 0 (root, or root's group, in a pod owns the pod), never -1.
const id = z.int().check(z.minimum(1, 'must not be 0 (root)'), z.maximum(4294967294))
export const DEVICES = ['kvm', 'tun', 'vhost-net'] as const
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
  pod_link_socket: z._default(z.union([absPath, z.literal('')]), '/var/run/kubevirt-private/qemu-kube/launcher.sock'),
  state_dir: z._default(absPath, '/run/qemu-kube'),
  log_level: z._default(oneOf(['debug', 'info', 'warn', 'error']), 'info'),
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
  const gone = Object.keys(doc as object).filter((k) => k in REMOVED)
  if (gone.length > 0) {
    const problems = gone.map((k) => `${path}${lineSuffix(text, k)}: ${k} is no longer read: ${REMOVED[k]}`)
    throw new QkError('ERR_CONFIG_INVALID', problems.join('; '), { path, problems })
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

function lineOf(text: string, key: string): number | undefined {
  if (key === '') return undefined
  const i = text.split('\n').findIndex((l) => new RegExp(`^\\s*${key}\\s*=`).test(l))
  return i < 0 ? undefined : i + 1
}
