// Operator commands. They run with the caller's own credentials (the front drops root before
// starting Node for them) and may take --config, unlike the emulator path.
import { Command, Option } from 'commander'
import { readFileSync } from 'node:fs'
import { loadConfig } from './config.ts'
import { authorisedRecord, refusedRecord, type Decision } from './decision.ts'
import { asQkError, QkError } from './errors.ts'
import { classify } from './invocation.ts'
import { loadKeys } from './keys.ts'
import { CONFIG_PATH } from './paths.ts'
import { sys } from './sys.ts'
import { QEMU_UID_CLAIM } from './token.ts'
import { issueToken, keygen, parseTtl } from './tokens-cli.ts'
import { authorise, type Trail } from './verify.ts'

export async function runCli(argv: readonly string[]): Promise<number> {
  let exitCode = 0
  const program = new Command('qemu-kube')
    .description('KubeVirt node driver: the <emulator> libvirt runs; verifies a launch and execs QEMU inside the VM\'s pod.\n'
      + 'libvirt runs it with QEMU arguments; operators use the commands below.')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
  const configOption = () => new Option('--config <path>', 'config file').default(CONFIG_PATH)

  program.command('explain')
    .description('run the whole verification for KUBEVIRT_* from the environment (or -e) and the QEMU arguments after --,\n'
      + 'print the decision as JSON; consumes no token and touches no namespace')
    .addOption(configOption())
    .option('-e, --env <KEY=VALUE...>', 'set a KUBEVIRT_* variable instead of taking it from the environment')
    .option('--as <uid>', 'the caller uid to simulate (gid = uid, as libvirt runs a +UID:+UID seclabel; default: the token\'s qemu_uid claim)')
    .argument('[qemu-args...]', 'the QEMU arguments libvirt would pass')
    .action(async (qemuArgs: string[], o: { config: string; env?: string[]; as?: string }) => {
      const r = await explain(o.config, envFrom(o.env), qemuArgs, o.as)
      process.stdout.write(`${JSON.stringify(r.decision, null, 2)}\n`)
      exitCode = r.exitCode
    })

  program.command('check-config')
    .description('validate the config, its key files and its user/group names; print the effective config')
    .addOption(configOption())
    .action((o: { config: string }) => {
      const cfg = loadConfig(o.config)
      const keys = loadKeys(cfg.token_public_keys).map((k) => ({ kid: k.kid, file: k.file, type: k.key.asymmetricKeyType }))
      process.stdout.write(`${JSON.stringify({ ok: true, config: o.config, effective: cfg, keys }, null, 2)}\n`)
    })

  program.command('keygen')
    .description('make an RSA key pair for signing launch tokens (private key written 0600)')
    .requiredOption('--private <file>', 'where to write the PEM private key (0600)')
    .requiredOption('--public <file>', 'where to write the PEM public key (list it in token_public_keys)')
    .option('--bits <n>', 'RSA modulus size', '3072')
    .action((o: { private: string; public: string; bits: string }) => keygen(o.private, o.public, Number(o.bits)))

  const token = program.command('token').description('launch tokens')
  token.command('issue')
    .description('print a signed token for one VM (what the verifier accepts: unique jti, iat, exp)')
    .requiredOption('--key <file>', 'PEM private key')
    .requiredOption('--vm-uuid <uuid>', 'KUBEVIRT_VM_UUID of the VM')
    .requiredOption('--vm-name <name>', 'KUBEVIRT_VM_NAME of the VM')
    .requiredOption('--qemu-uid <uid>', 'the VM\'s host uid (its seclabel +UID:+UID, from vm_uid_range; one per live VM)')
    .option('--ttl <duration>', 'lifetime, e.g. 60s or 1m (at most token_max_lifetime)', '60s')
    .option('--alg <alg>', 'RS256 or PS256', 'RS256')
    .option('--kid <kid>', 'key id to put in the header')
    .option('--issuer <iss>', 'default: token_issuer from the config')
    .option('--audience <aud>', 'default: token_audience from the config')
    .addOption(configOption())
    .action(async (o: { key: string; vmUuid: string; vmName: string; qemuUid: string; ttl: string; alg: string; kid?: string; issuer?: string; audience?: string; config: string }) => {
      const cfg = o.issuer !== undefined && o.audience !== undefined ? undefined : loadConfig(o.config)
      const jws = await issueToken({
        key: readFileSync(o.key, 'utf8'),
        vm: { uuid: o.vmUuid, name: o.vmName },
        qemuUid: uidArg(o.qemuUid),
        ttl: parseTtl(o.ttl),
        alg: o.alg,
        issuer: o.issuer ?? cfg!.token_issuer,
        audience: o.audience ?? cfg!.token_audience,
        ...(o.kid === undefined ? {} : { kid: o.kid }),
      })
      process.stdout.write(`${jws}\n`)
    })

  try {
    await program.parseAsync([...argv], { from: 'user' })
  } catch (e) {
    if (typeof e === 'object' && e !== null && 'exitCode' in e && typeof e.exitCode === 'number' && 'code' in e
      && String(e.code).startsWith('commander.')) {
      return e.exitCode === 0 ? 0 : 64
    }
    // Reported here, with this bundle's own error class: main.ts lives in another bundle, where
    // `instanceof QkError` would not recognise ours.
    const err = asQkError(e)
    process.stderr.write(`${JSON.stringify({ level: 'error', code: err.code, msg: err.message, hint: err.hint })}\n`)
    return err.exitCode
  }
  return exitCode
}

