// The operators' side of the agent socket: `qemu-kube status` and `qemu-kube metrics` send one
// op=status / op=metrics request (docs/CHAIN.md section 3, Other ops) and read the reply to
// EOF. Root only: the socket is root's 0600 in a 0700 directory.
import { createConnection } from 'node:net'
import { allCodes, errnoOf, QkError, type ErrorCode } from './errors.ts'
import { decodeReply, encodeRequest, type AgentRequest } from './agent-protocol.ts'
import { AGENT_SOCKET } from './paths.ts'
import type { StatusEntry } from './status/collect.ts'

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

type Cri = {
  qemu_kube: {
    uuid: string; name: string | null; uid: number
    qemu: { pid: number; uid: number | null; start_time: string; namespaces: StatusEntry['qemu']['namespaces'] }
    launcher: StatusEntry['launcher']; cgroup: string | null; uptime_seconds: number | null; problems: string[]
    cgroup_dirs: { cpu: { source: 'v1' | 'v2'; dir: string } | null; memory: { source: 'v1' | 'v2'; dir: string } | null }
  }
  cpu?: { timestamp: string; usage_core_nano_seconds: { value: string } }
  memory?: { timestamp: string; working_set_bytes: { value: string } }
}

/** The entries back from the agent's JSON body (status/format.ts criStats, inverted), for the human table. */
export function entriesFromCri(body: string): StatusEntry[] {
  const { stats } = JSON.parse(body) as { stats: Cri[] }
  return stats.map((s) => {
    const q = s.qemu_kube
    return {
      uid: q.uid,
      vm: q.uuid,
      name: q.name,
      qemu: { pid: q.qemu.pid, startTime: q.qemu.start_time, uid: q.qemu.uid, namespaces: q.qemu.namespaces, uptimeSeconds: q.uptime_seconds },
      launcher: q.launcher,
      cgroup: q.cgroup,
      cpu: s.cpu === undefined || q.cgroup_dirs.cpu === null ? null
        : { timestamp: BigInt(s.cpu.timestamp), usageCoreNanoSeconds: BigInt(s.cpu.usage_core_nano_seconds.value), ...q.cgroup_dirs.cpu },
      memory: s.memory === undefined || q.cgroup_dirs.memory === null ? null
        : { timestamp: BigInt(s.memory.timestamp), workingSetBytes: BigInt(s.memory.working_set_bytes.value), ...q.cgroup_dirs.memory },
      problems: q.problems,
    }
  })
}
