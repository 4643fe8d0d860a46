// `qemu-kube agent`: the resident verifier (issue 9, docs/CHAIN.md section 3). One long-lived
// root process per node keeps the config and keys warm and answers the setuid front over a
// root-only unix socket, one request per connection.
// Order at start: config and keys (a broken config never listens), umask 077, the socket's
// directory (root, 0700), a live agent there refuses this one, a stale socket is unlinked,
// bind, then signals and watches. SIGTERM: stop accepting, let every accepted connection finish
// (each is bounded: 2 s to send its request, then the answer), resolve 0. SIGHUP, or a change
// to the config or a key file: reload both; a reload that fails keeps what was loaded.
// Every peer is a root process, but its bytes are checked as hostile all the same: a broken or
// stuck front must cost only its own connection.
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { dirname } from 'node:path'
import { closeQuietly, answerLaunch, refusal, type AgentState, type Answer } from './agent-launch.ts'
import { encodeReply, RequestParser, type AgentRequest } from './agent-protocol.ts'
import { socketOps, type SocketOps } from './agent-socket.ts'
import { ownCgroupProcs, warmCgroupLock } from './cgroup.ts'
import { loadConfig } from './config.ts'
import { asQkError, errnoOf, QkError } from './errors.ts'
import { FileWatch } from './file-watch.ts'
import { loadKeys } from './keys.ts'
import { makeLogger, type Logger } from './log.ts'
import { openProcIndex, type ProcIndex } from './proc-index.ts'
import { AGENT_SOCKET, CONFIG_PATH } from './paths.ts'
import type { Consumer } from './replay.ts'
import { sys } from './sys.ts'
import { readStat } from './target.ts'

export interface AgentOptions {
  configPath?: string
  socketPath?: string
  log?: Logger
  /** Whole request deadline, ms (the contract's 2 s; tests may shorten it). */
  requestTimeoutMs?: number
  /** Answers status/metrics (cli-agent.ts wires status/); an op without one is refused (ERR_USAGE). */
  ops?: Partial<Record<'status' | 'metrics', (req: AgentRequest, state: AgentState) => Promise<string>>>
  /** Told of every decision (metrics). */
  observe?: (d: Answer['decision'], seconds: number) => void
}

const REQUEST_TIMEOUT_MS = 2000
const ENOPROTOOPT = 92
const RELOAD_DEBOUNCE_MS = 200

