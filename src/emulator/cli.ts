// Operator commands. They run with the caller's own credentials (the front drops root before
// starting Node for them) and may take --config, unlike the emulator path. Each prints human
// text by default and one JSON document with --output json (output.ts); every error, commander's
// own included, is the one JSON line on stderr with its code and sysexits status.
import { Command, CommanderError, Option } from 'commander'
import { addAgentCommands } from './cli-agent.ts'
import { loadConfig, schema } from './config.ts'
import { authorisedRecord, refusedRecord, type Decision } from './decision.ts'
import { asQkError, QkError } from './errors.ts'
import { classify } from './invocation.ts'
import { loadKeys } from './keys.ts'
import { emit, errorLine, fields, outputOption, type OutputFormat } from './output.ts'
import { CONFIG_PATH } from './paths.ts'
import { sys } from './sys.ts'
import { QEMU_UID_CLAIM } from './token.ts'
import { checkIssue, issueToken, keygen, parseTtl, readSigningKey, type IssueLimits } from './tokens-cli.ts'
import { versionInfo } from './version.ts'
import { authorise, type Trail } from './verify.ts'

export async function runCli(argv: readonly string[]): Promise<number> {
  let exitCode = 0
  const program = new Command('qemu-kube')
    .description('KubeVirt node driver: the <emulator> libvirt runs; verifies a launch and execs QEMU inside the VM\'s pod.\n'
      + 'libvirt runs it with QEMU arguments; operators use the commands below.\n'
      + 'On a node, `qemu-kube --help` is a QEMU argument list: run `qemu-kube help` or `qemu-kube help COMMAND`.')
    .exitOverride()
    .showSuggestionAfterError(true)
    // Commander's own errors (unknown option, missing argument) become ERR_USAGE lines below;
    // help text still goes where commander sends it.
    .configureOutput({ writeErr: (s) => process.stderr.write(s), outputError: () => {} })
  const configOption = () => new Option('--config <path>', 'config file').default(CONFIG_PATH)

  program.command('version')
    .description('print the version, the source revision it was built from, and the build prefix and sysconfdir')
    .addOption(outputOption())
    .action((o: { output: OutputFormat }) => {
      emit(o.output, versionInfo(), (v) => `qemu-kube ${v.version} (revision ${v.revision})\n${fields({ prefix: v.prefix, sysconfdir: v.sysconfdir, config: v.config })}`)
    })

  program.command('explain')
    .description('run the whole verification for KUBEVIRT_* from the environment (or -e) and the QEMU arguments after --,\n'
      + 'print the decision; consumes no token and touches no namespace')
    .addOption(configOption())
    .addOption(outputOption('human-readable text, or the decision record as JSON (the fields of the launch\'s decision line)'))
    .option('-e, --env <KEY=VALUE...>', 'set a KUBEVIRT_* variable instead of taking it from the environment')
    .option('--as <uid>', 'the caller uid to simulate (gid = uid, as libvirt runs a +UID:+UID seclabel; default: the token\'s qemu_uid claim)')
    .argument('[qemu-args...]', 'the QEMU arguments libvirt would pass')
    .action(async (qemuArgs: string[], o: { config: string; env?: string[]; as?: string; output: OutputFormat }) => {
      const r = await explain(o.config, envFrom(o.env), qemuArgs, o.as)
      emit(o.output, r.decision, (d) => fields(d))
      exitCode = r.exitCode
    })

  program.command('check-config')
    .description('validate the config and its key files; print the effective config')
    .addOption(configOption())
    .addOption(outputOption())
    .action((o: { config: string; output: OutputFormat }) => {
      const cfg = loadConfig(o.config)
      const keys = loadKeys(cfg.token_public_keys).map((k) => ({ kid: k.kid, file: k.file, type: k.key.asymmetricKeyType }))
      emit(o.output, { ok: true, config: o.config, effective: cfg, keys }, (r) => `${r.config}: ok\n`
        + `keys:\n${r.keys.map((k) => `  ${k.kid} (${k.type}) ${k.file}`).join('\n')}\neffective config:\n${fields(r.effective, '  ')}`)
    })

  program.command('keygen')
    .description('make an RSA key pair for signing launch tokens: both files or neither, never over an existing file')
    .requiredOption('--private <file>', 'where to write the PEM private key (0600)')
    .requiredOption('--public <file>', 'where to write the PEM public key (list it in token_public_keys)')
    .option('--bits <n>', 'RSA modulus size', '3072')
    .addOption(outputOption())
    .action((o: { private: string; public: string; bits: string; output: OutputFormat }) => {
      emit(o.output, keygen(o.private, o.public, Number(o.bits)), (r) => `wrote ${r.private} (private, 0600) and ${r.public} (public, 0644), RSA ${r.bits} bits`)
    })

  const token = program.command('token').description('launch tokens')
  token.command('issue')
    .description('print a signed token for one VM (what the verifier accepts: unique jti, iat, exp);\n'
      + 'refuses what the config\'s verifier would refuse (ttl, alg, ids, qemu uid): the limits come from --config,\n'
      + 'or from the built-in defaults when both --issuer and --audience are given and no config exists')
    .requiredOption('--key <file>', 'PEM private key')
    .requiredOption('--vm-uuid <uuid>', 'KUBEVIRT_VM_UUID of the VM')
    .requiredOption('--vm-name <name>', 'KUBEVIRT_VM_NAME of the VM')
    .requiredOption('--qemu-uid <uid>', 'the VM\'s host uid (its seclabel +UID:+UID, from vm_uid_range; one per live VM)')
    .option('--ttl <duration>', 'lifetime, e.g. 60s or 1m (at most token_max_lifetime)', '60s')
    .option('--alg <alg>', 'one of token_algorithms (RS256, PS256 by default)', 'RS256')
    .option('--kid <kid>', 'key id to put in the header')
    .option('--issuer <iss>', 'default: token_issuer from the config')
    .option('--audience <aud>', 'default: token_audience from the config')
    .addOption(configOption())
    .addOption(outputOption('the token alone, or JSON with the token and its jti-free facts (ttl, alg, kid)'))
    .action(async (o: { key: string; vmUuid: string; vmName: string; qemuUid: string; ttl: string; alg: string; kid?: string; issuer?: string; audience?: string; config: string; output: OutputFormat }) => {
      const { cfg, from } = issueConfig(o.config, o.issuer !== undefined && o.audience !== undefined)
      const req = { vm: { uuid: o.vmUuid, name: o.vmName }, qemuUid: uidArg(o.qemuUid), ttl: parseTtl(o.ttl), alg: o.alg }
      checkIssue(req, cfg, from)
      const jws = await issueToken({
        ...req,
        key: readSigningKey(o.key),
        issuer: o.issuer ?? cfg.token_issuer,
        audience: o.audience ?? cfg.token_audience,
        ...(o.kid === undefined ? {} : { kid: o.kid }),
      })
      emit(o.output, { token: jws, ttl: req.ttl, alg: req.alg, ...(o.kid === undefined ? {} : { kid: o.kid }) }, (r) => r.token)
    })

  addAgentCommands(program)

  try {
    await program.parseAsync([...argv], { from: 'user' })
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version shown (exit 0) or asked for by omission (a bare `token`): commander
      // printed them already. Everything else is a usage error in the one-line shape.
      if (e.exitCode === 0) return 0
      if (e.code === 'commander.help' || e.code === 'commander.helpDisplayed') return 64
      return report(new QkError('ERR_USAGE', e.message.replace(/^error: /, ''), { commander: e.code }))
    }
    // Reported here, with this bundle's own error class: main.ts lives in another bundle, where
    // `instanceof QkError` would not recognise ours.
    return report(asQkError(e))
  }
  return exitCode
}

function report(err: QkError): number {
  process.stderr.write(errorLine(err))
  return err.exitCode
}

/**
 * The config `token issue` checks against. Without --issuer and --audience it must load; with
 * both, a config that does not exist (a workstation) leaves the defaults a node gets from an
 * empty config, and says so in every refusal.
 */
function issueConfig(path: string, namesGiven: boolean): { cfg: IssueLimits & { token_issuer: string; token_audience: string }; from: string } {
  try {
    return { cfg: loadConfig(path), from: path }
  } catch (e) {
    if (namesGiven && e instanceof QkError && e.code === 'ERR_CONFIG_MISSING') return { cfg: schema.parse({}), from: 'built-in default: no config' }
    throw e
  }
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
    if (as === undefined && uid < 0) {
      throw new QkError('ERR_USAGE', `the token has no numeric "${QEMU_UID_CLAIM}" claim to take the caller's uid from; pass --as UID`)
    }
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
  if (!/^[1-9]\d{0,9}$/.test(s) || Number(s) > 4294967294) throw new QkError('ERR_USAGE', `--qemu-uid expected a uid from 1 to 4294967294, got ${JSON.stringify(s.slice(0, 40))}`)
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
