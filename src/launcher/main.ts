// virt-launcher: the pod's long-lived process, the one qemu-kube on the node looks for.
// In order: parse and check the flags; install the development token if asked; check the token
// is present and sane at the secret path in this pod's mount namespace; hand out the domain XML
// fragment (full to a 0600 file, redacted to stdout); signal readiness; then live as a
// well-behaved PID 1 until SIGTERM/SIGINT. Only this file ends the process.
import { readFileSync, writeFileSync } from 'node:fs'
import { asQkError, QkError } from '../emulator/errors.ts'
import { parseArgs, USAGE } from './args.ts'
import { domainFragment } from './domain-xml.ts'
import { checkToken, installToken } from './pod-token.ts'
import { startReaper } from './reaper.ts'

function main(argv: readonly string[]): void {
  if (argv.includes('-h') || argv.includes('--help') || argv.includes('-help')) {
    process.stdout.write(`${USAGE}\n`)
    process.exit(0)
  }
  const args = parseArgs(argv)
  if (args.tokenFile !== undefined) installToken(args.tokenFile, args.secretPath)
  checkToken(args.secretPath)
  const token = readFileSync(args.secretPath, 'utf8').trim()
  const fragment = { emulator: args.emulator, uuid: args.uuid, name: args.name, token }
  if (args.domainXmlOut !== undefined) writeFileSync(args.domainXmlOut, domainFragment(fragment), { mode: 0o600 })
  process.stdout.write(domainFragment(fragment, true))
  if (args.readyFile !== undefined) writeFileSync(args.readyFile, `${process.pid}\n`)
  log('info', `ready: VM ${args.uuid} (${args.name}), token at ${args.secretPath}`)

  startReaper()
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      log('info', `${sig}: exiting`)
      process.exit(0)
    })
  }
  setInterval(() => {}, 1 << 30) // stay alive; the signal handlers end us
}

function log(level: string, msg: string, extra: object = {}): void {
  process.stderr.write(`${JSON.stringify({ level, time: new Date().toISOString(), name: 'virt-launcher', msg, ...extra })}\n`)
}

try {
  main(process.argv.slice(2))
} catch (e) {
  const err = e instanceof QkError ? e : asQkError(e)
  log('error', err.message, { code: err.code, hint: err.hint })
  process.exit(err.exitCode)
}
