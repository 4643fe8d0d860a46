// The init container's gate (install-entrypoint.sh runs it before it writes anything): the
// ConfigMap's config and the key files shipped beside it must be ones the front will accept, or
// the node keeps what it has and the init container fails (a rollout stops at the first node,
// instead of leaving a node where every VM start fails).
//
//   node validate-config.cjs --config FILE --sysconfdir S --sysconf-target T [--keys DIR]
//
// S is the node's sysconfdir (the paths in the config are node paths), T where the init
// container has it mounted, DIR the key volume (each regular file, not a dotfile, is one key
// file, installed as S/qemu-kube/NAME). In this order:
//   1. the config parses and passes the schema (parseConfig: the same code as the front, so an
//      unknown key here is an unknown key there: docs/DELIVERY.md, version skew);
//   2. each shipped key file parses as public key material (parseKeyFile);
//   3. each token_public_keys entry is a shipped key (S/qemu-kube/NAME) or an existing file under
//      S that parses; one outside S is refused: this container cannot see it, so it cannot say
//      the node will start VMs.
// Prints one JSON line: {"ok":true,...} (exit 0) or {"ok":false,"code":...,"message":...} (exit 78).
// Never prints key material. A main file: the only place here that exits.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { parseConfig } from '../src/emulator/config.ts'
import { QkError } from '../src/emulator/errors.ts'
import { parseKeyFile } from '../src/emulator/keys.ts'

export const KEY_DIR = 'qemu-kube'

export interface Checked { ok: true; config: string; keys: { file: string; from: 'shipped' | 'node'; kids: string[] }[] }

export function validate(o: { config: string; sysconfdir: string; sysconfTarget: string; keys?: string }): Checked {
  const cfg = parseConfig(readFileSync(o.config, 'utf8'), o.config)
  const shipped = new Map<string, string[]>()
  for (const name of o.keys === undefined ? [] : readdirSync(o.keys).sort()) {
    const p = `${o.keys}/${name}`
    if (name.startsWith('.') || !statSync(p).isFile()) continue // the volume's ..data links and dirs
    shipped.set(`${o.sysconfdir}/${KEY_DIR}/${name}`, parseKeyFile(p, readFileSync(p, 'utf8')).map((k) => k.kid))
  }
  const keys = cfg.token_public_keys.map((file) => {
    const kids = shipped.get(file)
    if (kids !== undefined) return { file, from: 'shipped' as const, kids }
    if (!file.startsWith(`${o.sysconfdir}/`)) {
      throw new QkError('ERR_KEY_INVALID', `token_public_keys: expected a file under ${o.sysconfdir} (the sysconfdir this init container installs), got ${file}`, { file })
    }
    const there = `${o.sysconfTarget}${file.slice(o.sysconfdir.length)}`
    let text: string
    try {
      text = readFileSync(there, 'utf8')
    } catch {
      throw new QkError('ERR_KEY_INVALID', `token_public_keys: ${file} is neither shipped in the key volume (${[...shipped.keys()].join(', ') || 'none'}) nor on the node`, { file })
    }
    return { file, from: 'node' as const, kids: parseKeyFile(file, text).map((k) => k.kid) }
  })
  return { ok: true, config: o.config, keys }
}

if (process.argv[1]?.endsWith('validate-config.cjs') || process.argv[1]?.endsWith('validate-config.ts')) {
  try {
    const { values: v } = parseArgs({ options: { config: { type: 'string' }, sysconfdir: { type: 'string' }, 'sysconf-target': { type: 'string' }, keys: { type: 'string' } } })
    if (!v.config || !v.sysconfdir || !v['sysconf-target']) throw new QkError('ERR_USAGE', 'usage: validate-config --config FILE --sysconfdir S --sysconf-target T [--keys DIR]')
    process.stdout.write(`${JSON.stringify(validate({ config: v.config, sysconfdir: v.sysconfdir, sysconfTarget: v['sysconf-target'], ...(v.keys ? { keys: v.keys } : {}) }))}\n`)
  } catch (err) {
    const code = err instanceof QkError ? err.code : 'ERR_CONFIG_INVALID'
    const message = err instanceof Error ? err.message : String(err)
    process.stdout.write(`${JSON.stringify({ ok: false, code, message })}\n`)
    process.exit(78)
  }
}
