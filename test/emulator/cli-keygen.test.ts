// `qemu-kube keygen`: both files or neither, never over an existing file, typed output errors
// (73), through the built CLI.
import t from 'tap'
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { tempDir } from '../helpers/tokens.ts'
import { cli } from './cli-run.ts'

const HINT_EXISTS = 'nothing is overwritten: remove the file named or choose another path'
const HINT_DIR = 'the directory named must exist and be writable by the user running the command'

t.test('writes the pair: private 0600, public 0644, says so', async (t) => {
  const dir = tempDir(t)
  const r = cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/k.pub`, '--bits', '2048'])
  t.equal(r.status, 0, r.stderr)
  t.equal(r.stdout, `wrote ${dir}/k (private, 0600) and ${dir}/k.pub (public, 0644), RSA 2048 bits\n`)
  t.equal(statSync(`${dir}/k`).mode & 0o777, 0o600)
  t.equal(statSync(`${dir}/k.pub`).mode & 0o777, 0o644)
  t.match(readFileSync(`${dir}/k`, 'utf8'), /^-----BEGIN PRIVATE KEY-----/)
  t.match(readFileSync(`${dir}/k.pub`, 'utf8'), /^-----BEGIN PUBLIC KEY-----/)
  t.same(readdirSync(dir).sort(), ['k', 'k.pub'], 'no temporary file left')
  const j = cli(['keygen', '--private', `${dir}/j`, '--public', `${dir}/j.pub`, '--bits', '2048', '--output', 'json'])
  t.same(JSON.parse(j.stdout), { private: `${dir}/j`, public: `${dir}/j.pub`, bits: 2048 })
})

t.test('onto an existing file: ERR_OUTPUT_EXISTS, 73, the other file not written, the old one intact', async (t) => {
  const dir = tempDir(t)
  writeFileSync(`${dir}/k.pub`, 'old')
  const r = cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/k.pub`, '--bits', '2048'])
  t.equal(r.status, 73)
  t.same(r.error, { level: 'error', code: 'ERR_OUTPUT_EXISTS', msg: `${dir}/k.pub exists; keygen writes new files only`, hint: HINT_EXISTS })
  t.equal(readFileSync(`${dir}/k.pub`, 'utf8'), 'old')
  t.same(readdirSync(dir), ['k.pub'], 'neither the private key nor a temporary file')
  writeFileSync(`${dir}/p`, 'old private')
  const p = cli(['keygen', '--private', `${dir}/p`, '--public', `${dir}/p.pub`, '--bits', '2048'])
  t.equal(p.error?.code, 'ERR_OUTPUT_EXISTS')
  t.equal(readFileSync(`${dir}/p`, 'utf8'), 'old private')
  t.notOk(existsSync(`${dir}/p.pub`))
})

t.test('into a missing directory: ERR_OUTPUT_UNWRITABLE, 73, and neither file', async (t) => {
  const dir = tempDir(t)
  const r = cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/none/k.pub`, '--bits', '2048'])
  t.equal(r.status, 73)
  t.same(r.error, { level: 'error', code: 'ERR_OUTPUT_UNWRITABLE', msg: `cannot create ${dir}/none/k.pub: directory ${dir}/none does not exist`, hint: HINT_DIR })
  t.same(readdirSync(dir), [], 'the private key was not left alone')
})

t.test('into a directory the caller cannot write: ERR_OUTPUT_UNWRITABLE, 73', { skip: process.getuid?.() === 0 ? false : 'needs root: runs keygen as uid 65534 against a root-owned directory' }, async (t) => {
  const dir = tempDir(t)
  chmodSync(dir, 0o755)
  const r = cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/k.pub`, '--bits', '2048'], { uid: 65534 })
  t.equal(r.status, 73, r.stderr)
  t.same(r.error, { level: 'error', code: 'ERR_OUTPUT_UNWRITABLE', msg: `cannot create ${dir}/k: directory ${dir} is not writable by uid 65534 (EACCES)`, hint: HINT_DIR })
  t.same(readdirSync(dir), [])
})

t.test('bad --bits and one path for both: ERR_USAGE', async (t) => {
  const dir = tempDir(t)
  const r = cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/k.pub`, '--bits', '1024'])
  t.same([r.status, r.error?.code, r.error?.msg], [64, 'ERR_USAGE', '--bits expected 2048..8192, got 1024'])
  const same = cli(['keygen', '--private', `${dir}/k`, '--public', `${dir}/k`])
  t.same([same.status, same.error?.code, same.error?.msg], [64, 'ERR_USAGE', `--private and --public must be two files, got ${dir}/k for both`])
  t.same(readdirSync(dir), [])
})
