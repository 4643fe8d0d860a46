// The agent's index of launcher processes (issue 9 item 3): the pids whose argv[0] basename is
// launcher_name, kept current from the proc connector's fork/exec/exit events (proc-connector.ts)
// so a launch costs the same at 100 or 10k processes. The index only names candidates:
// findTarget pins and re-reads every one exactly as after a scan, so a stale entry costs one
// pidfd_open, never a wrong answer. What must never happen is a miss, and the rules below are
// ordered for that.
//
// Order at open: subscribe FIRST, then scan procRoot, then apply the events queued meanwhile.
// Every event is applied by reading the pid's state now (never by trusting the event's age), so
// applying an event that the scan already saw is a no-op (the dedupe), and a pid seen by the
// scan is removed only when a read says it is no launcher any more.
//
// Exactness: candidates() drains the socket until EAGAIN before answering. The kernel queues
// the exec event in exec(2) itself, before the new image runs, and the fork event before fork
// returns; so every launcher that exists when the front's request arrives has its event queued
// by then, and is in the answer.
//   EXEC (tgid): read its cmdline; add if argv[0] matches, else remove.
//   FORK of a process (child_pid == child_tgid) whose parent is indexed: add the child (it has
//     its parent's argv until it execs, and that exec is a later event).
//   EXIT of a thread-group leader (pid == tgid) that is indexed: read its cmdline and remove it
//     unless it still reads as a launcher (a zombie's reads empty; a recycled pid that is a
//     launcher again keeps its entry). Thread events are ignored.
//   An unreadable cmdline (other than ENOENT/ESRCH) keeps the pid, as the scan does.
//   ENOBUFS (the kernel dropped events) or a gap in a CPU's sequence numbers: full rescan, logged.
//   The sequence numbers are per CPU and start unknown, so an event lost without ENOBUFS (the
//   kernel's GFP_NOWAIT allocation failing) before the first event we get from that CPU goes
//   unseen; ENOBUFS covers the common loss (a full buffer), and the window is one event per CPU.
// A drain that finds more than 20k datagrams queued (a fork storm) stops and rescans instead,
// so candidates() never costs more than the scan it replaces by much, nor waits on a storm.
// Events are hints, and forged ones change nothing: the socket takes only the kernel's (port
// 0), and every removal is decided by a read of /proc, never by the event alone.
// A drain timer (unref'd, 100 ms) keeps the socket buffer from overflowing between launches.
// A source that fails after open (recv errors other than EAGAIN/ENOBUFS) turns the index into
// the scan fallback for good, logged once; it never throws from the timer.
//
// Fallback: the connector works only as root in the init user and pid namespace, and its pids
// are the init pid namespace's, so procRoot must be that namespace's /proc (procRoot/self is
// our own pid). Otherwise the index logs once why and every candidates() is a full scan.
//
// Deviations from the brief, argued:
//   - openProcIndex takes an optional `events` opener (tests pass a queue of datagrams built
//     byte by byte; the default is the real connector).
//   - A process that rewrites its argv in memory without exec (overwriting its argv strings, or
//     prctl(PR_SET_MM_ARG_START), which needs CAP_SYS_RESOURCE) to claim the launcher name is
//     not indexed, where the scan would see it. Acceptable: a claimant counts only if it holds
//     this VM's token in its mount namespace, i.e. it is inside the pod (or is root). KubeVirt's
//     virt-launcher is a Go binary that never rewrites argv, so every real launcher, and every
//     stale or migrating pod of the same VM (the ambiguity the refusal exists for), was exec'd
//     and is indexed. A rewriter is hostile and already inside the pod: missing it can turn an
//     AMBIGUOUS into the choice of the exec'd launcher, or leave NOT_FOUND when it alone claims
//     the VM; it can never make itself the chosen target, because only indexed processes are.
//     The converse (an exec'd launcher that rewrites its argv away) stays indexed and is
//     rejected by findTarget's re-read.
import { readFileSync, readlinkSync } from 'node:fs'
import { basename } from 'node:path'
import type { Logger } from './log.ts'
import { EAGAIN, ENOBUFS, openProcConnector, parseDatagram, type ProcEvent, type ProcEventSource } from './proc-connector.ts'
import { scanLaunchers } from './target.ts'

export interface ProcIndexOptions {
  procRoot: string
  launcherName: string
  log?: Pick<Logger, 'info' | 'warn'>
  /** Opens the event source; throws (with the reason) when there is none. */
  events?: () => ProcEventSource
  /** The drain timer's period; 0: none (tests drive candidates() alone). */
  drainMs?: number
  /** For tests: datagrams per drain before a scan answers instead. */
  maxDrain?: number
}

export interface ProcIndex {
  /** Pids whose argv[0] basename is launcherName, after every pending event. */
  candidates(): number[]
  /** 'events' while the connector feeds it, 'scan' in fallback. */
  readonly mode: 'events' | 'scan'
  /** Full rescans so far (overflow or lost sequence), for the bench and the tests. */
  readonly rescans: number
  close(): void
}

