// Files whose contents decide who may become what (the config, the public keys) must be as
// trustworthy as the binary: owned by root and not writable by group or others. The check runs
// on the descriptor we read from, so the file cannot be swapped between check and read.
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'
import { QkError, errnoOf, type ErrorCode } from './errors.ts'

export interface Meta {
  uid: number
  mode: number
  isFile: boolean
}

/** Injected in unit tests: returns the metadata that the real fstat would report. */
export type FileMeta = (path: string, real: Meta) => Meta

const MAX_TRUSTED = 1024 * 1024

export interface TrustedCodes {
  missing: ErrorCode
  unsafe: ErrorCode
}

export function readTrustedFile(path: string, codes: TrustedCodes, meta: FileMeta = (_, m) => m): Buffer {
  const code = codes.unsafe
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY)
  } catch (err) {
    const errno = errnoOf(err) ?? 'error'
    throw new QkError(errno === 'ENOENT' ? codes.missing : codes.unsafe, `cannot open ${path}: ${errno}`, { path })
  }
  try {
    const st = fstatSync(fd)
    const m = meta(path, { uid: st.uid, mode: st.mode, isFile: st.isFile() })
    if (!m.isFile) throw new QkError(code, `${path} must be a regular file`, { path })
    if (m.uid !== 0) throw new QkError(code, `${path} must be owned by root, is owned by uid ${m.uid}`, { path })
    if ((m.mode & 0o022) !== 0) {
      throw new QkError(code, `${path} must not be writable by group or others, mode is ${(m.mode & 0o7777).toString(8).padStart(4, '0')}`, { path })
    }
    if (st.size > MAX_TRUSTED) throw new QkError(code, `${path} is larger than ${MAX_TRUSTED} bytes`, { path })
    const buf = Buffer.alloc(st.size)
    let n = 0
    for (let r = 1; r > 0 && n < buf.length; n += r) r = readSync(fd, buf, n, buf.length - n, null)
    return buf.subarray(0, n)
  } finally {
    closeSync(fd)
  }
}
