// The front <-> agent wire format (docs/CHAIN.md section 3): a magic record, KEY=VALUE records,
// `end`, each followed by NUL. The request is hostile input in the sense that it is the only
// thing the agent learns from its peer besides SO_PEERCRED: it is read as a state machine, one
// record at a time as bytes arrive, so garbage is refused at its first bad record rather than
// after the 2 s timeout, and nothing past AGENT_MAX_REQUEST is ever buffered.
import { QkError } from './errors.ts'
import { AGENT_MAX_REQUEST } from './paths.ts'
import { ENV_NAME, ENV_SECRET, ENV_UUID } from './invocation.ts'
import type { Caller } from './caller.ts'

export const MAGIC = 'qk-agent-1'

export type AgentRequest =
  | { op: 'launch'; caller: Caller; fds: number[]; env: Record<string, string>; argv: string[] }
  | { op: 'status'; vm?: string }
  | { op: 'metrics' }

const DECIMAL = /^(0|[1-9]\d{0,9})$/
const ENV_KEYS = new Set([ENV_UUID, ENV_NAME, ENV_SECRET])
const NUL = 0

/** Where the parser is: the key each state accepts next, in the contract's order. */
type State = 'magic' | 'op' | 'uid' | 'gid' | 'groups' | 'fds' | 'env-or-arg' | 'arg' | 'status-vm' | 'end' | 'done'

/**
 * Feed it chunks with push(); it returns the request once its `end` record arrived, undefined
 * while more is needed, and throws ERR_AGENT_REQUEST_MALFORMED / _TOO_BIG at the first problem.
 * finish() says what EOF means now: truncated unless the request is complete.
 */
export class RequestParser {
  private state: State = 'magic'
  private size = 0
  private pending: Buffer[] = []
  private op: 'launch' | 'status' | 'metrics' = 'launch'
  private ids: number[] = []
  private groups: number[] = []
  private fds: number[] = []
  private env: Record<string, string> = {}
  private argv: string[] = []
  private vm: string | undefined
  private result: AgentRequest | undefined

  push(chunk: Buffer): AgentRequest | undefined {
    if (this.state === 'done') throw malformed('bytes after the end record (one request per connection)')
    this.size += chunk.length
    if (this.size > AGENT_MAX_REQUEST) {
      throw new QkError('ERR_AGENT_REQUEST_TOO_BIG', `expected a request of at most ${AGENT_MAX_REQUEST} bytes, got more than that`)
    }
    let start = 0
    for (let i = chunk.indexOf(NUL); i >= 0; i = chunk.indexOf(NUL, start)) {
      this.pending.push(chunk.subarray(start, i))
      const record = Buffer.concat(this.pending)
      this.pending = []
      start = i + 1
      this.record(record)
      if ((this.state as State) === 'done' && start < chunk.length) throw malformed('bytes after the end record (one request per connection)')
    }
    if (start < chunk.length) this.pending.push(chunk.subarray(start))
    return this.result
  }

  /** EOF from the peer. */
  finish(): AgentRequest {
    if (this.result === undefined) {
      throw new QkError('ERR_AGENT_REQUEST_TRUNCATED', `expected the request's end record before EOF, got EOF after ${this.size} bytes`)
    }
    return this.result
  }

  private record(raw: Buffer): void {
    // Values are bytes for the contract, strings for us: only UTF-8 that round-trips counts.
    const text = raw.toString('utf8')
    if (!Buffer.from(text, 'utf8').equals(raw)) throw malformed('a record that is not valid UTF-8')
    if (this.state === 'magic') {
      if (text !== MAGIC) throw malformed(`expected the magic record ${MAGIC}, got ${show(text)}`)
      this.state = 'op'
      return
    }
    if (text === 'end') return this.end()
    const eq = text.indexOf('=')
    if (eq < 1) throw malformed(`expected KEY=VALUE, got ${show(text)}`)
    const key = text.slice(0, eq)
    const value = text.slice(eq + 1)
    switch (this.state) {
      case 'op':
        expectKey(key, 'op')
        if (value !== 'launch' && value !== 'status' && value !== 'metrics') throw malformed(`unknown op ${show(value)}`)
        this.op = value
        this.state = value === 'launch' ? 'uid' : value === 'status' ? 'status-vm' : 'end'
        return
      case 'uid':
      case 'gid':
        expectKey(key, this.state)
        this.ids.push(decimal(key, value))
        this.state = this.state === 'uid' ? 'gid' : 'groups'
        return
      case 'groups':
      case 'fds': {
        expectKey(key, this.state)
        const list = value === '' ? [] : value.split(',').map((v) => decimal(key, v))
        if (this.state === 'groups') this.groups = list
        else this.fds = list
        this.state = this.state === 'groups' ? 'fds' : 'env-or-arg'
        return
      }
      case 'env-or-arg':
        if (key === 'env') {
          const e = value.indexOf('=')
          const name = e < 0 ? value : value.slice(0, e)
          // Only a name-shaped prefix is quoted back: a value here may be the token.
          const shown = /^[A-Za-z_][A-Za-z0-9_]*/.exec(name)?.[0] ?? ''
          if (e < 0 || !ENV_KEYS.has(name)) throw malformed(`env must be one of ${[...ENV_KEYS].join(', ')}=VALUE, got ${show(e < 0 ? `${shown} without =` : shown)}`)
          if (name in this.env) throw malformed(`env ${name} given twice`)
          this.env[name] = value.slice(e + 1)
          return
        }
        this.state = 'arg'
        return this.arg(key, value)
      case 'arg':
        return this.arg(key, value)
      case 'status-vm':
        expectKey(key, 'vm')
        if (value === '') throw malformed('vm must not be empty')
        this.vm = value
        this.state = 'end'
        return
      default:
        throw malformed(`expected the end record, got key ${show(key)}`)
    }
  }

