// Stage: what libvirt asked for. Two shapes are legal:
// - the capability probe libvirt runs once per emulator binary: no <qemu:env>, a fixed argv
//   (see ../shared/facts), plus -help/-version. It is served on the host, unprivileged.
// - a VM launch: all three KUBEVIRT_* variables. Anything else is refused.
// A probe-shaped argv with any KUBEVIRT_* variable is a launch: the variables decide, so a caller
// cannot dodge the checks by dressing a launch as a probe.
import { QkError } from './errors.ts'
import { ID_RE } from '../shared/constants.ts'

export interface Vm {
  uuid: string
  name: string
}

export type Invocation =
  | { kind: 'probe'; argv: readonly string[] }
  | { kind: 'launch'; vm: Vm; token: string; argv: readonly string[] }

export const ENV_UUID = 'KUBEVIRT_VM_UUID'
export const ENV_NAME = 'KUBEVIRT_VM_NAME'
export const ENV_SECRET = 'KUBEVIRT_SECRET'
const ENV_ALL = [ENV_UUID, ENV_NAME, ENV_SECRET] as const

// A Kubernetes object name or uid: short, printable, no separators a log or argv could misread.
const IDENT = ID_RE

export function classify(env: Readonly<Record<string, string | undefined>>, argv: readonly string[]): Invocation {
  const present = ENV_ALL.filter((k) => env[k] !== undefined)
  if (present.length === 0) {
    if (isProbe(argv)) return { kind: 'probe', argv }
    throw new QkError('ERR_ENV_MISSING', `not a capability probe, and none of ${ENV_ALL.join(', ')} is set`)
  }
  const missing = ENV_ALL.filter((k) => env[k] === undefined || env[k] === '')
  if (missing.length > 0) throw new QkError('ERR_ENV_MISSING', `a VM launch needs ${missing.join(', ')}`, { missing })
  const uuid = env[ENV_UUID]!
  const name = env[ENV_NAME]!
  for (const [k, v] of [[ENV_UUID, uuid], [ENV_NAME, name]] as const) {
    if (!IDENT.test(v)) throw new QkError('ERR_ENV_INVALID', `${k} must match ${IDENT.source}`, { variable: k })
  }
  return { kind: 'launch', vm: { uuid, name }, token: env[ENV_SECRET]!, argv }
}

const QUERIES = new Set(['-help', '--help', '-h', '-version', '--version'])

/**
 * libvirt 9.0's probe: `-S -no-user-config -nodefaults -nographic -machine none,accel=...
 * -qmp unix:PATH,server=on,wait=off -pidfile PATH -daemonize`, with `-overcommit mem-lock=off`
 * on some builds. Each option at most once, in any order, nothing else.
 */
export function isProbe(argv: readonly string[]): boolean {
  if (argv.length === 1 && QUERIES.has(argv[0]!)) return true
  const flags = new Set(['-S', '-no-user-config', '-nodefaults', '-nographic', '-daemonize'])
  const valued: Record<string, (v: string) => boolean> = {
    '-machine': (v) => /^none(,accel=[a-z:]+)?$/.test(v),
    '-qmp': (v) => /^unix:\/[^,\0]+,server=on,wait=off$/.test(v),
    '-pidfile': (v) => /^\/[^\0]+$/.test(v),
    '-overcommit': (v) => v === 'mem-lock=off',
  }
  const seen = new Set<string>()
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (seen.has(a)) return false
    seen.add(a)
    if (flags.has(a)) continue
    const check = valued[a]
    const value = argv[++i]
    if (check === undefined || value === undefined || !check(value)) return false
  }
  return seen.has('-machine') && seen.has('-qmp')
}
