// The operator CLI's shape, through the built CLI: commander's own errors as the one JSON line
// (ERR_USAGE, 64), hints that point at `qemu-kube help` (on a node `--help` is QEMU's argv),
// `version`, and human output by default with `--output json` for machines.
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { SHARED } from '../../src/shared/constants.ts'
import { tempDir } from '../helpers/tokens.ts'
import { cli } from './cli-run.ts'

const USAGE = { level: 'error', code: 'ERR_USAGE', hint: SHARED.HINT_USAGE }

t.test('commander\'s errors are ERR_USAGE lines with exit 64 and nothing else', async (t) => {
  const cases: [string[], string][] = [
    [['explain', '--bogus'], 'unknown option \'--bogus\''],
    [['keygen', '--private'], 'option \'--private <file>\' argument missing'],
    [['keygen', '--public', '/x'], 'required option \'--private <file>\' not specified'],
    [['chek-config'], 'unknown command \'chek-config\'\n(Did you mean check-config?)'],
    [['version', '--output', 'yaml'], 'option \'-o, --output <format>\' argument \'yaml\' is invalid. Allowed choices are human, json.'],
  ]
  for (const [args, msg] of cases) {
    const r = cli(args)
    t.same({ status: r.status, stdout: r.stdout, stderr: r.stderr }, { status: 64, stdout: '', stderr: `${JSON.stringify({ level: USAGE.level, code: USAGE.code, msg, hint: USAGE.hint })}\n` }, args.join(' '))
  }
})

t.test('the usage hint says `qemu-kube help`, never `qemu-kube --help`', async (t) => {
  t.match(SHARED.HINT_USAGE, /`qemu-kube help`/)
  t.notMatch(SHARED.HINT_USAGE.replace('on a node `qemu-kube --help` is QEMU\'s', ''), /qemu-kube --help/)
  const r = cli(['help'])
  t.equal(r.status, 0)
  t.match(r.stdout.replace(/\s+/g, " "), /run `qemu-kube help` or `qemu-kube help COMMAND`/)
})

t.test('version: the build prefix, sysconfdir and revision, human and json', async (t) => {
  const j = cli(['version', '--output', 'json'])
  t.equal(j.status, 0, j.stderr)
  const v = JSON.parse(j.stdout)
  t.match(v, { version: /^\d+\.\d+\.\d+/, revision: /^[0-9a-f]{7,}(-dirty)?$|^v?\d|^unknown$/, prefix: '/var/lib/kubevirt/qemu-kube', sysconfdir: '/etc/kubevirt', config: '/etc/kubevirt/qemu-kube.conf' })
  t.not(v.revision, 'unbundled', 'the build recorded the revision')
  const h = cli(['version'])
  t.equal(h.stdout, `qemu-kube ${v.version} (revision ${v.revision})\nprefix:     ${v.prefix}\nsysconfdir: ${v.sysconfdir}\nconfig:     ${v.config}\n`)
})

t.test('check-config: human by default, the same facts as JSON with --output json', async (t) => {
  const dir = tempDir(t)
  t.equal(cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/k.pub`, '--bits', '2048']).status, 0)
  writeFileSync(`${dir}/c.conf`, `token_public_keys = [ "${dir}/k.pub" ]\n`, { mode: 0o644 })
  const h = cli(['check-config', '--config', `${dir}/c.conf`])
  t.equal(h.status, 0, h.stderr)
  t.match(h.stdout, new RegExp(`^${dir}/c.conf: ok\nkeys:\n  k \\(rsa\\) ${dir}/k.pub\neffective config:\n  proc_root: +/proc\n`))
  const j = JSON.parse(cli(['check-config', '--config', `${dir}/c.conf`, '-o', 'json']).stdout)
  t.match(j, { ok: true, config: `${dir}/c.conf`, keys: [{ kid: 'k', file: `${dir}/k.pub`, type: 'rsa' }], effective: { proc_root: '/proc' } })
})

t.test('check-config: a proc_root that does not exist is a config error with its line', async (t) => {
  const dir = tempDir(t)
  writeFileSync(`${dir}/c.conf`, `\nproc_root = "${dir}/proc"\n`, { mode: 0o644 })
  const r = cli(['check-config', '--config', `${dir}/c.conf`])
  t.same([r.status, r.error?.code, r.error?.msg], [78, 'ERR_CONFIG_INVALID', `${dir}/c.conf:2: proc_root: expected the node's procfs directory, got "${dir}/proc", which does not exist`])
})

const PROBE = ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none,accel=kvm:tcg', '-qmp', 'unix:/x,server=on,wait=off', '-pidfile', '/x', '-daemonize']

t.test('explain: the decision as key: value lines, or the record as JSON', { skip: process.getuid?.() === 0 ? false : 'needs root: explain refuses to run without it' }, async (t) => {
  const dir = tempDir(t)
  writeFileSync(`${dir}/c.conf`, 'log_level = "info"\n', { mode: 0o644 })
  const h = cli(['explain', '--config', `${dir}/c.conf`, '--', ...PROBE])
  t.equal(h.status, 0, h.stderr)
  t.equal(h.stdout, 'outcome:   probe\ncode:      OK\nqemu.path: /usr/bin/qemu-system-x86_64\nqemu.from: host\n')
  const j = cli(['explain', '--config', `${dir}/c.conf`, '--output', 'json', '--', ...PROBE])
  t.same(JSON.parse(j.stdout), { outcome: 'probe', code: 'OK', qemu: { path: '/usr/bin/qemu-system-x86_64', from: 'host' } })
  // A token without a qemu_uid claim and no --as: said as such, not as "--as ... got undefined".
  const r = cli(['explain', '--config', `${dir}/c.conf`, '-o', 'json', '-e', 'KUBEVIRT_VM_UUID=u', '-e', 'KUBEVIRT_VM_NAME=n', '-e', 'KUBEVIRT_SECRET=a.b.c', '--', '-name', 'guest=x'])
  t.equal(r.status, 64)
  t.match(JSON.parse(r.stdout), { outcome: 'refused', code: 'ERR_USAGE', reason: 'the token has no numeric "qemu_uid" claim to take the caller\'s uid from; pass --as UID' })
})
