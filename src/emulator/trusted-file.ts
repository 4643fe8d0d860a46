// Files whose contents decide who may become what (the config, the public keys) must be as
// trustworthy as the binary: owned by root and not writable by group or others, and so must be
// every directory on the way to them, as native/front.c checks its own files: whoever can
// write a directory above a file can swap the file. The walk starts at / and follows no
// symlink (a symlink's target escapes the walk; name the file itself). With every directory
// root-controlled nobody else can change the path after the walk, so the file is then opened
// with O_NOFOLLOW and checked again on the descriptor we read from.
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync } from 'node:fs'
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
  checkAncestors(path, codes, meta)
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY | constants.O_NOFOLLOW)
  } catch (err) {
    const errno = errnoOf(err) ?? 'error'
    if (errno === 'ELOOP') throw new QkError(code, `${path}: ${path} is a symlink; name the file itself`, { path })
    throw new QkError(errno === 'ENOENT' ? codes.missing : codes.unsafe, `cannot open ${path}: ${errno}`, { path })
  }
  try {
    const st = fstatSync(fd)
    const m = meta(path, { uid: st.uid, mode: st.mode, isFile: st.isFile() })
    if (!m.isFile) throw new QkError(code, `${path} must be a regular file`, { path })
    if (m.uid !== 0) throw new QkError(code, `${path} must be owned by root, is owned by uid ${m.uid}`, { path })
    if ((m.mode & 0o022) !== 0) {
      throw new QkError(code, `${path} must not be writable by group or others, mode is ${octal(m.mode)}`, { path })
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

/**
 * Every directory from / down to the one holding `path`: a real directory (no symlink), owned
 * by root, not writable by group or others unless sticky (a sticky root-owned directory such as
 * /tmp lets nobody replace root's entries). The last component must not be a symlink either.
 */
export function checkAncestors(path: string, codes: TrustedCodes, meta: FileMeta = (_, m) => m): void {
  const code = codes.unsafe
  if (!path.startsWith('/')) throw new QkError(code, `${path} must be an absolute path`, { path })
  const parts = path.split('/').filter((p) => p !== '')
  if (parts.some((p) => p === '.' || p === '..')) throw new QkError(code, `${path} must not contain . or .. components`, { path })
  let dir = ''
  for (let i = 0; i <= parts.length; i++) {
    const here = dir === '' ? '/' : dir
    let st
    try {
      st = lstatSync(here)
    } catch (err) {
      const errno = errnoOf(err) ?? 'error'
      throw new QkError(errno === 'ENOENT' ? codes.missing : code, `cannot open ${path}: ${here}: ${errno}`, { path })
    }
    if (st.isSymbolicLink()) throw new QkError(code, `${path}: ${here} is a symlink; name the file itself`, { path })
    if (i === parts.length) break // the file itself: checked on its descriptor
    if (!st.isDirectory()) throw new QkError(codes.missing, `cannot open ${path}: ${here} is not a directory`, { path })
    const m = meta(here, { uid: st.uid, mode: st.mode, isFile: false })
    if (m.uid !== 0) throw new QkError(code, `${path}: directory ${here} must be owned by root, is owned by uid ${m.uid}`, { path })
    if ((m.mode & 0o022) !== 0 && (m.mode & 0o1000) === 0) {
      throw new QkError(code, `${path}: directory ${here} must not be writable by group or others, mode is ${octal(m.mode)}`, { path })
    }
    dir = `${dir}/${parts[i]}`
  }
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0')
}
