// The agent's answer to one launch request: the same stages as the standalone chain (main.ts),
// with the caller from the request and the consumer (who the replay record and the uid lease
// name) from the socket: the front, which becomes QEMU. What the standalone chain does itself
// after the decision, the front does with what this returns (docs/CHAIN.md section 3): the env
// and enter options from the same launchPlan/probePlan/enterArgv, the target's pidfd, and one
// cgroup.procs fd per join, opened here (the front writes "0" to each: the kernel moves the
// writer, so no pid is named).
// Every fd opened for a request is in `fds`; the server closes them once the reply is sent, and
// a refusal after any was opened closes them here.
import { closeSync, constants, openSync } from 'node:fs'
import type { Config } from './config.ts'
import { authorisedRecord, probeRecord, refusedRecord, type Decision } from './decision.ts'
import { asQkError, errnoOf, QkError } from './errors.ts'
import { enterArgv, launchPlan, probePlan, type EnterPlan } from './handoff.ts'
import { classify } from './invocation.ts'
import type { PublicKey } from './keys.ts'
import type { AgentReply, AgentRequest } from './agent-protocol.ts'
import type { Consumer } from './replay.ts'
import type { Sys } from './sys.ts'
import { authorise, type Trail } from './verify.ts'

/** What the agent keeps warm between requests; replaced whole on reload. */
export interface AgentState {
  config: Config
  keys: readonly PublicKey[]
  /** The agent's own cgroup.procs, the cgroup-lock warm-up's target (cgroup.ts), found once per config. */
  ownCgroupProcs?: string | undefined
  /** The launcher pids now (proc-index.ts); a full scan when absent or undefined. */
  candidates?: () => Iterable<number> | undefined
}

export interface Answer {
  reply: AgentReply
  /** SCM_RIGHTS, in the contract's order: authorised only. */
  fds: number[]
  decision: Decision
}

type Launch = Extract<AgentRequest, { op: 'launch' }>

export async function answerLaunch(req: Launch, front: Consumer, state: AgentState, os: Sys, now: () => Date = () => new Date()): Promise<Answer> {
  const config = state.config
  const trail: Trail = {}
  const fds: number[] = []
  try {
    const inv = classify(req.env, req.argv)
    if (inv.kind === 'probe') {
      const decision: Decision = { ...probeRecord(req.caller.uid, config.probe_qemu_binary), path: 'agent' }
      const plan = probePlan(req.caller, config.probe_qemu_binary, inv.argv, req.fds)
      return { reply: { outcome: 'probe', decision, env: plan.env, enter: frontEnter(plan) }, fds, decision }
    }
    const a = await authorise(inv, {
      config, caller: req.caller, now, ops: os, consume: true, consumer: front, keys: state.keys, lockWaitMs: 0,
      ...(state.candidates === undefined ? {} : { candidates: state.candidates }),
    }, trail)
    fds.push(a.target.pidfd)
    for (const j of a.cgroups) {
      try {
        fds.push(openSync(`${j.dir}/cgroup.procs`, constants.O_WRONLY))
      } catch (err) {
        throw new QkError('ERR_CGROUP_JOIN', `cannot open ${j.dir}/cgroup.procs: ${errnoOf(err) ?? 'error'}`, { dir: j.dir, hierarchy: j.hierarchy })
      }
    }
    const decision: Decision = { ...authorisedRecord(a), path: 'agent' }
    const plan = launchPlan(a, req.fds, config)
    return { reply: { outcome: 'authorised', decision, cgroups: a.cgroups.length, env: plan.env, enter: frontEnter(plan) }, fds, decision }
  } catch (e) {
    for (const fd of fds) closeQuietly(fd)
    return refusal(e, trail)
  }
}

/** A refusal as the contract answers it: the decision line and the status the front exits with. */
export function refusal(e: unknown, trail: Trail = {}): Answer {
  const err = asQkError(e)
  const decision: Decision = { ...refusedRecord(err, trail), path: 'agent' }
  return { reply: { outcome: 'refused', exit: err.exitCode, decision }, fds: [], decision }
}

/** The enter helper's argv without argv[0] and --pidfd: the front puts its own fd there. */
function frontEnter(plan: EnterPlan): string[] {
  const argv = enterArgv(plan)
  if (!argv[1]?.startsWith('--pidfd=')) throw new QkError('ERR_INTERNAL', 'enterArgv no longer starts with --pidfd')
  return argv.slice(2)
}

export function closeQuietly(fd: number): void {
  try {
    closeSync(fd)
  } catch {
    // Already closed; nothing else holds this number in a single request's scope.
  }
}