/** Runs until SIGTERM (or SIGINT) and the drain; resolves the exit status. */
export async function runAgent(o: AgentOptions = {}): Promise<number> {
  const configPath = o.configPath ?? CONFIG_PATH
  const socketPath = o.socketPath ?? AGENT_SOCKET
  const log = o.log ?? makeLogger('info', 1)
  let state = load(configPath)
  log.level = state.config.log_level
  // The launcher index follows proc_root and launcher_name; a reload that changes either
  // reopens it. A request that began with the old one (it awaits the token check before
  // findTarget) gets a full scan instead of a closed index.
  let index: ProcIndex | undefined
  let indexKey = ''
  const withIndex = (s: AgentState): AgentState => {
    const key = `${s.config.proc_root}\0${s.config.launcher_name}`
    if (index === undefined || indexKey !== key) {
      index?.close()
      index = openProcIndex({ procRoot: s.config.proc_root, launcherName: s.config.launcher_name, log })
      indexKey = key
    }
    const mine = index
    return { ...s, candidates: () => (index === mine ? mine.candidates() : undefined) }
  }
  state = withIndex(state)

  process.umask(0o077)
  prepareDir(dirname(socketPath))
  await clearStale(socketPath)
  const server = createServer({ allowHalfOpen: true })
  const live = new Set<Socket>()
  await listen(server, socketPath)
  chmodSync(socketPath, 0o600)
  const ours = lstatSync(socketPath).ino
  log.info({ socket: socketPath, config: configPath, keys: state.keys.length, procIndex: index?.mode }, 'agent listening')

  let reloadTimer: NodeJS.Timeout | undefined
  const files = () => [configPath, ...state.config.token_public_keys]
  // Watches are in place before "reloaded" is logged, so a write after that line is seen.
  const reload = (why: string) => {
    try {
      state = withIndex(load(configPath))
      log.level = state.config.log_level
    } catch (e) {
      const err = asQkError(e)
      log.error({ why, code: err.code, reason: err.message, hint: err.hint }, 'agent reload failed; keeping the previous config and keys')
      return
    }
    // A newly watched directory may have changed since we read it: read once more (the set is
    // then the same, so this ends).
    if (watch.update(files())) schedule('a newly watched key directory')
    log.info({ why, keys: state.keys.length }, 'agent reloaded config and keys')
  }
  const schedule = (why: string) => {
    clearTimeout(reloadTimer)
    reloadTimer = setTimeout(() => reload(why), RELOAD_DEBOUNCE_MS)
  }
  const watch = new FileWatch(schedule)
  watch.update(files())
  const onHup = () => schedule('SIGHUP')
  process.on('SIGHUP', onHup)

  const serve = (sock: Socket) => {
    live.add(sock)
    sock.on('close', () => {
      live.delete(sock)
      if (stopping && live.size === 0) drained()
    })
    try {
      handle(sock, () => state, log, socketOps(), o)
    } catch (e) {
      // A bug or a connection gone before it was handled costs that connection, not the agent.
      const err = asQkError(e)
      log.error({ code: err.code, reason: err.message }, 'agent: connection dropped')
      sock.destroy()
    }
  }
  server.on('connection', serve)

  let stopping = false
  let drained: () => void = () => {}
  const done = new Promise<void>((res) => { drained = res })
  const stop = (signal: string) => {
    if (stopping) return
    stopping = true
    log.info({ signal, inFlight: live.size }, 'agent stopping: no new connections, draining')
    server.close()
    if (live.size === 0) drained()
  }
  const onTerm = () => stop('SIGTERM')
  const onInt = () => stop('SIGINT')
  process.on('SIGTERM', onTerm)
  process.on('SIGINT', onInt)
  await done
  // Ours still (same inode): removed, so the front sees `absent` rather than ECONNREFUSED.
  try {
    if (lstatSync(socketPath).ino === ours) unlinkSync(socketPath)
  } catch {
    // Already gone.
  }
  clearTimeout(reloadTimer)
  index?.close()
  watch.close()
  process.off('SIGHUP', onHup)
  process.off('SIGTERM', onTerm)
  process.off('SIGINT', onInt)
  log.info({}, 'agent stopped')
  return 0
}

function load(configPath: string): AgentState {
  const config = loadConfig(configPath)
  return { config, keys: loadKeys(config.token_public_keys), ownCgroupProcs: ownCgroupProcs(config.proc_root, config.cgroup_root) }
}

/** The socket's directory: root's, 0700, not a symlink. */
function prepareDir(dir: string): void {
  try {
    mkdirSync(dir, { mode: 0o700 })
  } catch (err) {
    if (errnoOf(err) !== 'EEXIST') throw new QkError('ERR_OS', `cannot create ${dir}: ${errnoOf(err) ?? 'error'}`, { dir })
  }
  const st = lstatSync(dir)
  const owner = process.geteuid?.() ?? 0
  if (!st.isDirectory() || st.uid !== owner) {
    throw new QkError('ERR_OS', `${dir} must be a directory owned by uid ${owner}, is ${st.isDirectory() ? `owned by uid ${st.uid}` : 'not a directory'}`, { dir })
  }
  chmodSync(dir, 0o700)
}

/** A live agent keeps its socket; a stale one (nobody listening) is removed; anything else is refused. */
async function clearStale(path: string): Promise<void> {
  let st
  try {
    st = lstatSync(path)
  } catch {
    return
  }
  if (!st.isSocket()) throw new QkError('ERR_OS', `${path} exists and is not a socket; remove it by hand`, { path })
  const alive = await new Promise<boolean>((res) => {
    const c = createConnection(path)
    c.on('connect', () => { c.destroy(); res(true) })
    c.on('error', () => res(false))
  })
  if (alive) throw new QkError('ERR_OS', `another qemu-kube agent listens on ${path}; stop it first`, { path })
  unlinkSync(path)
}

