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

t.test('every problem names its key, its line and the rule, and what the file holds', async (t) => {
  refuses(t, 'proc_root = "/proc"\nnamespaces = "mnt\n', 'ERR_CONFIG_SYNTAX', `${F}:2:18: control characters are not allowed in strings`)
  refuses(t, 'a = 1\na = 2\n', 'ERR_CONFIG_SYNTAX', `${F}:2:1: trying to redefine an already defined table or value`)
  refuses(t, '\n\nbogus_key = 1\n', 'ERR_CONFIG_INVALID', `${F}:3: unknown key bogus_key`)
  refuses(t, 'namespaces = [ "mnt", "user" ]\n', 'ERR_CONFIG_INVALID',
    `${F}:1: namespaces[1]: the user namespace is never joined (it would hand QEMU root in the pod), got "user"`)
  refuses(t, 'namespaces = [ "time" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: namespaces[0]: must be one of mnt, net, ipc, uts, cgroup, pid, got "time"`)
  const algs = 'must be one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA'
  refuses(t, 'token_algorithms = [ "HS256" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: token_algorithms[0]: "none" and HMAC algorithms are never accepted, got "HS256"`)
  refuses(t, 'token_algorithms = [ "RS1" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: token_algorithms[0]: ${algs}, got "RS1"`)
  refuses(t, 'token_algorithms = [ "none" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: token_algorithms[0]: "none" and HMAC algorithms are never accepted, got "none"`)
  refuses(t, 'token_max_lifetime = 0\n', 'ERR_CONFIG_INVALID', `${F}:1: token_max_lifetime: must be at least 1, got 0`)
  refuses(t, 'token_max_lifetime = 3601\n', 'ERR_CONFIG_INVALID', `${F}:1: token_max_lifetime: must be at most 3600, got 3601`)
  refuses(t, 'token_clock_tolerance = 1.5\n', 'ERR_CONFIG_INVALID', `${F}:1: token_clock_tolerance: must be a whole number of seconds, got 1.5`)
  refuses(t, 'qemu_binary = "qemu"\n', 'ERR_CONFIG_INVALID', `${F}:1: qemu_binary: must be an absolute path, got "qemu"`)
  refuses(t, 'qemu_binary_from = "elsewhere"\n', 'ERR_CONFIG_INVALID', `${F}:1: qemu_binary_from: must be one of pod, host, got "elsewhere"`)
  refuses(t, 'log_level = "loud"\n', 'ERR_CONFIG_INVALID', `${F}:1: log_level: must be one of debug, info, warn, error, got "loud"`)
  refuses(t, 'namespaces = [ "net", "net" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: namespaces: namespaces must not repeat, got ["net","net"]`)
  refuses(t, 'launcher_name = "bin/virt-launcher"\n', 'ERR_CONFIG_INVALID', `${F}:1: launcher_name: must be a file name without "/", got "bin/virt-launcher"`)
  refuses(t, 'pod_secret_fs_types = [ "nfs" ]\n', 'ERR_CONFIG_INVALID', `${F}:1: pod_secret_fs_types[0]: must be one of tmpfs, ramfs, ext4, xfs, btrfs, overlay, got "nfs"`)
  refuses(t, 'pod_secret_fs_types = [ ]\n', 'ERR_CONFIG_INVALID', `${F}:1: pod_secret_fs_types: must name at least one filesystem type, got []`)
  refuses(t, 'vm_uid_range = [ 0, 5 ]\n', 'ERR_CONFIG_INVALID', `${F}:1: vm_uid_range[0]: must not be 0 (root), got 0`)
})

t.test('a wrong type says expected against received, in zod\'s words', async (t) => {
  refuses(t, 'token_max_lifetime = "60"\n', 'ERR_CONFIG_INVALID', `${F}:1: token_max_lifetime: expected number, received string`)
  refuses(t, 'namespaces = "mnt"\n', 'ERR_CONFIG_INVALID', `${F}:1: namespaces: expected array, received string`)
  refuses(t, 'proc_root = 1\n', 'ERR_CONFIG_INVALID', `${F}:1: proc_root: expected string, received number`)
})

t.test('unknown keys: one problem each, with its line and a "did you mean"', async (t) => {
  refuses(t, 'log_level = "info"\nprocroot = "/x"\ntoken_max_lifetme = 5\n', 'ERR_CONFIG_INVALID',
    `${F}:2: unknown key procroot (did you mean proc_root?); ${F}:3: unknown key token_max_lifetme (did you mean token_max_lifetime?)`)
  // A key is the file's text, not a pattern: this one used to throw a SyntaxError (ERR_INTERNAL).
  refuses(t, '\n"a(b" = 1\n', 'ERR_CONFIG_INVALID', `${F}:2: unknown key a(b`)
  refuses(t, '\n[logging]\nlevel = 1\n', 'ERR_CONFIG_INVALID', `${F}:2: unknown key logging`)
})

t.test('removed keys are named with their line and what replaced them, with the other problems', async (t) => {
  refuses(t, 'log_level = "info"\nallowed_users = [ "qemu" ]\ntoken_max_lifetime = 0\n', 'ERR_CONFIG_INVALID',
    `${F}:2: allowed_users is no longer read: launches come from the per-VM uids in vm_uid_range (one host identity per VM); ${F}:3: token_max_lifetime: must be at least 1, got 0`)
  refuses(t, '\n\n"qemu_user" = "qemu"\n', 'ERR_CONFIG_INVALID',
    `${F}:3: qemu_user is no longer read: QEMU runs as its VM's own uid (the domain's DAC <seclabel>, bound by the token's qemu_uid claim)`)
})

t.test('proc_root that does not exist is refused when the config is loaded', async (t) => {
  const dir = tempDir(t)
  const path = `${dir}/qemu-kube.conf`
  writeFileSync(path, `log_level = "debug"\nproc_root = "${dir}/none"\n`, { mode: 0o644 })
  const root = (_p: string, m: { uid: number; mode: number; isFile: boolean }) => ({ ...m, uid: 0 })
  t.throws(() => loadConfig(path, root), { code: 'ERR_CONFIG_INVALID', message: `${path}:2: proc_root: expected the node's procfs directory, got "${dir}/none", which does not exist` })
  writeFileSync(path, `proc_root = "${dir}"\n`)
  t.equal(loadConfig(path, root).proc_root, dir)
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
