import t, { type Test } from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { loadConfig, parseConfig, schema } from '../../src/emulator/config.ts'
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

// Issue 8 item 10: these checked only the key name, so zod's bare "Invalid input" passed. Each
// now states the whole message: the key, its line and the rule.
const F = '/etc/kubevirt/qemu-kube.conf'
const refuses = (t: Test, text: string, code: string, message: string) =>
  t.throws(() => parseConfig(text, F), { code, message }, JSON.stringify(text))

t.test('every problem names its key, its line and the rule', async (t) => {
  refuses(t, 'proc_root = "/proc"\nnamespaces = "mnt\n', 'ERR_CONFIG_SYNTAX', `${F}:2: not valid key = value syntax`)
  refuses(t, '\n\nbogus_key = 1\n', 'ERR_CONFIG_INVALID', `${F}:3: unknown key(s) bogus_key`)
  refuses(t, 'namespaces = [ "mnt", "user" ]\n', 'ERR_CONFIG_INVALID',
    `${F}:1: namespaces[1]: the user namespace is never joined (it would hand QEMU root in the pod); ${F}:1: namespaces[1]: must be one of mnt, net, ipc, uts, cgroup, pid`)
  const algs = 'must be one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA'
  refuses(t, 'token_algorithms = [ "HS256" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: token_algorithms[0]: "none" and HMAC algorithms are never accepted; ${F}:1: token_algorithms[0]: ${algs}`)
  refuses(t, 'token_algorithms = [ "none" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: token_algorithms[0]: "none" and HMAC algorithms are never accepted; ${F}:1: token_algorithms[0]: ${algs}`)
  refuses(t, 'token_max_lifetime = 0\n', 'ERR_CONFIG_INVALID', `${F}:1: token_max_lifetime: must be at least 1`)
  refuses(t, 'token_max_lifetime = 3601\n', 'ERR_CONFIG_INVALID', `${F}:1: token_max_lifetime: must be at most 3600`)
  refuses(t, 'token_clock_tolerance = 1.5\n', 'ERR_CONFIG_INVALID', `${F}:1: token_clock_tolerance: must be a whole number of seconds`)
  refuses(t, 'qemu_binary = "qemu"\n', 'ERR_CONFIG_INVALID', `${F}:1: qemu_binary: must be an absolute path`)
  refuses(t, 'qemu_binary_from = "elsewhere"\n', 'ERR_CONFIG_INVALID', `${F}:1: qemu_binary_from: must be one of pod, host`)
  refuses(t, 'log_level = "loud"\n', 'ERR_CONFIG_INVALID', `${F}:1: log_level: must be one of debug, info, warn, error`)
  refuses(t, 'namespaces = [ "net", "net" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: namespaces: namespaces must not repeat`)
  refuses(t, 'launcher_name = "bin/virt-launcher"\n', 'ERR_CONFIG_INVALID', `${F}:1: launcher_name: must be a file name without "/"`)
  refuses(t, 'pod_secret_fs_types = [ "nfs" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: pod_secret_fs_types[0]: must be one of tmpfs, ramfs, ext4, xfs, btrfs, overlay`)
  refuses(t, 'pod_secret_fs_types = [ ]\n', 'ERR_CONFIG_INVALID', `${F}:1: pod_secret_fs_types: must name at least one filesystem type`)
})

t.test('the file must be root-owned and not group/other-writable', async (t) => {
  const dir = tempDir(t)
  const path = `${dir}/qemu-kube.conf`
  writeFileSync(path, 'log_level = "debug"\n', { mode: 0o644 })
  // Only the file itself is faked; the directories above it are checked as they are.
  const as = (uid: number, mode: number, file = path) => (p: string, m: { uid: number; mode: number; isFile: boolean }) => (p === file ? { uid, mode, isFile: m.isFile } : m)
  t.equal(loadConfig(path, as(0, 0o100644)).log_level, 'debug')
  t.throws(() => loadConfig(path, as(1000, 0o100644)), { code: 'ERR_CONFIG_UNSAFE', message: `${path} must be owned by root, is owned by uid 1000` })
  t.throws(() => loadConfig(path, as(0, 0o100664)), { code: 'ERR_CONFIG_UNSAFE', message: `${path} must not be writable by group or others, mode is 0664` })
  t.throws(() => loadConfig(path, as(0, 0o100646)), { code: 'ERR_CONFIG_UNSAFE' })
  t.throws(() => loadConfig(`${dir}/none.conf`), { code: 'ERR_CONFIG_MISSING' })
  t.throws(() => loadConfig(dir, as(0, 0o40755, dir)), { code: 'ERR_CONFIG_UNSAFE', message: `${dir} must be a regular file` })
})
