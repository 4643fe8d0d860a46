// virt-launcher's command line, Go `flag` style as KubeVirt writes it: `-name value`, also
// `--name value`, `-name=value`, `--name=value`. Parsing stops at `--` or the first non-flag.
import { QkError } from '../emulator/errors.ts'

export interface LauncherArgs {
  uuid: string
  name: string
  secretPath: string
  tokenFile?: string
  emulator: string
  domainXmlOut?: string
  readyFile?: string
}

const FLAGS = {
  'kubevirt.vm.uuid': 'uuid',
  'kubevirt.vm.name': 'name',
  'secret-path': 'secretPath',
  'token-file': 'tokenFile',
  emulator: 'emulator',
  'domain-xml-out': 'domainXmlOut',
  'ready-file': 'readyFile',
} as const satisfies Record<string, keyof LauncherArgs>

export const USAGE = `usage: virt-launcher -kubevirt.vm.uuid UUID -kubevirt.vm.name NAME [options]
  -secret-path PATH      where the launch token sits in this pod (default /var/run/kubevirt/qemu-kube/token)
  -token-file FILE       development: install FILE's token at -secret-path first
  -emulator PATH         qemu-kube on the node (default /var/lib/kubevirt/qemu-kube/bin/qemu-kube)
  -domain-xml-out FILE   write the domain XML fragment (with the token) there, mode 0600
  -ready-file FILE       touch FILE once the pod is ready
Runs until SIGTERM or SIGINT, reaping every child (it is the pod's PID 1).`

export function parseArgs(argv: readonly string[]): LauncherArgs {
  const out: Partial<Record<keyof LauncherArgs, string>> = {
    secretPath: '/var/run/kubevirt/qemu-kube/token',
    emulator: '/var/lib/kubevirt/qemu-kube/bin/qemu-kube',
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--') break
    const m = /^--?([a-z][a-z.-]*)(?:=(.*))?$/s.exec(arg)
    if (m === null) throw usage(`unexpected argument ${JSON.stringify(arg)}`)
    const key = FLAGS[m[1] as keyof typeof FLAGS]
    if (key === undefined) throw usage(`unknown flag -${m[1]}`)
    const value = m[2] ?? argv[++i]
    if (value === undefined) throw usage(`flag -${m[1]} needs a value`)
    out[key] = value
  }
  if (out.uuid === undefined || out.name === undefined) throw usage('-kubevirt.vm.uuid and -kubevirt.vm.name are required')
  for (const [flag, v] of [['uuid', out.uuid], ['name', out.name]] as const) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(v)) throw usage(`-kubevirt.vm.${flag} must be a short printable identifier`)
  }
  for (const k of ['secretPath', 'emulator'] as const) if (!out[k]!.startsWith('/')) throw usage(`-${k} must be an absolute path`)
  return out as LauncherArgs
}

function usage(msg: string): QkError {
  return new QkError('ERR_USAGE', msg)
}
