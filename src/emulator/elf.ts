// The one ELF fact the hand-off needs: does a binary name a program interpreter (PT_INTERP)?
// With qemu_binary_from = "host" the enter helper opens QEMU on the host and execs it after
// setns; the kernel then resolves PT_INTERP (and the loader its libraries) in the pod's root,
// so the pod's own ld.so would run as QEMU. Only a binary without PT_INTERP is the host's
// binary all the way. The file is root-controlled (a host path in a root-owned config), but
// its bytes are still parsed by bounds, never trusted for lengths.
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'
import { QkError, errnoOf } from './errors.ts'

const PT_INTERP = 3
const MAX_HEADERS = 0x10000

/** The PT_INTERP path of the ELF file at `path`, or undefined when it has none. */
export function interpreterOf(path: string): string | undefined {
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  } catch (err) {
    throw new QkError('ERR_CONFIG_INVALID', `qemu_binary ${path} cannot be opened on the host: ${errnoOf(err) ?? 'error'}`, { key: 'qemu_binary', path })
  }
  try {
    const bad = (why: string) => new QkError('ERR_CONFIG_INVALID', `qemu_binary ${path} is not a usable ELF file: ${why}`, { key: 'qemu_binary', path })
    if (!fstatSync(fd).isFile()) throw bad('not a regular file')
    const read = (pos: number, len: number): Buffer => {
      const buf = Buffer.alloc(len)
      if (readSync(fd, buf, 0, len, pos) !== len) throw bad(`short read at ${pos}`)
      return buf
    }
    const eh = read(0, 64)
    if (eh.readUInt32BE(0) !== 0x7f454c46) throw bad('no ELF magic')
    if (eh[4] !== 2 || eh[5] !== 1) throw bad('expected a 64-bit little-endian ELF')
    const phoff = Number(eh.readBigUInt64LE(32))
    const phentsize = eh.readUInt16LE(54)
    const phnum = eh.readUInt16LE(56)
    if (phentsize < 56 || phnum * phentsize > MAX_HEADERS) throw bad('program headers out of range')
    const ph = read(phoff, phnum * phentsize)
    for (let i = 0; i < phnum; i++) {
      const at = i * phentsize
      if (ph.readUInt32LE(at) !== PT_INTERP) continue
      const off = Number(ph.readBigUInt64LE(at + 8))
      const size = Number(ph.readBigUInt64LE(at + 32))
      if (size === 0 || size > 4096) throw bad('PT_INTERP out of range')
      return read(off, size).toString('latin1').replace(/\0.*$/s, '')
    }
    return undefined
  } finally {
    closeSync(fd)
  }
}

/** Refuses `qemu_binary_from = "host"` with a dynamically linked QEMU. */
export function checkHostQemu(path: string): void {
  const interp = interpreterOf(path)
  if (interp === undefined) return
  throw new QkError('ERR_CONFIG_INVALID',
    `qemu_binary ${path} is dynamically linked (PT_INTERP ${interp}): with qemu_binary_from = "host" the kernel would load that loader and its libraries from the pod's root; use a static QEMU or qemu_binary_from = "pod"`,
    { key: 'qemu_binary', path })
}