/** The decision a launch with this environment and argv would get, and the exit status it implies. */
async function explain(configPath: string, env: Record<string, string | undefined>, qemuArgs: string[], as?: string): Promise<{ decision: Decision; exitCode: number }> {
  const trail: Trail = {}
  try {
    // Without root the pod's /proc entries, its mount namespace, the state dir (and a root-only
    // config) answer EPERM or EACCES, which would read as "the launcher died" or "no secret":
    // say what is wrong instead.
    if ((process.geteuid?.() ?? 0) !== 0) {
      throw new QkError('ERR_USAGE', 'explain needs root: it reads the pod\'s /proc entries and mount namespace and the state dir as a launch does; run it as root')
    }
    const config = loadConfig(configPath)
    const inv = classify(env, qemuArgs)
    if (inv.kind === 'probe') return { decision: { outcome: 'probe', code: 'OK', qemu: { path: config.probe_qemu_binary, from: 'host' } }, exitCode: 0 }
    const uid = as === undefined ? claimedUid(inv.token) : Number(as)
    if (!Number.isSafeInteger(uid) || uid < 0) throw new QkError('ERR_USAGE', `--as takes a numeric uid, got ${JSON.stringify(String(as).slice(0, 40))}`)
    const caller = { uid, gid: uid, groups: [uid] }
    const a = await authorise(inv, { config, caller, now: () => new Date(), ops: sys(), consume: false }, trail)
    return { decision: authorisedRecord(a), exitCode: 0 }
  } catch (e) {
    const err = asQkError(e)
    return { decision: refusedRecord(err, trail), exitCode: err.exitCode }
  }
}

function uidArg(s: string): number {
  if (!/^[1-9]\d{0,9}$/.test(s) || Number(s) > 4294967294) throw new QkError('ERR_USAGE', `--qemu-uid takes a uid from 1 to 4294967294, got ${JSON.stringify(s.slice(0, 40))}`)
  return Number(s)
}

/** The uid the token claims, unverified: only to pick whom `explain` simulates; authorise() checks it. */
function claimedUid(token: string): number {
  try {
    const claim = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8'))[QEMU_UID_CLAIM]
    if (typeof claim === 'number') return claim
  } catch {
    // fall through: authorise() reports the malformed token with its own code
  }
  return -1
}

function envFrom(pairs: string[] | undefined): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {}
  for (const k of ['KUBEVIRT_VM_UUID', 'KUBEVIRT_VM_NAME', 'KUBEVIRT_SECRET']) env[k] = process.env[k]
  for (const p of pairs ?? []) {
    const i = p.indexOf('=')
    if (i < 1 || !p.startsWith('KUBEVIRT_')) throw new QkError('ERR_USAGE', `-e takes KUBEVIRT_NAME=VALUE, got ${JSON.stringify(p.slice(0, 40))}`)
    env[p.slice(0, i)] = p.slice(i + 1)
  }
  return env
}
