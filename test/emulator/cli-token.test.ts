// `qemu-kube token issue`: refuses what the verifier would refuse instead of minting a dead
// token, and types its file problems (66 missing key, 65 a public key), through the built CLI.
// An issued token is checked with the verifier itself.
import t from 'tap'
import { createPublicKey } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { verifyToken } from '../../src/emulator/token.ts'
import { tempDir } from '../helpers/tokens.ts'
import { cli } from './cli-run.ts'

const dir = tempDir(t)
t.equal(cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/k.pub`, '--bits', '2048']).status, 0)
const config = `${dir}/qemu-kube.conf`
writeFileSync(config, 'token_max_lifetime = 30\ntoken_algorithms = [ "PS256" ]\nvm_uid_range = [ 30000, 30009 ]\ntoken_issuer = "iss-x"\ntoken_audience = "aud-x"\n', { mode: 0o644 })
const VM = ['--vm-uuid', 'u-1', '--vm-name', 'vm1']
const issue = (...more: string[]) => cli(['token', 'issue', '--key', `${dir}/k`, ...VM, '--config', config, '--alg', 'PS256', '--qemu-uid', '30001', '--ttl', '30s', ...more])
const REFUSED = 'the verifier would refuse this token: keep --ttl, --alg, --qemu-uid and the VM ids within the config (token_max_lifetime, token_algorithms, vm_uid_range, the id pattern), or pass the --config the nodes use'

t.test('an issued token is one the verifier accepts', async (t) => {
  const r = issue()
  t.equal(r.status, 0, r.stderr)
  const jws = r.stdout.trim()
  const v = await verifyToken(jws, { uuid: 'u-1', name: 'vm1', uid: 30001 },
    { issuer: 'iss-x', audience: 'aud-x', algorithms: ['PS256'], maxLifetime: 30, clockTolerance: 5, keys: [{ kid: 'k', key: createPublicKey(readPub()), file: 'k.pub' }] }, new Date())
  t.equal(v.exp - v.iat, 30)
  const j = issue('--output', 'json')
  t.match(JSON.parse(j.stdout), { token: /^[\w-]+\.[\w-]+\.[\w-]+$/, ttl: 30, alg: 'PS256' })
})

function readPub(): string {
  return readFileSync(`${dir}/k.pub`, 'utf8')
}

t.test('what the verifier would refuse is refused before signing: ERR_ISSUE_REFUSED, 65', async (t) => {
  const cases: [string[], string][] = [
    [['--ttl', '31s'], `--ttl expected at most token_max_lifetime 30 s (${config}), got 31 s (the verifier refuses it: ERR_TOKEN_LIFETIME)`],
    [['--alg', 'RS256'], `--alg expected one of token_algorithms PS256 (${config}), got RS256 (the verifier refuses it: ERR_TOKEN_ALG_NOT_ALLOWED)`],
    [['--qemu-uid', '20001'], `--qemu-uid expected a uid in vm_uid_range 30000..30009 (${config}), got 20001 (the verifier refuses it: ERR_CALLER_NOT_ALLOWED)`],
    [['--vm-name', 'a b'], '--vm-name expected ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$, got "a b" (the verifier refuses it: ERR_ENV_INVALID)'],
    [['--vm-uuid', '-x'], '--vm-uuid expected ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$, got "-x" (the verifier refuses it: ERR_ENV_INVALID)'],
  ]
  for (const [args, msg] of cases) {
    const r = issue(...args)
    t.same({ status: r.status, stdout: r.stdout, error: r.error }, { status: 65, stdout: '', error: { level: 'error', code: 'ERR_ISSUE_REFUSED', msg, hint: REFUSED } }, args.join(' '))
  }
})

t.test('without a config, --issuer and --audience check against the built-in defaults', async (t) => {
  const base = ['token', 'issue', '--key', `${dir}/k`, ...VM, '--qemu-uid', '20001', '--issuer', 'i', '--audience', 'a', '--config', `${dir}/none.conf`]
  t.equal(cli(base).status, 0)
  const r = cli([...base, '--ttl', '2m'])
  t.same([r.status, r.error?.code, r.error?.msg], [65, 'ERR_ISSUE_REFUSED', '--ttl expected at most token_max_lifetime 60 s (built-in default: no config), got 120 s (the verifier refuses it: ERR_TOKEN_LIFETIME)'])
  const m = cli(['token', 'issue', '--key', `${dir}/k`, ...VM, '--qemu-uid', '20001', '--config', `${dir}/none.conf`])
  t.same([m.status, m.error?.code], [78, 'ERR_CONFIG_MISSING'], 'without both names the config must exist')
})

t.test('the key: missing (66), a public key or not PEM (65), an alg it cannot sign (65), an unknown alg (64)', async (t) => {
  const missing = issue('--key', `${dir}/none`)
  t.same([missing.status, missing.error?.code, missing.error?.msg], [66, 'ERR_INPUT_MISSING', `--key ${dir}/none does not exist`])
  t.equal(missing.error?.hint, 'the file named must exist and be readable by the user running the command')
  const pub = issue('--key', `${dir}/k.pub`)
  t.same([pub.status, pub.error?.code, pub.error?.msg], [65, 'ERR_SIGNING_KEY_INVALID', `--key ${dir}/k.pub: expected a PEM private key (BEGIN PRIVATE KEY), got a public key`])
  writeFileSync(`${dir}/junk`, 'hello')
  const junk = issue('--key', `${dir}/junk`)
  t.same([junk.status, junk.error?.code, junk.error?.msg], [65, 'ERR_SIGNING_KEY_INVALID', `--key ${dir}/junk: expected a PKCS#8 PEM private key (BEGIN PRIVATE KEY), got no PEM block`])
  writeFileSync(config, 'token_algorithms = [ "ES256" ]\n')
  t.teardown(() => writeFileSync(config, 'token_max_lifetime = 30\ntoken_algorithms = [ "PS256" ]\nvm_uid_range = [ 30000, 30009 ]\n'))
  const ec = cli(['token', 'issue', '--key', `${dir}/k`, ...VM, '--config', config, '--alg', 'ES256', '--qemu-uid', '20001'])
  t.same([ec.status, ec.error?.code, ec.error?.msg], [65, 'ERR_SIGNING_KEY_INVALID', '--key: expected a private key usable with ES256 (RS*/PS* need RSA, ES* EC, EdDSA Ed25519), got one that is not'])
  const hs = cli(['token', 'issue', '--key', `${dir}/k`, ...VM, '--config', config, '--alg', 'HS256', '--qemu-uid', '20001'])
  t.same([hs.status, hs.error?.code, hs.error?.msg], [64, 'ERR_USAGE', '--alg expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA, got "HS256"'])
})
