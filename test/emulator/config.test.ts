import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { loadConfig, parseConfig, schema } from '../../src/emulator/config.ts'
import { QkError } from '../../src/emulator/errors.ts'
import { tempDir } from '../helpers/tokens.ts'

const example = new URL('../../etc/qemu-kube.conf', import.meta.url)

t.test('the example config parses to the defaults, and documents every key', async (t) => {
  const text = readFileSync(example, 'utf8')
  t.same(parseConfig(text, 'example'), schema.parse({}))
  const uncommented = text.split('\n').map((l) => l.replace(/^#(?=[a-z_]+ = )/, '')).join('\n')
  const all = parseConfig(uncommented, 'example')
  for (const key of Object.keys(schema.shape)) t.ok(key in all, `${key} is documented with its default`)
})

t.test('qemu.conf-style values', async (t) => {
  const c = parseConfig('namespaces = [ "mnt", "net", "pid" ]\ntoken_max_lifetime = 30\nvm_uid_range = [ 30000, 30063 ]\n', 'x')
  t.same(c.namespaces, ['mnt', 'net', 'pid'])
  t.equal(c.token_max_lifetime, 30)
  t.same(c.vm_uid_range, [30000, 30063])
})

const refuses = (text: string, code: string, pattern: RegExp) => {
  try {
    parseConfig(text, '/etc/kubevirt/qemu-kube.conf')
  } catch (e) {
    return e instanceof QkError && e.code === code && pattern.test(e.message)
  }
  return false
}

t.test('every problem names its key and line', async (t) => {
  t.ok(refuses('proc_root = "/proc"\nnamespaces = "mnt\n', 'ERR_CONFIG_SYNTAX', /qemu-kube\.conf:2: /))
  t.ok(refuses('\n\nbogus_key = 1\n', 'ERR_CONFIG_INVALID', /:3: unknown key\(s\) bogus_key/))
  t.ok(refuses('namespaces = [ "mnt", "user" ]\n', 'ERR_CONFIG_INVALID', /:1: namespaces\[1\]: the user namespace is never joined/))
  t.ok(refuses('token_algorithms = [ "HS256" ]\n', 'ERR_CONFIG_INVALID', /token_algorithms\[0\]: "none" and HMAC/))
  t.ok(refuses('token_algorithms = [ "none" ]\n', 'ERR_CONFIG_INVALID', /"none" and HMAC/))
  t.ok(refuses('token_max_lifetime = 0\n', 'ERR_CONFIG_INVALID', /token_max_lifetime/))
  t.ok(refuses('qemu_binary = "qemu"\n', 'ERR_CONFIG_INVALID', /qemu_binary: must be an absolute path/))
  t.ok(refuses('qemu_binary_from = "elsewhere"\n', 'ERR_CONFIG_INVALID', /qemu_binary_from/))
  t.ok(refuses('namespaces = [ "net", "net" ]\n', 'ERR_CONFIG_INVALID', /must not repeat/))
  t.ok(refuses('launcher_name = "bin/virt-launcher"\n', 'ERR_CONFIG_INVALID', /launcher_name/))
})

t.test('the file must be root-owned and not group/other-writable', async (t) => {
  const dir = tempDir(t)
  const path = `${dir}/qemu-kube.conf`
  writeFileSync(path, 'log_level = "debug"\n', { mode: 0o644 })
  const as = (uid: number, mode: number) => (_: string, m: { isFile: boolean }) => ({ uid, mode, isFile: m.isFile })
  t.equal(loadConfig(path, as(0, 0o100644)).log_level, 'debug')
  t.throws(() => loadConfig(path, as(1000, 0o100644)), { code: 'ERR_CONFIG_UNSAFE', message: /owned by root, is owned by uid 1000/ })
  t.throws(() => loadConfig(path, as(0, 0o100664)), { code: 'ERR_CONFIG_UNSAFE', message: /writable by group or others, mode is 0664/ })
  t.throws(() => loadConfig(path, as(0, 0o100646)), { code: 'ERR_CONFIG_UNSAFE' })
  t.throws(() => loadConfig(`${dir}/none.conf`), { code: 'ERR_CONFIG_MISSING' })
  t.throws(() => loadConfig(dir, as(0, 0o40755)), { code: 'ERR_CONFIG_UNSAFE' })
})
