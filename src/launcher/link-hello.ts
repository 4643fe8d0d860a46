// One QEMU link connection's message, checked. Protocol (fixed with the node's enter helper):
// the client sends exactly the 8 bytes "QKLINK1\n" with exactly one SCM_RIGHTS fd, a pidfd of
// itself (QEMU once it execs); we reply "k" once we hold it. Anything in the pod can connect,
// so the message is hostile input: every fd that arrived is closed unless it is the one pidfd.
import { readlinkSync } from 'node:fs'
import type { Received } from './libc.ts'

export const LINK_MAGIC = 'QKLINK1\n'

export type Hello = { ok: true; pidfd: number } | { ok: false; reason: string }

export function checkHello(msg: Received, close: (fd: number) => void): Hello {
  const refuse = (reason: string): Hello => {
    for (const fd of msg.fds) close(fd)
    return { ok: false, reason }
  }
  if (msg.data.length === 0) return refuse('connection closed before the hello')
  if (msg.data.toString('latin1') !== LINK_MAGIC) return refuse(`expected the 8 bytes "QKLINK1\\n", got ${msg.data.length} other bytes`)
  if (msg.truncated || msg.foreign) return refuse('expected only SCM_RIGHTS control data')
  if (msg.fds.length !== 1) return refuse(`expected 1 fd, got ${msg.fds.length}`)
  const fd = msg.fds[0]!
  let kind: string
  try {
    kind = readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    kind = 'unreadable'
  }
  if (kind !== 'anon_inode:[pidfd]') return refuse(`expected a pidfd, got ${kind.startsWith('/') ? 'a file' : JSON.stringify(kind)}`)
  return { ok: true, pidfd: fd }
}
