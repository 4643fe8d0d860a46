// The kernel's process events connector (linux/cn_proc.h): a NETLINK_CONNECTOR socket bound to
// CN_IDX_PROC that receives one datagram per fork, exec and exit on the node, sent from the
// task that forks, execs or exits before it returns to user space. The proc index
// (proc-index.ts) is built on it; this file only opens the socket and parses the wire layout.
//
// Order at open (each step needs the one before):
//   1. socket(AF_NETLINK, SOCK_DGRAM|SOCK_CLOEXEC, NETLINK_CONNECTOR);
//   2. SO_RCVBUFFORCE (root only; a small buffer overflows in a fork storm, which costs a rescan);
//   3. bind to the CN_IDX_PROC multicast group;
//   4. send PROC_CN_MCAST_LISTEN with a non-zero ack and wait (bounded) for the kernel's ack:
//      its err is the only place the kernel says EPERM (not the init user and pid namespace,
//      where cn_proc pids would not be ours). Events that arrive before the ack are kept and
//      handed out first, so nothing sent after step 3 is lost.
// Every datagram is kernel-made (netlink port 0); a datagram from any other sender is dropped,
// since a local process may unicast to our port.
//
// Layouts (all native-endian, LP64 x86_64/arm64 alike):
//   nlmsghdr  len u32, type u16, flags u16, seq u32, pid u32                   (16 bytes)
//   cn_msg    idx u32, val u32, seq u32, ack u32, len u16, flags u16           (20 bytes)
//   proc_event what u32, cpu u32, timestamp u64, event_data (union)            (16 + data)
import { QkError } from './errors.ts'
import { libc } from './sys.ts'

export const NLMSG_HDRLEN = 16
export const CN_MSG_LEN = 20
export const CN_IDX_PROC = 1
export const CN_VAL_PROC = 1
export const NLMSG_DONE = 3
export const NLMSG_ERROR = 2
export const PROC_EVENT_NONE = 0
export const PROC_EVENT_FORK = 1
export const PROC_EVENT_EXEC = 2
export const PROC_EVENT_EXIT = 0x80000000
const PROC_CN_MCAST_LISTEN = 1
const PROC_CN_MCAST_IGNORE = 2

const AF_NETLINK = 16
const SOCK_DGRAM = 2
const SOCK_CLOEXEC = 0o2000000
const NETLINK_CONNECTOR = 11
const SOL_SOCKET = 1
const SO_RCVBUFFORCE = 33
const SO_RCVTIMEO = 20
const MSG_DONTWAIT = 0x40
export const EAGAIN = 11
export const ENOBUFS = 105
const EINTR = 4
const RCVBUF = 64 << 20
const ACK_WAIT_MS = 2000

/** One parsed process event; pids are the init pid namespace's. */
export type ProcEvent =
  | { kind: 'fork'; cpu: number; seq: number; parentTgid: number; childPid: number; childTgid: number }
  | { kind: 'exec'; cpu: number; seq: number; pid: number; tgid: number }
  | { kind: 'exit'; cpu: number; seq: number; pid: number; tgid: number }
  | { kind: 'ack'; seq: number; ack: number; err: number }
  | { kind: 'other'; cpu: number; seq: number }

/** What the index reads from: the real socket, or a test's queue of datagrams. */
export interface ProcEventSource {
  /** Copies the next pending datagram into buf: its length, or -EAGAIN (none) or -ENOBUFS (lost some). */
  recv(buf: Buffer): number
  close(): void
}

/**
 * Every connector event in one datagram (a datagram may carry several netlink messages).
 * Bytes that do not form a whole proc event are skipped: they come from the kernel, but a
 * layout we do not know is no reason to trust a guess.
 */
export function parseDatagram(buf: Buffer, n: number): ProcEvent[] {
  const out: ProcEvent[] = []
  let off = 0
  while (off + NLMSG_HDRLEN <= n) {
    const len = buf.readUInt32LE(off)
    if (len < NLMSG_HDRLEN || off + len > n) break
    const type = buf.readUInt16LE(off + 4)
    const cn = off + NLMSG_HDRLEN
    if (type !== NLMSG_ERROR && len >= NLMSG_HDRLEN + CN_MSG_LEN + 16
      && buf.readUInt32LE(cn) === CN_IDX_PROC && buf.readUInt32LE(cn + 4) === CN_VAL_PROC) {
      const ev = parseEvent(buf, off, len)
      if (ev !== undefined) out.push(ev)
    }
    off += (len + 3) & ~3
  }
  return out
}

function parseEvent(buf: Buffer, off: number, len: number): ProcEvent | undefined {
  const cn = off + NLMSG_HDRLEN
  const seq = buf.readUInt32LE(cn + 8)
  const pe = cn + CN_MSG_LEN
  const what = buf.readUInt32LE(pe)
  const cpu = buf.readUInt32LE(pe + 4)
  const d = pe + 16
  const has = (bytes: number) => d + bytes <= off + len
  switch (what) {
    case PROC_EVENT_NONE:
      return has(4) ? { kind: 'ack', seq, ack: buf.readUInt32LE(cn + 12), err: buf.readUInt32LE(d) } : undefined
    case PROC_EVENT_FORK:
      return has(16) ? { kind: 'fork', cpu, seq, parentTgid: buf.readUInt32LE(d + 4), childPid: buf.readUInt32LE(d + 8), childTgid: buf.readUInt32LE(d + 12) } : undefined
    case PROC_EVENT_EXEC:
      return has(8) ? { kind: 'exec', cpu, seq, pid: buf.readUInt32LE(d), tgid: buf.readUInt32LE(d + 4) } : undefined
    case PROC_EVENT_EXIT:
      return has(8) ? { kind: 'exit', cpu, seq, pid: buf.readUInt32LE(d), tgid: buf.readUInt32LE(d + 4) } : undefined
    default:
      return { kind: 'other', cpu, seq }
  }
}

