// Entry point of the bundle. Two ways in:
// - `@front UID GID GROUPS FDS QEMU-ARGS...`: the setuid front ran us as root for libvirt
//   (docs/CHAIN.md). One decision line, then exec of the enter helper, or a refusal and exit.
// - anything else: an operator command (`explain`, `check-config`, `keygen`, `token issue`),
//   run with the caller's own credentials.
// Only this file ends the process.
import { createRequire } from 'node:module'
import { classify } from './invocation.ts'
import { loadConfig } from './config.ts'
import { authorisedRecord, probeRecord, refusedRecord } from './decision.ts'
import { asQkError, QkError } from './errors.ts'
import { warmCgroupLock } from './cgroup.ts'
import { handOff, joinCgroups, launchPlan, probePlan } from './handoff.ts'
import { makeLogger, type Logger } from './log.ts'
import { CONFIG_PATH } from './paths.ts'
import { sys } from './sys.ts'
import { authorise, type Trail } from './verify.ts'
import type { Caller } from './caller.ts'

interface FrontFacts {
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
  try {
    const front = parseFront(args)
    const config = loadConfig(CONFIG_PATH)
    log.level = config.log_level
    const inv = classify(process.env, front.argv)
    if (inv.kind === 'probe') {
      decide(log, probeRecord(front.caller.uid, config.probe_qemu_binary))
      return handOff(probePlan(front.caller, config.probe_qemu_binary, inv.argv, front.fds), sys())
    }
    const lockWarm = warmCgroupLock(config.proc_root, config.cgroup_root)
    const a = await authorise(inv, { config, caller: front.caller, now: () => new Date(), ops: sys(), consume: true }, trail)
    await lockWarm
    joinCgroups(a)
    decide(log, authorisedRecord(a))
    return handOff(launchPlan(a, front.fds, config), sys())
  } catch (e) {
    const err = asQkError(e)
    decide(log, refusedRecord(err, trail))
    return err.exitCode
  }
}

function decide(log: Logger, record: ReturnType<typeof authorisedRecord>): void {
  const durationMs = Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100
  const fields = { ...record, durationMs }
  if (record.outcome === 'refused') log.error(fields, 'decision')
  else log.info(fields, 'decision')
}

const DECIMAL = /^(0|[1-9]\d{0,9})$/

/** The front wrote these; a mismatch means a broken install, not a hostile caller. */
function parseFront(args: readonly string[]): FrontFacts {
  const [uid, gid, groups, fds, ...argv] = args
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
  return { caller: { uid: u, gid: g, groups: list(groups, 'groups') }, fds: list(fds, 'fds'), argv }
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
