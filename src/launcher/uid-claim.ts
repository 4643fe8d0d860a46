// The token's `qemu_uid` claim against -qemu-uid. virt-handler allocates the VM's host uid and
// writes it both into the pod's command line and into the token it signs; qemu-kube on the node
// enforces the claim. Comparing here turns a mismatch into a pod that does not start, with a
// clear line, instead of a `virsh start` that fails later. The launcher holds no key, so the
// payload is decoded without verification: this is a consistency check, not authorisation.
import { QkError } from '../emulator/errors.ts'

/** The qemu_uid claim, undefined when absent or when the token is not a decodable JWS. */
export function qemuUidClaim(token: string): unknown {
  const parts = token.split('.')
  if (parts.length !== 3) return undefined
  let payload: unknown
  try {
    payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'))
  } catch {
    return undefined // node-side verification will refuse it with ERR_TOKEN_MALFORMED
  }
  return typeof payload === 'object' && payload !== null && 'qemu_uid' in payload ? payload.qemu_uid : undefined
}

export function checkUidClaim(token: string, qemuUid: number): void {
  const claim = qemuUidClaim(token)
  if (claim === undefined || claim === qemuUid) return
  const got = typeof claim === 'number' ? String(claim) : claim === null ? 'null' : typeof claim === 'object' ? 'an object' : `a ${typeof claim}`
  throw new QkError('ERR_LAUNCHER_UID_MISMATCH', `the token's qemu_uid claim is ${got}, -qemu-uid is ${qemuUid}`,
    { claim: typeof claim === 'number' ? claim : null, qemuUid })
}
