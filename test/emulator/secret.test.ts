// The pod-secret read against directory trees standing in for a pod's root (no privileges
// needed: openat2 and RESOLVE_IN_ROOT work for anyone). test/root/ repeats the escapes against
// a real process in its own mount namespace and root.
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { MAX_SECRET, readPodSecret, secretMatches } from '../../src/emulator/secret.ts'
import { sys } from '../../src/emulator/sys.ts'
import { fakeProc, launcher } from '../helpers/fakeproc.ts'
import { tempDir } from '../helpers/tokens.ts'

const PATH = '/var/run/kubevirt/qemu-kube/token'
const TOKEN = 'aaa.bbb.ccc'

function pod(t: Test, layout: (dir: string, root: string) => void) {
  const root = tempDir(t, 'qk-podroot-')
  const dir = `${root}/var/run/kubevirt/qemu-kube`
  mkdirSync(dir, { recursive: true })
  layout(dir, root)
  return fakeProc(t, [launcher(500, 'u', 'n', { root })])
}

const read = (procRoot: string) => readPodSecret(procRoot, 500, PATH, sys())

t.test('a plain file and the Kubernetes symlink chain are read', async (t) => {
  t.equal(read(pod(t, (d) => writeFileSync(`${d}/token`, `${TOKEN}\n`))).toString(), `${TOKEN}\n`)
  const k8s = pod(t, (d) => {
    mkdirSync(`${d}/..2026_11_22_14_00_00.123456789`)
    writeFileSync(`${d}/..2026_11_22_14_00_00.123456789/token`, TOKEN)
    symlinkSync('..2026_11_22_14_00_00.123456789', `${d}/..data`)
    symlinkSync('..data/token', `${d}/token`)
  })
  t.equal(read(k8s).toString(), TOKEN)
})

t.test('an absolute symlink resolves inside the pod root, never on the host', async (t) => {
  const host = tempDir(t, 'qk-host-')
  writeFileSync(`${host}/secret`, TOKEN)
  t.throws(() => read(pod(t, (d) => symlinkSync(`${host}/secret`, `${d}/token`))), { code: 'ERR_SECRET_MISSING' })
  t.throws(() => read(pod(t, (d) => symlinkSync('../../../../../../../../etc/hostname', `${d}/token`))), { code: 'ERR_SECRET_MISSING' })
  // The same absolute link finds the pod's own file at that path.
  const inPod = pod(t, (d, root) => {
    mkdirSync(`${root}/etc`)
    writeFileSync(`${root}/etc/tok`, TOKEN)
    symlinkSync('/etc/tok', `${d}/token`)
  })
  t.equal(read(inPod).toString(), TOKEN)
})

const asRoot = process.getuid?.() === 0 ? {} : { skip: 'needs root to bind-mount /proc into the fake pod root' }
t.test('magic links are refused: ERR_SECRET_ESCAPE', asRoot, async (t) => {
  t.throws(() => read(pod(t, (d, root) => {
    mkdirSync(`${root}/proc`)
    symlinkSync('/proc/self/root/etc/hostname', `${d}/token`)
    execFileSync('mount', ['--bind', '/proc', `${root}/proc`])
    t.teardown(() => execFileSync('umount', [`${root}/proc`]))
  })), { code: 'ERR_SECRET_ESCAPE' })
})

t.test('missing, FIFO, device, directory, too big', async (t) => {
  t.throws(() => read(pod(t, () => {})), { code: 'ERR_SECRET_MISSING' })
  t.throws(() => read(pod(t, (d) => execFileSync('mkfifo', [`${d}/token`]))), { code: 'ERR_SECRET_NOT_REGULAR', message: /got a FIFO/ })
  t.throws(() => read(pod(t, (d) => mkdirSync(`${d}/token`))), { code: 'ERR_SECRET_NOT_REGULAR', message: /got a directory/ })
  t.throws(() => read(pod(t, (d) => writeFileSync(`${d}/token`, 'x'.repeat(MAX_SECRET + 1)))), { code: 'ERR_SECRET_TOO_BIG' })
  t.equal(read(pod(t, (d) => writeFileSync(`${d}/token`, 'x'.repeat(MAX_SECRET)))).length, MAX_SECRET)
  if (process.getuid?.() === 0) {
    t.throws(() => read(pod(t, (d) => execFileSync('mknod', [`${d}/token`, 'c', '1', '5']))), { code: 'ERR_SECRET_NOT_REGULAR', message: /character device/ })
  }
})

t.test('comparison: exact bytes, one trailing newline allowed', async (t) => {
  t.ok(secretMatches(Buffer.from(TOKEN), TOKEN))
  t.ok(secretMatches(Buffer.from(`${TOKEN}\n`), TOKEN))
  t.notOk(secretMatches(Buffer.from(`${TOKEN}\n\n`), TOKEN))
  t.notOk(secretMatches(Buffer.from(` ${TOKEN}`), TOKEN))
  t.notOk(secretMatches(Buffer.from(TOKEN.slice(0, -1)), TOKEN))
  t.notOk(secretMatches(Buffer.from(`${TOKEN.slice(0, -1)}d`), TOKEN))
  t.notOk(secretMatches(Buffer.alloc(0), TOKEN))
})
