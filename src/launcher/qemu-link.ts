// The QEMU link: how the pod's lifecycle governs QEMUs that are not in its pid namespace (the
// kernel will not kill them when PID 1 dies, and we cannot signal them: pidfd_send_signal and
// kill refuse a process outside our pid namespace and its descendants). Each QEMU's enter helper
// hands over a pidfd of QEMU on the link socket and, once acked, leaves the connection to a
// watcher next to QEMU (native/podlink.c): "s" from us, our exit or the connection's end makes
// it stop QEMU, and it closes the connection once QEMU has exited. So we keep every acked
// connection (a VM restarted inside the pod links again) with its pidfd, and drop both when the
// watcher closes it; the pidfd then tells whether QEMU really exited.
//
// One loop: poll(2) on [wake eventfd, listening socket, connections awaiting their hello,
// linked connections] runs on a libuv worker thread (koffi's async call), and the results are
// handled here on the main thread, which then issues the next poll. So the event loop stays free
// (signals, the reaper), a QEMU's start waits no polling interval for its ack, and the fd set
// changes (accept, close) only between polls, never under a poll in flight. Node joins its
// worker threads at exit, so a poll must never be left waiting: end() wakes it through the
// eventfd, and each poll is capped anyway.
import { unlinkSync } from 'node:fs'
import { QkError } from '../emulator/errors.ts'
import { EAGAIN, type Libc, POLLIN } from './libc.ts'
import { checkHello } from './link-hello.ts'
import { openLinkSocket } from './link-socket.ts'

const HELLO_TIMEOUT_MS = 2000
const MAX_PENDING = 16
const POLL_CAP_MS = 1000
/** The byte that asks a watcher to stop its QEMU. */
export const STOP_BYTE = 's'

export type Log = (level: string, msg: string, extra?: object) => void

/** How a linked QEMU's connection ended: its watcher closed it after QEMU exited, or while QEMU still ran. */
export type LinkEnd = 'qemu exited' | 'watcher gone, qemu running'

export interface LinkedQemu {
  /** The connection to its watcher. */
  readonly conn: number
  /** A pidfd of QEMU: polls readable once QEMU has exited. Never signalled (see the top). */
  readonly pidfd: number
  /** Resolves when the watcher closes the connection (or end() closes it: null). */
  readonly ended: Promise<LinkEnd | null>
}

export interface QemuLink {
  /** The linked QEMUs whose connection is still open. */
  readonly linked: ReadonlySet<LinkedQemu>
  /** Stops accepting: the listening socket is closed and removed, hellos not yet acked are refused. Linked connections stay watched. */
  close(): Promise<void>
  /** Writes "s" to a linked QEMU's watcher; false when the write failed (the watcher is gone: its end follows). */
  requestStop(q: LinkedQemu): boolean
  /** close(), then ends the loop and closes every connection and pidfd left (their watchers then stop QEMU). */
  end(): Promise<void>
}

interface Entry extends LinkedQemu { settle(how: LinkEnd | null): void }

