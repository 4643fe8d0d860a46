// virt-launcher's file errors, through the launcher bundle built from source: a missing
// -token-file is 66 (ERR_INPUT_MISSING) before anything is installed, an unwritable
// -domain-xml-out is 73 (ERR_OUTPUT_UNWRITABLE) naming the directory, never ERR_INTERNAL.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { tempDir } from '../helpers/tokens.ts'
import { bundleLauncher } from './bundle.ts'

const bundle = await bundleLauncher(t)
const claim = Buffer.from(JSON.stringify({ qemu_uid: 20001 })).toString('base64url')
const TOKEN = `eyJhbGciOiJSUzI1NiJ9.${claim}.c2ln`

function run(args: string[], uid?: number) {
  // Through `env -i`: tap's process tracking re-adds its NODE_OPTIONS to any env we pass, and
  // a child of another uid cannot write tap's files.
  const r = spawnSync('/usr/bin/env', ['-i', `PATH=${process.env['PATH'] ?? '/usr/bin:/bin'}`, process.execPath, bundle, '-kubevirt.vm.uuid', 'u-1', '-kubevirt.vm.name', 'vm1', '-qemu-uid', '20001', '-qemu-link', '', ...args],
    { encoding: 'utf8', timeout: 20000, ...(uid === undefined ? {} : { uid, gid: uid }) })
  const last = r.stderr.trim().split('\n').at(-1) ?? ''
  let line: { code?: string; msg?: string } = {}
  try {
    line = JSON.parse(last)
  } catch {
    // asserted below: the test fails on a non-JSON last line
  }
  return { status: r.status, signal: r.signal, line, stderr: r.stderr }
}

t.test('-token-file that does not exist: ERR_INPUT_MISSING, 66, nothing installed', async (t) => {
  const dir = tempDir(t)
  const r = run(['-token-file', `${dir}/none`, '-secret-path', `${dir}/secret/token`])
  t.equal(r.status, 66, r.stderr)
  t.same({ code: r.line.code, msg: r.line.msg }, { code: 'ERR_INPUT_MISSING', msg: `-token-file ${dir}/none does not exist` })
  t.notOk(existsSync(`${dir}/secret`), 'the secret directory was not made')
})

t.test('-domain-xml-out in a missing directory: ERR_OUTPUT_UNWRITABLE, 73', async (t) => {
  const dir = tempDir(t)
  writeFileSync(`${dir}/tok`, TOKEN)
  const r = run(['-token-file', `${dir}/tok`, '-secret-path', `${dir}/secret/token`, '-domain-xml-out', `${dir}/none/fragment.xml`])
  t.equal(r.status, 73, r.stderr)
  t.same({ code: r.line.code, msg: r.line.msg },
    { code: 'ERR_OUTPUT_UNWRITABLE', msg: `-domain-xml-out: cannot write ${dir}/none/fragment.xml: directory ${dir}/none does not exist` })
})

t.test('-domain-xml-out in a directory the launcher cannot write: ERR_OUTPUT_UNWRITABLE, 73', { skip: process.getuid?.() === 0 ? false : 'needs root: runs the launcher as uid 65534 against a root-owned directory' }, async (t) => {
  chmodSync(dirname(bundle), 0o755) // mkdtemp's 0700: uid 65534 must read the bundle
  const dir = tempDir(t)
  chmodSync(dir, 0o755)
  mkdirSync(`${dir}/secret`, { mode: 0o777 })
  chmodSync(`${dir}/secret`, 0o777)
  mkdirSync(`${dir}/out`, { mode: 0o755 })
  writeFileSync(`${dir}/tok`, TOKEN, { mode: 0o644 })
  const r = run(['-token-file', `${dir}/tok`, '-secret-path', `${dir}/secret/token`, '-domain-xml-out', `${dir}/out/fragment.xml`], 65534)
  t.equal(r.status, 73, r.stderr)
  t.same({ code: r.line.code, msg: r.line.msg },
    { code: 'ERR_OUTPUT_UNWRITABLE', msg: `-domain-xml-out: cannot write ${dir}/out/fragment.xml: directory ${dir}/out is not writable by uid 65534 (EACCES)` })
  t.notOk(existsSync(`${dir}/out/fragment.xml`))
})

t.test('a bad command line: ERR_USAGE, 64, with the launcher\'s own hint (not qemu-kube\'s)', async (t) => {
  const r = run(['-bogus', 'x'])
  t.equal(r.status, 64, r.stderr)
  t.same({ code: r.line.code, msg: r.line.msg, hint: (r.line as { hint?: string }).hint },
    { code: 'ERR_USAGE', msg: 'unknown flag -bogus', hint: 'run `virt-launcher -help` for its flags; KubeVirt\'s pod spec passes them' })
})
