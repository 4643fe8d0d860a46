// The token as this pod sees it. Kubernetes mounts it from a Secret (root-owned, 0644 or
// tighter, through the `..data` symlink chain); for development -token-file installs one.
// qemu-kube on the node will compare its bytes with KUBEVIRT_SECRET, so it must be there and sane
// before the VM's domain XML is handed out.
import { copyFileSync, chmodSync, mkdirSync, statSync } from 'node:fs'
import { dirname } from 'node:path'
import { QkError } from '../emulator/errors.ts'
import { SHARED } from '../shared/constants.ts'

export function installToken(from: string, to: string): void {
  mkdirSync(dirname(to), { recursive: true, mode: 0o755 })
  copyFileSync(from, to)
  chmodSync(to, 0o444)
}

export function checkToken(path: string): void {
  let st
  try {
    st = statSync(path)
  } catch {
    throw new QkError('ERR_SECRET_MISSING', `no token at ${path}; mount the launch Secret there or pass -token-file`)
  }
  if (!st.isFile()) throw new QkError('ERR_SECRET_NOT_REGULAR', `${path} must be a regular file`)
  if (st.uid !== 0 && st.uid !== process.getuid?.()) throw new QkError('ERR_SECRET_NOT_REGULAR', `${path} must be owned by root or by this process, is uid ${st.uid}`)
  if ((st.mode & 0o022) !== 0) throw new QkError('ERR_SECRET_NOT_REGULAR', `${path} must not be writable by group or others`)
  if (st.size === 0 || st.size > SHARED.MAX_TOKEN_BYTES) throw new QkError('ERR_SECRET_TOO_BIG', `${path} must hold 1 to ${SHARED.MAX_TOKEN_BYTES} bytes, holds ${st.size}`)
}