  private arg(key: string, value: string): void {
    expectKey(key, 'arg')
    this.argv.push(value)
  }

  private end(): void {
    const complete = this.state === 'end' || this.state === 'status-vm' || this.state === 'env-or-arg' || this.state === 'arg'
    if (!complete) throw malformed(`end record before the ${this.state} record`)
    this.state = 'done'
    if (this.op === 'launch') {
      this.result = {
        op: 'launch',
        caller: { uid: this.ids[0]!, gid: this.ids[1]!, groups: this.groups },
        fds: this.fds,
        env: this.env,
        argv: this.argv,
      }
    } else if (this.op === 'status') {
      this.result = this.vm === undefined ? { op: 'status' } : { op: 'status', vm: this.vm }
    } else {
      this.result = { op: 'metrics' }
    }
  }
}

export type AgentReply =
  | { outcome: 'authorised'; decision: object; cgroups: number; env: readonly string[]; enter: readonly string[] }
  | { outcome: 'probe'; decision: object; env: readonly string[]; enter: readonly string[] }
  | { outcome: 'refused'; exit: number; decision: object }
  | { outcome: 'ok'; body: string }

/** One reply, in the contract's order; the fds travel beside it (agent-socket.ts). */
export function encodeReply(r: AgentReply): Buffer {
  const records: string[] = [MAGIC, `outcome=${r.outcome}`]
  if (r.outcome === 'refused') records.push(`exit=${r.exit}`)
  if (r.outcome !== 'ok') records.push(`decision=${JSON.stringify(r.decision)}`)
  if (r.outcome === 'authorised') records.push(`cgroups=${r.cgroups}`)
  if (r.outcome === 'authorised' || r.outcome === 'probe') {
    for (const e of r.env) records.push(`env=${e}`)
    for (const o of r.enter) records.push(`enter=${o}`)
  }
  if (r.outcome === 'ok') records.push(`body=${r.body}`)
  records.push('end')
  for (const rec of records) {
    // JSON.stringify escapes NUL; env, enter and body values come from our own code, but a
    // QEMU argument could hold anything the request could (it could not hold NUL either).
    if (rec.includes('\0')) throw new QkError('ERR_INTERNAL', 'a reply record holds a NUL byte')
  }
  return Buffer.from(records.map((rec) => `${rec}\0`).join(''), 'utf8')
}

/** The request as the front writes it; for tests and the status/metrics clients. */
export function encodeRequest(r: AgentRequest): Buffer {
  const records: string[] = [MAGIC, `op=${r.op}`]
  if (r.op === 'launch') {
    records.push(`uid=${r.caller.uid}`, `gid=${r.caller.gid}`, `groups=${r.caller.groups.join(',')}`, `fds=${r.fds.join(',')}`)
    for (const [k, v] of Object.entries(r.env)) records.push(`env=${k}=${v}`)
    for (const a of r.argv) records.push(`arg=${a}`)
  } else if (r.op === 'status' && r.vm !== undefined) {
    records.push(`vm=${r.vm}`)
  }
  records.push('end')
  return Buffer.from(records.map((rec) => `${rec}\0`).join(''), 'utf8')
}

/** Parses a reply (the clients' side); throws ERR_AGENT_REQUEST_MALFORMED on anything else. */
export function decodeReply(buf: Buffer): Record<string, string[]> {
  const parts = buf.toString('utf8').split('\0')
  if (parts[0] !== MAGIC || parts.at(-1) !== '' || parts.at(-2) !== 'end') throw malformed('not a qk-agent-1 reply')
  const out: Record<string, string[]> = {}
  for (const p of parts.slice(1, -2)) {
    const eq = p.indexOf('=')
    if (eq < 1) throw malformed(`reply record ${show(p)}`)
    ;(out[p.slice(0, eq)] ??= []).push(p.slice(eq + 1))
  }
  return out
}

function expectKey(key: string, want: string): void {
  if (key !== want) throw malformed(`expected the ${want} record, got key ${show(key)}`)
}

function decimal(key: string, v: string): number {
  if (!DECIMAL.test(v) || Number(v) > 4294967295) throw malformed(`${key} takes decimal numbers, got ${show(v)}`)
  return Number(v)
}

/** A peer's bytes in a message: bounded, and JSON-quoted so nothing can break the log line. */
function show(s: string): string {
  return JSON.stringify(s.length > 40 ? `${s.slice(0, 40)}...` : s)
}

function malformed(what: string): QkError {
  return new QkError('ERR_AGENT_REQUEST_MALFORMED', `the request is not qk-agent-1 framing: ${what}`)
}
