// The QEMU link: how the pod's lifecycle governs QEMUs that are not in its pid namespace (the
// kernel will not kill them when PID 1 dies). Each QEMU hands over a pidfd of itself on the
// link socket; we keep every live one (a VM restarted inside the pod links again) and drop a
// pidfd once it polls readable, which is when that QEMU has exited.
//
// One loop: poll(2) on [wake eventfd, listening socket, open connections, pidfds] runs on a
// libuv worker thread (koffi's async call), and the results are handled here on the main
// thread, which then issues the next poll. So the event loop stays free (signals, the reaper),
// a QEMU's start waits no polling interval for its ack, and the fd set changes only between
// polls, never under a poll in flight. Node joins its worker threads at exit, so a poll must
// never be left waiting: stop() wakes it through the eventfd, and each poll is capped anyway.
import { unlinkSync } from 'node:fs'
import { QkError } from '../emulator/errors.ts'
import { EAGAIN, type Libc, POLLIN } from './libc.ts'
import { checkHello } from './link-hello.ts'
import { openLinkSocket } from './link-socket.ts'

const HELLO_TIMEOUT_MS = 2000
const MAX_PENDING = 16
const POLL_CAP_MS = 1000

export type Log = (level: string, msg: string, extra?: object) => void

export interface QemuLink {
  /** Pidfds of the linked QEMUs not yet seen to exit. */
  readonly pidfds: ReadonlySet<number>
  /** Stops accepting, waits for the poll in flight, removes the socket. Pidfds stay open. */
  stop(): Promise<void>
}

export function startQemuLink(libc: Libc, path: string, log: Log): QemuLink {
  const wake = libc.eventfd()
  if (wake < 0) throw new QkError('ERR_OS', `eventfd failed: errno ${-wake}`, { errno: -wake })
  const listen = openLinkSocket(libc, path)
  const pending = new Map<number, number>() // connection fd -> deadline (ms)
  const pidfds = new Set<number>()
  let stopping = false

  const accept = () => {
    for (let fd = libc.accept(listen); fd >= 0; fd = libc.accept(listen)) {
      if (pending.size >= MAX_PENDING) {
        libc.close(fd)
        log('warn', `qemu link: refused a connection, ${MAX_PENDING} already wait for their hello`)
      } else {
        pending.set(fd, Date.now() + HELLO_TIMEOUT_MS)
      }
    }
  }
  const readHello = (conn: number) => {
    const msg = libc.recvWithFds(conn)
    if (msg === -EAGAIN) return
    pending.delete(conn)
    const peer = libc.peerPidfd(conn)
    const hello = typeof msg === 'number'
      ? { ok: false as const, reason: `recvmsg failed: errno ${-msg}` }
      : checkHello(msg, libc.close, peer >= 0 ? peer : null)
    if (peer >= 0) libc.close(peer)
    if (!hello.ok) {
      libc.close(conn)
      log('warn', `qemu link: refused: ${hello.reason}`)
      return
    }
    // Ack only once we hold the pidfd: the enter helper execs QEMU after the "k".
    pidfds.add(hello.pidfd)
    const sent = libc.send(conn, Buffer.from('k'))
    libc.close(conn)
    log('info', 'qemu link: linked a QEMU', { linked: pidfds.size, acked: sent === 1 })
  }

  const loop = async () => {
    while (!stopping) {
      const conns = [...pending.keys()]
      const watched = [...pidfds]
      const now = Date.now()
      const soonest = Math.min(now + POLL_CAP_MS, ...pending.values())
      const rev = await libc.pollAsync([wake, listen, ...conns, ...watched], Math.max(0, soonest - now))
      if (stopping) break
      if (rev.length === 0) await new Promise((r) => setTimeout(r, 10)) // EINTR or a failed poll: do not spin
      if ((rev[1]! & POLLIN) !== 0) accept()
      conns.forEach((conn, i) => {
        if (rev[2 + i]) readHello(conn)
        else if (Date.now() >= pending.get(conn)!) {
          pending.delete(conn)
          libc.close(conn)
          log('warn', `qemu link: refused: no hello within ${HELLO_TIMEOUT_MS} ms`)
        }
      })
      watched.forEach((pidfd, i) => {
        if (rev[2 + conns.length + i]) {
          pidfds.delete(pidfd)
          libc.close(pidfd)
          log('info', 'qemu link: a linked QEMU exited', { linked: pidfds.size })
        }
      })
    }
  }
  const done = loop().catch((e: unknown) => log('error', `qemu link: loop failed: ${e instanceof Error ? e.constructor.name : typeof e}`))

  return {
    pidfds,
    async stop() {
      stopping = true
      libc.signalEventfd(wake)
      await done
      for (const fd of pending.keys()) libc.close(fd)
      pending.clear()
      libc.close(listen)
      libc.close(wake)
      try {
        unlinkSync(path)
      } catch {
        // already gone: nothing to clean
      }
    },
  }
}