const DRAIN_MS = 100
const DGRAM = 64 * 1024
/** Datagrams one drain reads before it answers with a scan instead (see drainOnce). */
const MAX_DRAIN = 20_000

export function openProcIndex(o: ProcIndexOptions): ProcIndex {
  const name = Buffer.from(o.launcherName)
  const scan = () => [...scanLaunchers(o.procRoot, name)]
  let source: ProcEventSource
  try {
    if (o.events === undefined) assertOwnPidNamespace(o.procRoot)
    source = (o.events ?? openProcConnector)()
  } catch (err) {
    o.log?.warn({ procRoot: o.procRoot, reason: (err as Error).message }, 'proc index: no process events, every launch scans procRoot')
    return { candidates: scan, mode: 'scan', rescans: 0, close() {} }
  }

  const pids = new Set<number>()
  const lastSeq = new Map<number, number>()
  const buf = Buffer.alloc(DGRAM)
  const maxDrain = o.maxDrain ?? MAX_DRAIN
  let rescans = 0
  let closed = false
  let broken = false
  const rescan = (why: string) => {
    rescans++
    o.log?.warn({ why }, 'proc index: events lost, rescanning procRoot')
    // lastSeq is kept: the kernel's counters run on, so the next event still proves a gap.
    pids.clear()
    for (const p of scan()) pids.add(p)
  }
  const isLauncher = (pid: number) => readsAsLauncher(o.procRoot, pid, o.launcherName)
  const apply = (e: ProcEvent): string | undefined => {
    if (e.kind === 'ack') return undefined
    const prev = lastSeq.get(e.cpu)
    lastSeq.set(e.cpu, e.seq)
    const lost = prev !== undefined && e.seq !== ((prev + 1) >>> 0) ? `cpu ${e.cpu} sequence ${e.seq} after ${prev}` : undefined
    switch (e.kind) {
      case 'exec':
        if (isLauncher(e.tgid)) pids.add(e.tgid)
        else pids.delete(e.tgid)
        break
      case 'fork':
        if (e.childPid === e.childTgid && pids.has(e.parentTgid)) pids.add(e.childTgid)
        break
      case 'exit':
        if (e.pid === e.tgid && pids.has(e.tgid) && !isLauncher(e.tgid)) pids.delete(e.tgid)
        break
    }
    return lost
  }
  // A failing socket (or a bug in applying an event) must not end the agent from the timer,
  // nor make the index guess: it falls back to scanning for good, and says so once.
  const drain = () => {
    if (broken) return
    try {
      drainOnce()
    } catch (err) {
      broken = true
      o.log?.warn({ reason: (err as Error).message }, 'proc index: the event source failed, every launch scans procRoot from now on')
      pids.clear()
      source.close()
    }
  }
  const drainOnce = () => {
    let lost: string | undefined
    for (let got = 0; ; got++) {
      if (got === maxDrain) {
        // A fork storm may never let the queue run dry. A scan now is as exact as today's;
        // the rest of the queue is applied later (each event re-reads, so late is harmless).
        lost ??= `more than ${maxDrain} datagrams pending`
        break
      }
      const n = source.recv(buf)
      if (n === -EAGAIN) break
      if (n === -ENOBUFS) { lost ??= 'the socket buffer overflowed (ENOBUFS)'; continue }
      for (const e of parseDatagram(buf, n)) lost = apply(e) ?? lost
    }
    // After the drain, so the rescan follows every event the kernel still had for us.
    if (lost !== undefined) rescan(lost)
  }

  for (const p of scan()) pids.add(p)
  drainOnce()
  const drainMs = o.drainMs ?? DRAIN_MS
  const timer = drainMs > 0 ? setInterval(() => { if (!closed) drain() }, drainMs).unref() : undefined
  return {
    candidates() {
      drain()
      return broken ? scan() : [...pids].sort((a, b) => a - b)
    },
    get mode() { return broken ? 'scan' as const : 'events' as const },
    get rescans() { return rescans },
    close() {
      if (closed) return
      closed = true
      if (timer !== undefined) clearInterval(timer)
      if (!broken) source.close()
    },
  }
}

/** The connector's pids are the init pid namespace's; procRoot must show that one (ours). */
function assertOwnPidNamespace(procRoot: string): void {
  let self: string
  try {
    self = readlinkSync(`${procRoot}/self`)
  } catch {
    throw new Error(`${procRoot}/self is no link: ${procRoot} is not this process's pid namespace`)
  }
  if (self !== String(process.pid)) throw new Error(`${procRoot}/self is ${self}, expected ${process.pid}: ${procRoot} is not this process's pid namespace`)
}

/** argv[0]'s basename, as the scan judges it; an unreadable live cmdline counts (findTarget decides). */
function readsAsLauncher(procRoot: string, pid: number, launcherName: string): boolean {
  let text: string
  try {
    text = readFileSync(`${procRoot}/${pid}/cmdline`, 'latin1')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code !== 'ENOENT' && code !== 'ESRCH'
  }
  const end = text.indexOf('\0')
  const argv0 = end < 0 ? text : text.slice(0, end)
  return argv0 !== '' && !argv0.endsWith('/') && basename(argv0) === launcherName
}
