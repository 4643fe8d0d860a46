// Stage: who called us, and whom QEMU will run as. The front recorded the caller's real ids
// before it became root. libvirt runs each domain's emulator as the uid:gid of that domain's
// DAC <seclabel> (`+UID:+UID`, one identity per VM, allocated by the token issuer and bound by
// the token's qemu_uid claim, see token.ts). Here: the caller must be such an identity, from
// vm_uid_range, with gid = uid. QEMU keeps exactly it: the caller's own gid plus the configured
// qemu_groups, never a host group the caller happened to carry (0 is refused by the schema).
import { QkError } from './errors.ts'
import type { Config } from './config.ts'

export interface Caller {
  uid: number
  gid: number
  groups: readonly number[]
}

/** Who QEMU runs as: the same shape as a caller. */
export type Credentials = Caller

export function checkCaller(caller: Caller, cfg: Config): void {
  const [first, last] = cfg.vm_uid_range
  if (caller.uid < first || caller.uid > last) {
    throw new QkError('ERR_CALLER_NOT_ALLOWED',
      `expected a caller uid in vm_uid_range [${first}, ${last}], got uid ${caller.uid} gid ${caller.gid}`,
      { uid: caller.uid, gid: caller.gid })
  }
  if (caller.gid !== caller.uid) {
    throw new QkError('ERR_CALLER_NOT_ALLOWED',
      `expected the VM's gid to equal its uid ${caller.uid} (seclabel +UID:+UID), got gid ${caller.gid}`,
      { uid: caller.uid, gid: caller.gid })
  }
}

export function qemuCredentials(caller: Caller, cfg: Config): Credentials {
  return { uid: caller.uid, gid: caller.gid, groups: [...new Set([caller.gid, ...cfg.qemu_groups])] }
}
