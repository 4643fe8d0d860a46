// The pod-secret read against directory trees standing in for a pod's root (no privileges
// needed: openat2 and RESOLVE_IN_ROOT work for anyone). test/root/ repeats the escapes against
// a real process in its own mount namespace and root.
import t, { type Test } from 'tap'
import { execFileSync, spawn } from 'node:child_process'
import { chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { MAX_SECRET, readPodSecret, secretMatches, type SecretRules } from '../../src/emulator/secret.ts'
import { sys } from '../../src/emulator/sys.ts'
import { fakeProc, launcher } from '../helpers/fakeproc.ts'
import { tempDir } from '../helpers/tokens.ts'

const PATH = '/var/run/kubevirt/qemu-kube/token'
const TOKEN = 'aaa.bbb.ccc'

// A Secret volume is a tmpfs: the pod roots live on /dev/shm.
function podRoot(t: Test): string {
  const root = mkdtempSync('/dev/shm/qk-podroot-')
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  return root
}

function pod(t: Test, layout: (dir: string, root: string) => void) {
  const root = podRoot(t)
  const dir = `${root}/var/run/kubevirt/qemu-kube`
  mkdirSync(dir, { recursive: true })
  layout(dir, root)
  return fakeProc(t, [launcher(500, 'u', 'n', { root })])
}

const ME = process.getuid?.() ?? 0
const read = (procRoot: string, rules: SecretRules = { fsTypes: ['tmpfs'], owner: ME }) => readPodSecret(procRoot, 500, PATH, sys(), rules)

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

// Issue 8 item 2: root opened whatever sat at the pod's secret path before looking at it. A FIFO
// with a writer blocked in open(2) proves it: an open for reading, even O_NONBLOCK, releases
// the writer. The check must look (O_PATH, fstat) and refuse without opening.
t.test('a FIFO at the secret path is refused without being opened', async (t) => {
  let fifo = ''
  const procRoot = pod(t, (d) => {
    fifo = `${d}/token`
    execFileSync('mkfifo', [fifo])
  })
  const marker = `${fifo}.writer-released`
  const writer = spawn('sh', ['-c', `exec 3>"${fifo}"; echo released > "${marker}"`], { stdio: 'ignore' })
  t.teardown(() => writer.kill('SIGKILL'))
  await new Promise((r) => setTimeout(r, 100))
  t.throws(() => read(procRoot), { code: 'ERR_SECRET_NOT_REGULAR', message: `expected a regular file at ${PATH} in pid 500's root, got a FIFO` })
  await new Promise((r) => setTimeout(r, 200))
  t.notOk(existsSync(marker), 'the FIFO was never opened for reading (its writer is still blocked)')
})

t.test('the token must be owned by root and sit on a filesystem in pod_secret_fs_types: ERR_SECRET_UNSAFE', async (t) => {
  const procRoot = pod(t, (d) => writeFileSync(`${d}/token`, TOKEN))
  t.throws(() => read(procRoot, { fsTypes: ['tmpfs'], owner: ME + 1 }), {
    code: 'ERR_SECRET_UNSAFE', message: `expected ${PATH} in pid 500's root to be owned by uid ${ME + 1}, got uid ${ME}`,
  })
  t.throws(() => read(procRoot, { fsTypes: ['ext4', 'xfs'], owner: ME }), {
    code: 'ERR_SECRET_UNSAFE', message: `expected ${PATH} in pid 500's root on ext4 or xfs (pod_secret_fs_types), got filesystem type 0x1021994`,
  })
  t.equal(read(procRoot).toString(), TOKEN)
  if (ME === 0) {
    chownSync(`${procRoot}/500/root${PATH}`, 65534, 65534)
    t.throws(() => read(procRoot, { fsTypes: ['tmpfs'] }), {
      code: 'ERR_SECRET_UNSAFE', message: `expected ${PATH} in pid 500's root to be owned by uid 0, got uid 65534`,
    }, 'a file the pod\'s own user wrote is not the Secret')
  }
})

t.test('a pod file on a disk filesystem is refused by default', async (t) => {
  const root = tempDir(t, 'qk-podroot-disk-')
  mkdirSync(`${root}/var/run/kubevirt/qemu-kube`, { recursive: true })
  writeFileSync(`${root}${PATH}`, TOKEN)
  t.throws(() => read(fakeProc(t, [launcher(500, 'u', 'n', { root })])), { code: 'ERR_SECRET_UNSAFE', message: /on tmpfs \(pod_secret_fs_types\), got filesystem type 0x/ })
})