export function startQemuLink(libc: Libc, path: string, log: Log): QemuLink {
  const wake = libc.eventfd()
  if (wake < 0) throw new QkError('ERR_OS', `eventfd failed: errno ${-wake}`, { errno: -wake })
  const listen = openLinkSocket(libc, path)
  const pending = new Map<number, number>() // connection fd -> deadline (ms)
  const linked = new Set<Entry>()
  let accepting = true
  let closed: (() => void) | null = null
  let stopping = false

  const accept = () => {
    for (let fd = libc.accept(listen); fd >= 0; fd = libc.accept(listen)) {
      if (pending.size >= MAX_PENDING) {
        libc.close(fd)
        log('warn', `qemu link: refused a connection, ${MAX_PENDING} already wait for their hello`)
      } else {
        pending.set(fd, Date.now() + HELLO_TIMEOUT_MS)
        // The enter helper sends its hello right after connect, so it is usually here already:
        // read it now rather than one more poll round trip (~0.5 ms) later. EAGAIN leaves it pending.
        readHello(fd)
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
    // Ack only once we hold the pidfd: the enter helper forks the watcher and execs QEMU after the "k".
    const sent = libc.send(conn, Buffer.from('k'))
    let settle!: (how: LinkEnd | null) => void
    const ended = new Promise<LinkEnd | null>((r) => { settle = r })
    linked.add({ conn, pidfd: hello.pidfd, ended, settle })
    log('info', 'qemu link: linked a QEMU', { linked: linked.size, acked: sent === 1 })
  }
  const drop = (e: Entry, how: LinkEnd | null) => {
    linked.delete(e)
    libc.close(e.conn)
    libc.close(e.pidfd)
    e.settle(how)
  }
  // Readable: the watcher closed (EOF or an error), or sent bytes it should not (ignored).
  const readLinked = (e: Entry) => {
    const msg = libc.recvWithFds(e.conn)
    if (msg === -EAGAIN) return
    if (typeof msg !== 'number') {
      for (const fd of msg.fds) libc.close(fd)
      if (msg.data.length > 0) return
    }
    const exited = (libc.poll([e.pidfd], 0)[0] ?? 0) !== 0
    drop(e, exited ? 'qemu exited' : 'watcher gone, qemu running')
    if (exited) log('info', 'qemu link: a linked QEMU exited', { linked: linked.size })
    else log('error', 'qemu link: a watcher closed its link while its QEMU still runs; that QEMU is no longer tied to this pod', { linked: linked.size })
  }
  const stopAccepting = () => {
    accepting = false
    for (const fd of pending.keys()) libc.close(fd)
    pending.clear()
    libc.close(listen)
    try {
      unlinkSync(path)
    } catch {
      // already gone: nothing to clean
    }
    closed?.()
  }

  const loop = async () => {
    while (!stopping) {
      if (closed !== null && accepting) stopAccepting()
      const conns = [...pending.keys()]
      const links = [...linked]
      const now = Date.now()
      const soonest = Math.min(now + POLL_CAP_MS, ...pending.values())
      const head = accepting ? [wake, listen] : [wake]
      const rev = await libc.pollAsync([...head, ...conns, ...links.map((e) => e.conn)], Math.max(0, soonest - now))
      if (stopping) break
      if (rev.length === 0) await new Promise((r) => setTimeout(r, 10)) // EINTR or a failed poll: do not spin
      if ((rev[0] ?? 0) !== 0) libc.drainEventfd(wake)
      if (accepting && ((rev[1] ?? 0) & POLLIN) !== 0) accept()
      conns.forEach((conn, i) => {
        if (rev[head.length + i]) readHello(conn)
        else if (Date.now() >= pending.get(conn)!) {
          pending.delete(conn)
          libc.close(conn)
          log('warn', `qemu link: refused: no hello within ${HELLO_TIMEOUT_MS} ms`)
        }
      })
      links.forEach((e, i) => {
        if (rev[head.length + conns.length + i]) readLinked(e)
      })
    }
  }
  let looping = true
  const done = loop()
    .catch((e: unknown) => log('error', `qemu link: loop failed: ${e instanceof Error ? e.constructor.name : typeof e}`))
    .finally(() => {
      looping = false
      if (closed !== null && accepting) stopAccepting() // a close() the loop did not get to
    })

  let closing: Promise<void> | null = null
  const close = () => {
    closing ??= new Promise<void>((r) => {
      closed = r
      if (looping) libc.signalEventfd(wake)
      else stopAccepting() // no poll in flight: safe here
    })
    return closing
  }
  return {
    linked,
    close,
    requestStop: (q) => libc.send(q.conn, Buffer.from(STOP_BYTE)) === 1,
    async end() {
      await close()
      stopping = true
      libc.signalEventfd(wake)
      await done
      for (const e of [...linked]) drop(e, null)
      libc.close(wake)
    },
  }
}
