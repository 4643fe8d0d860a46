// virt-launcher: the pod's long-lived process, the one qemu-kube on the node looks for.
// In order: parse and check the flags; bind libc through koffi (a broken koffi is a startup
// error, never a crash after "ready"); install the development token if asked; check the token
// is present and sane at the secret path in this pod's mount namespace, and that its qemu_uid
// claim is -qemu-uid; hand out the domain XML fragment (full to a 0600 file, redacted to
// stdout); open the QEMU link; signal readiness; then live as a well-behaved PID 1 until
// SIGTERM/SIGINT, when it asks every linked QEMU's watcher to stop it, waits for them, and exits 0. Only this file ends the process.
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { asQkError, errnoOf, QkError } from '../emulator/errors.ts'
import { parseArgs, USAGE } from './args.ts'
import { domainFragment } from './domain-xml.ts'
import { bindLibc } from './libc.ts'
import { checkToken, installToken } from './pod-token.ts'
import { startQemuLink, type QemuLink } from './qemu-link.ts'
import { startReaper } from './reaper.ts'
import { stopQemus } from './stop-qemus.ts'
import { checkUidClaim } from './uid-claim.ts'

function main(argv: readonly string[]): void {
  if (argv.includes('-h') || argv.includes('--help') || argv.includes('-help')) {
    process.stdout.write(`${USAGE}\n`)
    process.exit(0)
  }
  const args = parseArgs(argv)
  const libc = bindLibc()
  if (args.tokenFile !== undefined) {
    mustRead(args.tokenFile)
    installToken(args.tokenFile, args.secretPath)
  }
  checkToken(args.secretPath)
  const token = readFileSync(args.secretPath, 'utf8').trim()
  checkUidClaim(token, args.qemuUid)
  const fragment = { emulator: args.emulator, uuid: args.uuid, name: args.name, token, qemuUid: args.qemuUid }
  if (args.domainXmlOut !== undefined) writeOutput(args.domainXmlOut, domainFragment(fragment))
  process.stdout.write(domainFragment(fragment, true))
  const link: QemuLink | null = args.qemuLink === null ? null : startQemuLink(libc, args.qemuLink, log)
  if (args.readyFile !== undefined) writeFileSync(args.readyFile, `${process.pid}\n`)
  log('info', `ready: VM ${args.uuid} (${args.name}), token at ${args.secretPath}, QEMU uid ${args.qemuUid}, `
    + `link ${args.qemuLink ?? 'off'}`)

  startReaper(libc)
  let stopping = false
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      if (stopping) return // one teardown; a repeated signal must not cut it short
      stopping = true
      log('info', `${sig}: stopping ${link?.linked.size ?? 0} linked QEMU(s), then exiting`)
      void (async () => {
        if (link !== null) await stopQemus(link, args.qemuStopTimeout, log)
        log('info', 'exiting')
        process.exit(0)
      })().catch((e: unknown) => {
        const err = asQkError(e)
        log('error', err.message, { code: err.code, hint: err.hint })
        process.exit(err.exitCode)
      })
    })
  }
  setInterval(() => {}, 1 << 30) // stay alive; the signal handlers end us
}

/** -token-file must name a readable file: 66, not a copy error after "installing". */
function mustRead(file: string): void {
  try {
    closeSync(openSync(file, 'r'))
  } catch (e) {
    const errno = errnoOf(e)
    const why = errno === 'ENOENT' ? 'does not exist' : errno === 'EACCES' ? `is not readable by uid ${process.getuid?.() ?? '?'}` : `cannot be read (${errno ?? 'unknown error'})`
    throw new QkError('ERR_INPUT_MISSING', `-token-file ${file} ${why}`, { file })
  }
}

/** The fragment holds the token: 0600, and a failure names the directory at fault (73). */
function writeOutput(file: string, text: string): void {
  try {
    writeFileSync(file, text, { mode: 0o600 })
  } catch (e) {
    const errno = errnoOf(e)
    const why = errno === 'ENOENT' || errno === 'ENOTDIR' ? `directory ${dirname(file)} does not exist`
      : errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS' ? `directory ${dirname(file)} is not writable by uid ${process.getuid?.() ?? '?'} (${errno})`
        : errno === 'EISDIR' ? 'it is a directory' : `${errno ?? 'unknown error'}`
    throw new QkError('ERR_OUTPUT_UNWRITABLE', `-domain-xml-out: cannot write ${file}: ${why}`, { file })
  }
}

const LAUNCHER_USAGE_HINT = 'run `virt-launcher -help` for its flags; KubeVirt\'s pod spec passes them'

function log(level: string, msg: string, extra: object = {}): void {
  process.stderr.write(`${JSON.stringify({ level, time: new Date().toISOString(), name: 'virt-launcher', msg, ...extra })}\n`)
}

try {
  main(process.argv.slice(2))
} catch (e) {
  const err = e instanceof QkError ? e : asQkError(e)
  // ERR_USAGE's shared hint is about qemu-kube's commands; this program has flags of its own.
  log('error', err.message, { code: err.code, hint: err.code === 'ERR_USAGE' ? LAUNCHER_USAGE_HINT : err.hint })
  process.exit(err.exitCode)
}
