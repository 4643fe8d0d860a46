// One error class, one closed union of codes. Every refusal the emulator can make is listed
// here with the sysexits status it maps to and a hint for the operator who reads libvirt's log.
// Messages name the exact rule and say expected against got; they never carry token or key
// material (callers pass only our own strings, never a foreign error's message).

import { SHARED } from '../shared/constants.ts'

export const EX_USAGE = 64
export const EX_DATAERR = 65
export const EX_NOINPUT = 66
export const EX_CANTCREAT = 73
export const EX_SOFTWARE = 70
export const EX_UNAVAILABLE = 69
export const EX_OSERR = 71
export const EX_PROTOCOL = 76
export const EX_NOPERM = 77
export const EX_CONFIG = 78

const table = {
  ERR_USAGE: [EX_USAGE, SHARED.HINT_USAGE],
  ERR_INPUT_MISSING: [EX_NOINPUT, 'the file named must exist and be readable by the user running the command'],
  ERR_OUTPUT_EXISTS: [EX_CANTCREAT, 'nothing is overwritten: remove the file named or choose another path'],
  ERR_OUTPUT_UNWRITABLE: [EX_CANTCREAT, 'the directory named must exist and be writable by the user running the command'],
  ERR_SIGNING_KEY_INVALID: [EX_DATAERR, '--key takes the PEM private key `qemu-kube keygen --private` wrote (the public key goes in token_public_keys)'],
  ERR_ISSUE_REFUSED: [EX_DATAERR, 'the verifier would refuse this token: keep --ttl, --alg, --qemu-uid and the VM ids within the config (token_max_lifetime, token_algorithms, vm_uid_range, the id pattern), or pass the --config the nodes use'],
  ERR_CONFIG_MISSING: [EX_CONFIG, 'create the config file (see etc/qemu-kube.conf in the release)'],
  ERR_CONFIG_UNSAFE: [EX_CONFIG, SHARED.HINT_CONFIG_UNSAFE],
  ERR_CONFIG_SYNTAX: [EX_CONFIG, 'the config is qemu.conf-style `key = value` lines read as TOML; fix the line named'],
  ERR_CONFIG_INVALID: [EX_CONFIG, 'fix the key named; `qemu-kube check-config` lists every problem'],
  ERR_KEY_INVALID: [EX_CONFIG, 'each token_public_keys entry must be a root-owned PEM public key, JWK or JWKS file'],
  ERR_STATE_DIR_UNSAFE: [EX_CONFIG, 'the state dir must be a root-owned directory with mode 0700'],
  ERR_CALLER_NOT_ALLOWED: [EX_NOPERM, 'libvirt must run each VM\'s emulator as its own uid from vm_uid_range, gid = uid: put the launcher\'s <seclabel type=\'static\' model=\'dac\'><label>+UID:+UID</label></seclabel> in the domain XML'],
  ERR_ENV_MISSING: [EX_NOPERM, 'a VM launch needs KUBEVIRT_VM_UUID, KUBEVIRT_VM_NAME and KUBEVIRT_SECRET as <qemu:env> in the domain XML'],
  ERR_ENV_INVALID: [EX_NOPERM, 'KUBEVIRT_VM_UUID/NAME must be short printable identifiers'],
  ERR_TOKEN_MALFORMED: [EX_NOPERM, 'KUBEVIRT_SECRET must be a compact JWS issued by `qemu-kube token issue` or KubeVirt'],
  ERR_TOKEN_ALG_NOT_ALLOWED: [EX_NOPERM, 'the token is signed with an algorithm outside token_algorithms'],
  ERR_TOKEN_KEY_UNKNOWN: [EX_NOPERM, 'no configured public key has the token\'s kid; add the key to token_public_keys'],
  ERR_TOKEN_SIGNATURE: [EX_NOPERM, 'the token was not signed by any configured key; was it issued by this cluster?'],
  ERR_TOKEN_EXPIRED: [EX_NOPERM, 'tokens live at most token_max_lifetime seconds; issue a fresh one and check node clocks (NTP)'],
  ERR_TOKEN_NOT_YET_VALID: [EX_NOPERM, 'the token was issued in the future; check node clocks (NTP)'],
  ERR_TOKEN_CLAIM_INVALID: [EX_NOPERM, 'the token lacks a required claim or has the wrong issuer/audience'],
  ERR_TOKEN_LIFETIME: [EX_NOPERM, 'exp - iat exceeds token_max_lifetime; issue shorter-lived tokens'],
  ERR_TOKEN_VM_MISMATCH: [EX_NOPERM, 'the token was issued for another VM than KUBEVIRT_VM_UUID/NAME name'],
  ERR_TOKEN_UID_MISMATCH: [EX_NOPERM, 'the token binds another host uid (qemu_uid) than the one libvirt ran the emulator as; check the domain\'s <seclabel> against the launcher\'s fragment'],
  ERR_UID_IN_USE: [EX_NOPERM, 'another live VM on this node runs as this uid; the token issuer must give each live VM its own uid from vm_uid_range'],
  ERR_CARRY_OUTSIDE: [EX_NOPERM, 'QEMU\'s argv names a libvirt file outside this domain\'s per-domain directories (domain-N-NAME under libvirt_domain_roots); only those are carried into QEMU\'s mount namespace'],
  ERR_QEMU_MISSING: [EX_NOPERM, 'the pod\'s image must contain qemu_binary (looked up inside the pod\'s root), as KubeVirt\'s virt-launcher image does'],
  ERR_TOKEN_REPLAYED: [EX_NOPERM, 'each token starts one QEMU; issue a new token for every start'],
  ERR_TARGET_NOT_FOUND: [EX_NOPERM, 'no virt-launcher process carries this VM\'s uuid and name; is the pod running on this node?'],
  ERR_TARGET_AMBIGUOUS: [EX_NOPERM, 'several virt-launcher processes claim this VM; delete the stale pod'],
  ERR_TARGET_CHANGED: [EX_NOPERM, 'the virt-launcher process exited or its pid was reused during the check; retry the start'],
  ERR_SECRET_MISSING: [EX_NOPERM, 'the pod has no token at pod_secret_path; is the Secret volume mounted?'],
  ERR_SECRET_ESCAPE: [EX_NOPERM, 'the pod\'s secret path leads outside the pod\'s root or through a magic link'],
  ERR_SECRET_NOT_REGULAR: [EX_NOPERM, 'the pod\'s secret path must be a regular file'],
  ERR_SECRET_UNSAFE: [EX_NOPERM, 'the pod\'s token must be a root-owned file on a filesystem named in pod_secret_fs_types (a Secret volume is a tmpfs)'],
  ERR_SECRET_TOO_BIG: [EX_NOPERM, 'the pod\'s secret file is larger than 16 KiB'],
  ERR_SECRET_MISMATCH: [EX_NOPERM, 'the token in the pod differs from KUBEVIRT_SECRET; was the Secret rotated?'],
  ERR_LAUNCHER_UID_MISMATCH: [EX_CONFIG, 'virt-launcher\'s -qemu-uid and its token\'s qemu_uid claim must both be the uid virt-handler allocated for this VM; recreate the pod'],
  ERR_AGENT_UNAVAILABLE: [EX_UNAVAILABLE, 'proc_root is not this process\'s pid namespace, so only the agent can serve this launch: start `qemu-kube agent` (the DaemonSet\'s agent container) and check its socket'],
  ERR_AGENT_PEER_NOT_ROOT: [EX_NOPERM, 'only root (the setuid front) may ask the agent; its socket directory must be root-owned 0700 and the socket 0600'],
  ERR_AGENT_REQUEST_TOO_BIG: [EX_PROTOCOL, 'an agent request is at most 256 KiB; only the qemu-kube front speaks to the agent'],
  ERR_AGENT_REQUEST_TRUNCATED: [EX_PROTOCOL, 'the agent request ended before its `end` record; only the qemu-kube front speaks to the agent'],
  ERR_AGENT_REQUEST_MALFORMED: [EX_PROTOCOL, 'the agent request is not the qk-agent-1 framing of docs/CHAIN.md section 3'],
  ERR_AGENT_REQUEST_TIMEOUT: [EX_PROTOCOL, 'an agent request must arrive whole within 2 s'],
  ERR_CGROUP_JOIN: [EX_OSERR, 'the kernel refused to move qemu-kube into the pod\'s cgroup; check the path named'],
  ERR_OS: [EX_OSERR, 'a system call failed; the message names it'],
  ERR_INTERNAL: [EX_SOFTWARE, 'this is a bug in qemu-kube; please report it with this line'],
} as const satisfies Record<string, readonly [number, string]>

export type ErrorCode = keyof typeof table

export class QkError extends Error {
  override readonly name = 'QkError'
  readonly code: ErrorCode
  /** Safe, structured facts for the log line (pids, paths, keys). Never secrets. */
  readonly details: Readonly<Record<string, unknown>>

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(message)
    this.code = code
    this.details = details
  }

  get exitCode(): number {
    return table[this.code][0]
  }

  get hint(): string {
    return table[this.code][1]
  }
}

/** Anything thrown that is not ours is a bug; its message may hold foreign data, so drop it. */
export function asQkError(err: unknown): QkError {
  if (err instanceof QkError) return err
  const kind = err instanceof Error ? err.constructor.name : typeof err
  return new QkError('ERR_INTERNAL', `unexpected ${kind}`)
}

export function errnoOf(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined
}

export const allCodes = Object.keys(table) as ErrorCode[]
