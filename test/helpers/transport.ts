// The two ways a launch is served (docs/CHAIN.md section 3): the standalone chain (front ->
// Node -> enter helper) and the resident agent (front -> agent, then the enter steps in the
// front). A suite runs once per transport: scripts/test.mjs runs every file that names
// QK_TEST_TRANSPORT twice, with QK_TEST_TRANSPORT=standalone and =agent, and the file starts the
// agent for its install when asked. One suite, two runs: every assertion holds for both.
import { spawn, type ChildProcess } from 'node:child_process'
import type { Test } from 'tap'
import type { Installed } from './install.ts'

export type Transport = 'standalone' | 'agent'

export const TRANSPORT: Transport = process.env.QK_TEST_TRANSPORT === 'agent' ? 'agent' : 'standalone'

export interface RunningAgent {
  child: ChildProcess
  socket: string
  /** The agent's stdout so far (its JSON log). */
  log(): string
  /** SIGTERM and wait; resolves its exit status. */
  stop(signal?: NodeJS.Signals): Promise<number | null>
}

export function agentSocket(inst: Pick<Installed, 'sysconfdir'>): string {
  return `${inst.sysconfdir}/qemu-kube-agent/agent.sock`
}

/** Starts `qemu-kube agent` of this install (as root) and waits until its socket answers. */
export async function startAgent(t: Test, inst: Installed): Promise<RunningAgent> {
  const socket = agentSocket(inst)
  const child = spawn(inst.front, ['agent'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout!.on('data', (b: Buffer) => { out += b.toString() })
  child.stderr!.on('data', (b: Buffer) => { err += b.toString() })
  const exited = new Promise<number | null>((res) => child.on('exit', (code, sig) => res(code ?? (sig ? 128 : null))))
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal)
    return exited
  }
  t.teardown(async () => { await stop('SIGTERM') })
  // Ready when it says so: a probing connection without a request would be logged and
  // counted as a refused decision (ERR_AGENT_REQUEST_TRUNCATED).
  const deadline = Date.now() + 15_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`qemu-kube agent exited ${child.exitCode}: ${err}${out}`)
    if (out.split('\n').some((l) => l.includes('"msg":"agent listening"'))) break
    if (Date.now() > deadline) throw new Error(`qemu-kube agent did not listen on ${socket} in 15 s: ${err}${out}`)
    await new Promise((r) => setTimeout(r, 20))
  }
  return { child, socket, log: () => out, stop }
}

/** Starts the agent when this run is the agent transport; the decision lines say which served. */
export async function useTransport(t: Test, inst: Installed): Promise<RunningAgent | undefined> {
  return TRANSPORT === 'agent' ? startAgent(t, inst) : undefined
}