function listen(server: Server, path: string): Promise<void> {
  return new Promise((res, rej) => {
    server.once('error', (err) => rej(new QkError('ERR_OS', `cannot listen on ${path}: ${errnoOf(err) ?? 'error'}`, { path })))
    server.listen(path, () => res())
  })
}

/** One connection: who, the request (bounded), the answer, the fds closed. */
function handle(sock: Socket, current: () => AgentState, log: Logger, net: SocketOps, o: AgentOptions): void {
  const started = process.hrtime.bigint()
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd
  if (fd === undefined || fd < 0) throw new QkError('ERR_INTERNAL', 'the connection has no fd (closed before it was handled)')
  let answered = false
  const parser = new RequestParser()
  const timeoutMs = o.requestTimeoutMs ?? REQUEST_TIMEOUT_MS
  let received = 0
  const deadline = setTimeout(() => {
    finish(refusal(new QkError('ERR_AGENT_REQUEST_TIMEOUT', `expected the whole request within ${timeoutMs} ms, got ${received} bytes`)))
  }, timeoutMs)
  sock.on('error', () => {})

  let peer: { pid: number; pidfd: number; front: Consumer } | undefined
  // status/metrics are no launch decisions: logged as their op, not counted in the metrics.
  let op: AgentRequest['op'] | undefined
  const finish = (a: Answer, fdsToClose: number[] = a.fds) => {
    if (answered) {
      for (const f of fdsToClose) closeQuietly(f)
      return
    }
    answered = true
    clearTimeout(deadline)
    // Whatever the peer still sends is read and dropped, so a peer stuck in its write sees the
    // answer; the connection ends with the reply (or the deadline's destroy below).
    sock.removeAllListeners('data')
    sock.on('data', () => {})
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    const durationMs = Math.round(seconds * 1e5) / 100
    const fields = { ...a.decision, durationMs, peer: peer?.pid }
    // The front writes the reply's decision to libvirt's log as is: the same line, field for
    // field, as the standalone chain's pino line (log.ts), its pid the front's (it becomes QEMU).
    const level = a.decision.outcome === 'refused' ? 'error' : 'info'
    const line = { level, time: new Date().toISOString(), pid: peer?.pid, name: 'qemu-kube', ...a.decision, durationMs, msg: 'decision' }
    const reply = a.reply.outcome === 'ok' ? a.reply : { ...a.reply, decision: line }
    const what = op === 'status' || op === 'metrics' ? op : 'decision'
    // The front waits for the reply, not for our log line or metrics: those come after it.
    const record = () => {
      if (a.decision.outcome === 'refused') log.error(fields, what)
      else if (a.reply.outcome === 'ok') log.info({ op, outcome: 'ok', durationMs: fields.durationMs, peer: peer?.pid }, what)
      else log.info(fields, what)
      if (what === 'decision') o.observe?.(a.decision, seconds)
    }
    try {
      send(sock, fd, encodeReply(reply), a.fds, net, log)
    } catch (e) {
      // Never thrown into an event handler (that would end the agent): the front sees EOF.
      const err = asQkError(e)
      log.error({ code: err.code, reason: err.message, peer: peer?.pid }, 'agent: the reply could not be sent; the front falls back')
    } finally {
      for (const f of fdsToClose) closeQuietly(f)
      if (peer !== undefined && peer.pidfd >= 0) closeQuietly(peer.pidfd)
      sock.end()
      setTimeout(() => sock.destroy(), 2000).unref()
      record()
    }
  }

  try {
    peer = who(fd, net, current().config.proc_root)
  } catch (e) {
    finish(refusal(e))
    return
  }

  sock.on('data', (chunk: Buffer) => {
    received += chunk.length
    let req: AgentRequest | undefined
    try {
      req = parser.push(chunk)
    } catch (e) {
      finish(refusal(e))
      return
    }
    if (req !== undefined) dispatch(req)
  })
  sock.on('end', () => {
    if (answered) return
    try {
      parser.finish()
    } catch (e) {
      finish(refusal(e))
    }
  })

  const dispatch = (req: AgentRequest) => {
    clearTimeout(deadline)
    op = req.op
    // One request per connection: whatever follows is dropped, never parsed as a second one.
    sock.removeAllListeners('data')
    sock.on('data', () => {})
    const state = current()
    // Started before the verification, done before the front writes its cgroup.procs fds:
    // warmCgroupLock (cgroup.ts) says why a harmless move of the agent into its own cgroup
    // spares those writes the RCU grace period a first writer waits for. The reply waits for
    // it, so its fd is closed and its move is over before the front's begin.
    const warm = req.op === 'launch' ? warmCgroupLock(state.ownCgroupProcs) : Promise.resolve()
    const work: Promise<Answer> = req.op === 'launch'
      ? answerLaunch(req, peer!.front, state, sys())
      : bodyOf(req, state, o)
    Promise.all([work, warm]).then(([a]) => finish(a), (e: unknown) => finish(refusal(e)))
  }
}

