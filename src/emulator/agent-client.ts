// The operators' side of the agent socket: `qemu-kube status` and `qemu-kube metrics` send one
// op=status / op=metrics request (docs/CHAIN.md section 3, Other ops) and read the reply to
// EOF. Root only: the socket is root's 0600 in a 0700 directory.
import { createConnection } from 'node:net'
import { allCodes, errnoOf, QkError, type ErrorCode } from './errors.ts'
import { decodeReply, encodeRequest, type AgentRequest } from './agent-protocol.ts'
import { AGENT_SOCKET } from './paths.ts'

/** A reply is at most this big (the front's cap too). */
const MAX_REPLY = 1024 * 1024
const TIMEOUT_MS = 30_000

/** The body of an `ok` reply; a refusal becomes the agent's QkError (its code and message). */
export async function askAgent(req: Exclude<AgentRequest, { op: 'launch' }>, socketPath: string = AGENT_SOCKET): Promise<string> {
  const raw = await new Promise<Buffer>((res, rej) => {
    const chunks: Buffer[] = []
    let size = 0
    const c = createConnection(socketPath)
    const fail = (why: string) => {
      c.destroy()
      rej(new QkError('ERR_AGENT_UNAVAILABLE', `cannot ask the agent at ${socketPath}: ${why}`, { socket: socketPath }))
    }
    c.setTimeout(TIMEOUT_MS, () => fail('no reply within 30 s'))
    c.on('error', (err) => fail(errnoOf(err) ?? 'error'))
    c.on('connect', () => c.end(encodeRequest(req)))
    c.on('data', (d: Buffer) => {
      size += d.length
      if (size > MAX_REPLY) return fail('a reply over 1 MiB')
      chunks.push(d)
    })
    c.on('end', () => res(Buffer.concat(chunks)))
  })
  let r: Record<string, string[]>
  try {
    r = decodeReply(raw)
  } catch {
    throw new QkError('ERR_AGENT_UNAVAILABLE', `the agent at ${socketPath} sent no qk-agent-1 reply (${raw.length} bytes)`, { socket: socketPath })
  }
  if (r.outcome?.[0] === 'ok' && r.body?.length === 1) return r.body[0]!
  const d = JSON.parse(r.decision?.[0] ?? '{}') as { code?: string; reason?: string }
  const code: ErrorCode = (allCodes as string[]).includes(d.code ?? '') ? d.code as ErrorCode : 'ERR_INTERNAL'
  throw new QkError(code, `the agent refused op=${req.op}: ${d.reason ?? 'no reason given'}`)
}