/** The listen/ignore request: nlmsghdr + cn_msg + one u32 op. */
export function controlMessage(op: number, ack: number, portId: number): Buffer {
  const b = Buffer.alloc(NLMSG_HDRLEN + CN_MSG_LEN + 4)
  b.writeUInt32LE(b.length, 0)
  b.writeUInt16LE(NLMSG_DONE, 4)
  b.writeUInt32LE(portId, 12)
  b.writeUInt32LE(CN_IDX_PROC, 16)
  b.writeUInt32LE(CN_VAL_PROC, 20)
  b.writeUInt32LE(ack, 24) // seq: echoed in the ack
  b.writeUInt32LE(ack, 28)
  b.writeUInt16LE(4, 32)
  b.writeUInt32LE(op, 36)
  return b
}

/** Opens and subscribes (steps 1-4); throws ERR_OS saying why when the kernel refuses. */
export function openProcConnector(): ProcEventSource {
  const { koffi, libc: lc } = libc()
  const socket = lc.func('int socket(int, int, int)')
  const setsockopt = lc.func('int setsockopt(int, int, int, const void *, uint32_t)')
  const bind = lc.func('int bind(int, const void *, uint32_t)')
  const send = lc.func('long send(int, const void *, unsigned long, int)')
  const recvfrom = lc.func('long recvfrom(int, void *, unsigned long, int, void *, _Inout_ uint32_t *)')
  const close = lc.func('int close(int)')
  const fail = (what: string, errno: number): never => {
    throw new QkError('ERR_OS', `proc connector: ${what} failed: errno ${errno}`, { errno })
  }

  const fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR) as number
  if (fd < 0) fail('socket(AF_NETLINK, NETLINK_CONNECTOR)', koffi.errno())
  let ok = false
  try {
    const int = Buffer.alloc(4)
    int.writeInt32LE(RCVBUF)
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, int, 4) !== 0) fail('setsockopt(SO_RCVBUFFORCE)', koffi.errno())
    const sa = Buffer.alloc(12)
    sa.writeUInt16LE(AF_NETLINK, 0)
    sa.writeUInt32LE(CN_IDX_PROC, 8) // nl_pid 0: the kernel assigns our port
    if (bind(fd, sa, 12) !== 0) fail('bind(CN_IDX_PROC)', koffi.errno())
    const tv = Buffer.alloc(16)
    tv.writeBigInt64LE(BigInt(Math.floor(ACK_WAIT_MS / 1000)), 0)
    tv.writeBigInt64LE(BigInt((ACK_WAIT_MS % 1000) * 1000), 8)
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16) !== 0) fail('setsockopt(SO_RCVTIMEO)', koffi.errno())

    const from = Buffer.alloc(12)
    const fromLen = [12]
    const recvOne = (buf: Buffer, flags: number): number => {
      for (;;) {
        fromLen[0] = 12
        const r = Number(recvfrom(fd, buf, buf.length, flags, from, fromLen))
        if (r < 0) {
          const e = koffi.errno()
          if (e === EINTR) continue
          return -e
        }
        if (from.readUInt32LE(4) !== 0) continue // not the kernel: a local sender's forgery
        return r
      }
    }

    const ackId = (process.pid & 0xffff) | 0x10000
    const msg = controlMessage(PROC_CN_MCAST_LISTEN, ackId, 0)
    if (Number(send(fd, msg, msg.length, 0)) !== msg.length) fail('send(PROC_CN_MCAST_LISTEN)', koffi.errno())
    const early: Buffer[] = []
    const buf = Buffer.alloc(8192)
    for (const deadline = Date.now() + ACK_WAIT_MS; ;) {
      const n = recvOne(buf, 0)
      if (n === -EAGAIN || Date.now() > deadline) fail('waiting for the PROC_CN_MCAST_LISTEN ack', EAGAIN)
      if (n === -ENOBUFS) { early.push(Buffer.alloc(0)); continue } // replayed as an overflow
      if (n < 0) fail('recv', -n)
      const acks = parseDatagram(buf, n).filter((e) => e.kind === 'ack' && e.ack === ackId + 1)
      if (acks.length === 0) { early.push(Buffer.from(buf.subarray(0, n))); continue }
      const err = (acks[0] as { err: number }).err
      if (err !== 0) fail('PROC_CN_MCAST_LISTEN (the connector serves only the init user and pid namespace)', err)
      break
    }
    ok = true
    return {
      recv(into) {
        const e = early.shift()
        if (e !== undefined) {
          if (e.length === 0) return -ENOBUFS
          e.copy(into)
          return e.length
        }
        const n = recvOne(into, MSG_DONTWAIT)
        return n >= 0 || n === -EAGAIN || n === -ENOBUFS ? n : fail('recv', -n)
      },
      close() {
        const m = controlMessage(PROC_CN_MCAST_IGNORE, 0, 0)
        send(fd, m, m.length, MSG_DONTWAIT)
        close(fd)
      },
    }
  } finally {
    if (!ok) close(fd)
  }
}
