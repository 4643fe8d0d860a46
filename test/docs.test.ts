// The README, the example config and --help must stay true to the code.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { allCodes, QkError } from '../src/emulator/errors.ts'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')

t.test('the README lists every error code with its exit status and hint', async (t) => {
  for (const code of allCodes) {
    const e = new QkError(code, '')
    t.ok(readme.includes(`| \`${code}\` | ${e.exitCode} | ${e.hint.replace(/\|/g, '\\|')} |`), code)
  }
})

t.test('every operator command the README shows is in --help, and the other way round', async (t) => {
  const { execFileSync } = await import('node:child_process')
  const help = execFileSync(process.execPath, [new URL('../dist/qemu-kube.cjs', import.meta.url).pathname, '--help'], { encoding: 'utf8' })
  const listed = [...help.matchAll(/^ {2}([a-z][a-z-]+) /gm)].map((m) => m[1]!).filter((c) => c !== 'help')
  t.same(listed.sort(), ['agent', 'check-config', 'explain', 'keygen', 'metrics', 'status', 'token', 'version'].sort())
  for (const c of listed) t.match(readme, new RegExp(`qemu-kube ${c}\\b`), `README shows ${c}`)
})

t.test('operator commands report our own codes, not ERR_INTERNAL', async (t) => {
  const { spawnSync } = await import('node:child_process')
  const r = spawnSync(process.execPath, [new URL('../dist/qemu-kube.cjs', import.meta.url).pathname, 'check-config', '--config', '/nonexistent/qemu-kube.conf'], { encoding: 'utf8' })
  t.equal(r.status, 78)
  t.equal(JSON.parse(r.stderr.trim()).code, 'ERR_CONFIG_MISSING')
})
