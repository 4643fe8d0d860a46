// Entry point of the bundle. Two ways in:
// - `@front AGENT UID GID GROUPS FDS QEMU-ARGS...`: the setuid front ran us as root for libvirt
//   (docs/CHAIN.md), because the agent was absent or gave no usable answer (AGENT says which).
//   One decision line, then exec of the enter helper, or a refusal and exit.
// - anything else: an operator command (`explain`, `check-config`, `keygen`, `token issue`),
//   run with the caller's own credentials.
// Only this file ends the process.
import { realpathSync } from 'node:fs'
import { basename } from 'node:path'
import { createRequire } from 'node:module'
import { classify } from './invocation.ts'
import { loadConfig } from './config.ts'
import { authorisedRecord, probeRecord, refusedRecord } from './decision.ts'
import { asQkError, QkError } from './errors.ts'
import { ownCgroupProcs, warmCgroupLock } from './cgroup.ts'
import { handOff, joinCgroups, launchPlan, probePlan } from './handoff.ts'
import { makeLogger, type Logger } from './log.ts'
import { AGENT_SOCKET, CONFIG_PATH } from './paths.ts'
import { sys } from './sys.ts'
import { authorise, type Trail } from './verify.ts'
import type { Caller } from './caller.ts'

interface FrontFacts {
  /** `absent` or `down:REASON`: why the agent did not serve this launch. */
  agent: string
  caller: Caller
  fds: number[]
  argv: string[]
}

// process.hrtime, not performance.now(): the `performance` global loads perf_hooks (~0.6 ms).
const started = process.hrtime.bigint()

async function emulate(args: readonly string[]): Promise<number> {
  // The logger exists before anything can fail, so even a broken config gets its decision line.
  const log = makeLogger()
  // A caller with a terminal could stop the root stages with ^Z (the tty sends SIGTSTP whatever
  // our uid) and resume them at a moment it chose. Caught, not ignored: exec resets caught
  // signals to default, so QEMU gets ordinary job control back. (SIGSTOP and freezers cannot be
  // refused; replay.ts orders its facts so that such a pause gains nothing.)
  for (const s of ['SIGTSTP', 'SIGTTIN', 'SIGTTOU'] as const) process.on(s, () => {})
  const trail: Trail = {}
  // Known once the front's fields parse; a broken @front line still gets its decision line.
  let agent = 'unknown'
  try {
    const front = parseFront(args)
    agent = front.agent
    const config = loadConfig(CONFIG_PATH)
    log.level = config.log_level
    const inv = classify(process.env, front.argv)
    if (inv.kind === 'probe') {
      decide(log, probeRecord(front.caller.uid, config.probe_qemu_binary), agent)
      return handOff(probePlan(front.caller, config.probe_qemu_binary, inv.argv, front.fds), sys())
    }
    // proc_root of another pid namespace (libvirt in a container without hostPID): our own pid
    // is not in it, so nothing this process could pin or lease is what it seems; only the agent,
    // which runs where proc_root is its own, can serve.
    // A host /proc seen from a child pid namespace still has a `self`: it names our host pid,
    // not process.pid. Only a `self` that is this very process makes proc_root our own.
    const self = ownPidIn(config.proc_root)
    if (self !== String(process.pid)) {
      const why = self === undefined ? `${config.proc_root}/self does not exist` : `${config.proc_root}/self is pid ${self}, not this process (pid ${process.pid})`
      throw new QkError('ERR_AGENT_UNAVAILABLE',
        `${why}, so standalone cannot serve this launch; the agent at ${AGENT_SOCKET} did not (AGENT=${agent})`,
        { socket: AGENT_SOCKET, agent })
    }
    const lockWarm = warmCgroupLock(ownCgroupProcs(config.proc_root, config.cgroup_root))
    const a = await authorise(inv, { config, caller: front.caller, now: () => new Date(), ops: sys(), consume: true }, trail)
    await lockWarm
    joinCgroups(a)
    decide(log, authorisedRecord(a), agent)
    return handOff(launchPlan(a, front.fds, config), sys())
  } catch (e) {
    const err = asQkError(e)
    decide(log, refusedRecord(err, trail), agent)
    return err.exitCode
  }
}

function decide(log: Logger, record: ReturnType<typeof authorisedRecord>, agent: string): void {
  const durationMs = Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100
  const fields = { ...record, path: 'standalone', agent, durationMs }
  if (record.outcome === 'refused') log.error(fields, 'decision')
  else log.info(fields, 'decision')
}

/**
 * The pid PROC/self resolves to (as that procfs numbers it), or undefined when it leads nowhere.
 * Resolved whole, so a proc_root whose self links to /proc/self (a test tree) still answers.
 */
function ownPidIn(procRoot: string): string | undefined {
  try {
    return basename(realpathSync(`${procRoot}/self`))
  } catch {
    return undefined
  }
}

const DECIMAL = /^(0|[1-9]\d{0,9})$/
/** docs/CHAIN.md section 3, Fallback: REASON is one word. */
const AGENT_STATE = /^(absent|down:[A-Z][A-Z0-9_]{0,31})$/

/** The front wrote these; a mismatch means a broken install, not a hostile caller. */
function parseFront(args: readonly string[]): FrontFacts {
  const [agent, uid, gid, groups, fds, ...argv] = args
  if (agent === undefined || !AGENT_STATE.test(agent)) throw new QkError('ERR_USAGE', '@front: bad AGENT (absent | down:REASON)')
  const list = (s: string | undefined, what: string) => {
    if (s === undefined) throw new QkError('ERR_USAGE', `@front: missing ${what}`)
    if (s === '-' || s === '') return []
    const parts = s.split(',')
    if (!parts.every((p) => DECIMAL.test(p))) throw new QkError('ERR_USAGE', `@front: bad ${what}`)
    return parts.map(Number)
  }
  const [u] = list(uid, 'uid')
  const [g] = list(gid, 'gid')
  if (u === undefined || g === undefined) throw new QkError('ERR_USAGE', '@front: bad uid/gid')
  return { agent, caller: { uid: u, gid: g, groups: list(groups, 'groups') }, fds: list(fds, 'fds'), argv }
}

async function main(): Promise<number> {
  const args = process.argv.slice(2)
  if (args[0] === '@front') return emulate(args.slice(1))
  // Operator commands live in their own bundle beside this one, so the launch path never
  // loads commander (and the child_process/net/stream modules it pulls in).
  const cli = createRequire(import.meta.url)('./qemu-kube-cli.cjs') as typeof import('./cli.ts')
  return cli.runCli(args)
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    const err = asQkError(e)
    process.stderr.write(`${JSON.stringify({ level: 'error', code: err.code, msg: err.message, hint: err.hint })}\n`)
    process.exit(err.exitCode)
  },
)