async function bodyOf(req: AgentRequest, state: AgentState, o: AgentOptions): Promise<Answer> {
  const op = req.op === 'status' ? o.ops?.status : o.ops?.metrics
  if (op === undefined) throw new QkError('ERR_USAGE', `op=${req.op} is not served by this agent build`)
  const body = await op(req, state)
  // The log line's fields only (finish() logs it as its op): no decision is made here.
  return { reply: { outcome: 'ok', body }, fds: [], decision: { outcome: 'probe', code: 'OK', path: 'agent' } }
}

/**
 * The peer: SO_PEERCRED's pid, pinned by SO_PEERPIDFD where the kernel has it (taken by the
 * kernel at connect, so it is that process even if it has died and its pid was reused since). Its start time is read
 * after, then the pidfd is asked whether it still lives: if so, the pid still names it, and the
 * start time read is its own. It becomes QEMU, so the replay record and the uid lease name it.
 */
export function who(fd: number, net: SocketOps, procRoot: string,
  alive: (pidfd: number) => boolean = (p) => sys().pidfdSignalZero(p) === 0,
  open: (pid: number) => number = (pid) => sys().pidfdOpen(pid)): { pid: number; pidfd: number; front: Consumer } {
  const cred = net.peerCred(fd)
  if (cred.uid !== 0) {
    throw new QkError('ERR_AGENT_PEER_NOT_ROOT', `the agent serves root peers only (the setuid front), got SO_PEERCRED uid ${cred.uid} pid ${cred.pid}`,
      { uid: cred.uid, pid: cred.pid })
  }
  let pidfd = net.peerPidfd(fd)
  // Before Linux 6.5 there is no SO_PEERPIDFD: pidfd_open the pid instead, in the same order
  // (pidfd, then stat, then alive). Weaker: a front killed by its caller between connect and
  // here whose pid was recycled at once would be mistaken for its successor; the successor is
  // no peer of ours, so it gains only a lease or record naming it (the launch has no front left).
  if (pidfd === -ENOPROTOOPT) pidfd = open(cred.pid)
  if (pidfd < 0) throw new QkError('ERR_OS', `cannot pin the peer (pid ${cred.pid}): errno ${-pidfd}`, { pid: cred.pid })
  const stat = readStat(procRoot, cred.pid)
  if (stat === undefined || !alive(pidfd)) {
    closeQuietly(pidfd)
    throw new QkError('ERR_OS', `the peer (pid ${cred.pid}) exited before its request was read`, { pid: cred.pid })
  }
  return { pid: cred.pid, pidfd, front: { pid: cred.pid, startTime: stat.startTime } }
}

/** The reply in one sendmsg (the fds with its first byte); a short write goes on through the stream. */
function send(sock: Socket, fd: number, buf: Buffer, fds: readonly number[], net: SocketOps, log: Logger): void {
  if (fds.length === 0) {
    sock.write(buf)
    return
  }
  const n = net.sendWithFds(fd, buf, fds)
  if (n < 0) {
    log.error({ code: 'ERR_OS', errno: -n }, 'agent: sendmsg of the reply failed; the front falls back')
    return
  }
  if (n < buf.length) sock.write(buf.subarray(n))
}
