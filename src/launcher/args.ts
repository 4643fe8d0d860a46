// virt-launcher's command line, Go `flag` style as KubeVirt writes it: `-name value`, also
// `--name value`, `-name=value`, `--name=value`. Parsing stops at `--` or the first non-flag.
import { QkError } from '../emulator/errors.ts'
import { ID_RE, SHARED } from '../shared/constants.ts'

export interface LauncherArgs {
  uuid: string
  name: string
  secretPath: string
  tokenFile?: string
  emulator: string
  domainXmlOut?: string
  readyFile?: string
  /** The VM's own host uid (= gid), allocated by virt-handler: the fragment's DAC <seclabel>. */
  qemuUid: number
  /** Where linked QEMUs hand over their pidfd; null when disabled (`-qemu-link ""`). */
  qemuLink: string | null
  /** Seconds between SIGTERM and SIGKILL for linked QEMUs when the pod stops. */
  qemuStopTimeout: number
}

const FLAGS = {
  'kubevirt.vm.uuid': 'uuid',
  'kubevirt.vm.name': 'name',
  'secret-path': 'secretPath',
  'token-file': 'tokenFile',
  emulator: 'emulator',
  'domain-xml-out': 'domainXmlOut',
  'ready-file': 'readyFile',
  'qemu-uid': 'qemuUid',
  'qemu-link': 'qemuLink',
  'qemu-stop-timeout': 'qemuStopTimeout',
} as const satisfies Record<string, keyof LauncherArgs>

export const DEFAULT_QEMU_LINK = SHARED.DEFAULT_QEMU_LINK
const DEFAULT_EMULATOR = `${SHARED.DEFAULT_PREFIX}/bin/qemu-kube`

export const USAGE = `usage: virt-launcher -kubevirt.vm.uuid UUID -kubevirt.vm.name NAME -qemu-uid UID [options]
  -qemu-uid UID          the VM's own host uid (and gid), allocated by virt-handler; 1..4294967294
  -secret-path PATH      where the launch token sits in this pod (default ${SHARED.DEFAULT_POD_SECRET_PATH})
  -token-file FILE       development: install FILE's token at -secret-path first
  -emulator PATH         qemu-kube on the node (default ${DEFAULT_EMULATOR})
  -domain-xml-out FILE   write the domain XML fragment (with the token) there, mode 0600
  -ready-file FILE       touch FILE once the pod is ready
  -qemu-link PATH        unix socket where QEMU hands over its pidfd (default ${DEFAULT_QEMU_LINK}; "" disables)
  -qemu-stop-timeout S   on SIGTERM, how long to wait for the linked QEMUs' watchers to stop them, plus 2 s (default 10)
Runs until SIGTERM or SIGINT, reaping every child (it is the pod's PID 1); then stops linked QEMUs.`

export function parseArgs(argv: readonly string[]): LauncherArgs {
  const raw: Partial<Record<keyof LauncherArgs, string>> = {
    secretPath: SHARED.DEFAULT_POD_SECRET_PATH,
    emulator: DEFAULT_EMULATOR,
    qemuLink: DEFAULT_QEMU_LINK,
    qemuStopTimeout: '10',
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
    raw[key] = value
  }
  if (raw.uuid === undefined || raw.name === undefined) throw usage('-kubevirt.vm.uuid and -kubevirt.vm.name are required')
  for (const [flag, v] of [['uuid', raw.uuid], ['name', raw.name]] as const) {
    if (!ID_RE.test(v)) throw usage(`-kubevirt.vm.${flag} expected ${SHARED.ID_PATTERN} (what qemu-kube accepts as KUBEVIRT_VM_${flag.toUpperCase()}), got ${JSON.stringify(v.slice(0, 64))}`)
  }
  for (const k of ['secretPath', 'emulator'] as const) if (!raw[k]!.startsWith('/')) throw usage(`-${k} must be an absolute path`)
  // Required: the launcher always hands out the fragment (stdout at least), and a fragment
  // without the VM's own uid would run its QEMU as the shared qemu.conf user.
  if (raw.qemuUid === undefined) throw usage('-qemu-uid is required: the domain XML fragment runs QEMU as the VM\'s own host uid')
  const uid = /^[1-9][0-9]{0,9}$/.test(raw.qemuUid) ? Number(raw.qemuUid) : NaN
  // 0 is root; 4294967295 is (uid_t)-1, "no change" to setresuid and chown.
  if (!(uid >= 1 && uid <= 4294967294)) throw usage(`-qemu-uid must be an integer from 1 to 4294967294, got ${JSON.stringify(raw.qemuUid)}`)
  const link = raw.qemuLink!
  if (link !== '' && !link.startsWith('/')) throw usage(`-qemu-link must be an absolute path or "" (off), got ${JSON.stringify(link)}`)
  // sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
  if (Buffer.byteLength(link) > 107) throw usage(`-qemu-link must be at most 107 bytes long, is ${Buffer.byteLength(link)}`)
  const timeout = /^[0-9]{1,4}(\.[0-9]{1,3})?$/.test(raw.qemuStopTimeout!) ? Number(raw.qemuStopTimeout) : NaN
  if (!(timeout <= 3600)) throw usage(`-qemu-stop-timeout must be seconds from 0 to 3600, got ${JSON.stringify(raw.qemuStopTimeout)}`)
  const { qemuUid: _u, qemuLink: _l, qemuStopTimeout: _t, ...strings } = raw
  return { ...(strings as Omit<LauncherArgs, 'qemuUid' | 'qemuLink' | 'qemuStopTimeout'>), qemuUid: uid, qemuLink: link === '' ? null : link, qemuStopTimeout: timeout }
}

function usage(msg: string): QkError {
  return new QkError('ERR_USAGE', msg)
}
