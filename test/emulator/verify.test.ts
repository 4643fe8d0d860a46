// The whole pipeline on a fake /proc with generated keys and a frozen clock: one authorised
// launch, and the trail each refusal leaves for the decision line.
import t, { type Test } from 'tap'
import { createHash } from 'node:crypto'
import { chmodSync, existsSync, readFileSync, readlinkSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs'
import { purgeExpired } from '../../src/emulator/replay.ts'
import { schema } from '../../src/emulator/config.ts'
import { sys } from '../../src/emulator/sys.ts'
import { authorise, type Trail } from '../../src/emulator/verify.ts'
import { fakeOps, fakeProc, launcher, statLine } from '../helpers/fakeproc.ts'
import { NOW, NOW_S, VM, VM_UID, rsaKey, sign, tempDir, writeKey } from '../helpers/tokens.ts'

const key = await rsaKey()
const CALLER = { uid: VM_UID, gid: VM_UID, groups: [VM_UID] }
const SECRET = '/var/run/kubevirt/qemu-kube/token'

async function setup(t: Test, opts: { podToken?: string; pods?: number; dead?: boolean } = {}) {
  const dir = tempDir(t)
  const token = await sign(key)
  // On a tmpfs, as a Secret volume is (pod_secret_fs_types).
  const podRoot = mkdtempSync('/dev/shm/qk-podroot-')
  t.teardown(() => rmSync(podRoot, { recursive: true, force: true }))
  mkdirSync(`${podRoot}/var/run/kubevirt/qemu-kube`, { recursive: true })
  writeFileSync(`${podRoot}${SECRET}`, `${opts.podToken ?? token}\n`)
  // The pod's image carries QEMU (pod-qemu.ts).
  mkdirSync(`${podRoot}/usr/bin`, { recursive: true })
  writeFileSync(`${podRoot}/usr/bin/qemu-system-x86_64`, '', { mode: 0o755 })
  const pods = Array.from({ length: opts.pods ?? 1 }, (_, i) => launcher(500 + i, VM.uuid, VM.name, { root: podRoot }))
  // This process is in the fake /proc too: its uid lease names it (it becomes QEMU).
  const procRoot = fakeProc(t, [{ pid: 1, argv: ['/sbin/init'] }, { pid: process.pid, argv: ['node'] }, ...pods])
  writeFileSync(`${dir}/passwd`, 'libvirt-qemu:x:64055:994::/:/bin/false\n')
  writeFileSync(`${dir}/group`, 'kvm:x:994:\n')
  const config = schema.parse({
    proc_root: procRoot,
    token_public_keys: [writeKey(dir, 'k.pem', key.pem)],
    state_dir: `${dir}/state`,
  })
  const ctx = {
    config,
    caller: CALLER,
    now: () => NOW,
    ops: { ...fakeOps(opts.dead ? { dead: new Set([500]) } : {}), openat2: sys().openat2 },
    consume: true,
    keyMeta: (_: string, m: { isFile: boolean; mode: number }) => ({ ...m, uid: 0 }),
  }
  const inv = { kind: 'launch' as const, vm: VM, token, argv: ['-name', 'guest=testvm'] }
  return { ctx, inv, dir }
}

t.test('an authorised launch names the pod, its namespaces and cgroups', async (t) => {
  const { ctx, inv, dir } = await setup(t)
  const trail: Trail = {}
  const a = await authorise(inv, ctx, trail)
  t.equal(a.target.pid, 500)
  t.same(a.runAs, CALLER)
  t.same(a.namespaces, ['mnt', 'net', 'ipc', 'uts', 'cgroup'])
  t.same(a.cgroups.map((c) => c.dir), ['/sys/fs/cgroup/memory/pods/a', '/sys/fs/cgroup/cpu,cpuacct/pods/a', '/sys/fs/cgroup/systemd/pods/a', '/sys/fs/cgroup/unified/pods/a'])
  t.same(a.qemu, { path: '/usr/bin/qemu-system-x86_64', from: 'pod', argv: inv.argv })
  t.same(trail, { vm: VM, kid: 'k', jti: 'jti-1', target: { pid: 500, startTime: '1500' } })
  t.same(readdirSync(`${dir}/state`).sort(), [createHash('sha256').update('jti-1').digest('hex'), 'uids'].sort(), 'the jti is recorded, and the uid leased')
  t.same(JSON.parse(readFileSync(`${dir}/state/uids/${VM_UID}`, 'utf8')),
    { vm: VM.uuid, name: VM.name, pid: process.pid, startTime: `${1000 + process.pid}`, launcher: { pid: 500, startTime: '1500' } },
    'the lease names this VM, this process (which becomes QEMU) and the pod\'s launcher')
  t.equal(readFileSync(`${dir}/state/${createHash('sha256').update('jti-1').digest('hex')}`, 'latin1'), `${process.pid} ${1000 + process.pid}\n`,
    'the replay record names its consumer')
  await t.rejects(authorise(inv, { ...ctx, consumer: OTHER }, {}), { code: 'ERR_TOKEN_REPLAYED' })
})

const OTHER = { pid: 4242, startTime: '31337' }

t.test('the agent names the front as consumer; the front falling back to standalone (same pid and start time) is accepted once more', async (t) => {
  const { ctx, inv, dir } = await setup(t)
  const front = { pid: process.pid, startTime: `${1000 + process.pid}` }
  const a = await authorise(inv, { ...ctx, consumer: front, lockWaitMs: 0 }, {})
  sys().close(a.target.pidfd)
  t.equal(readFileSync(`${dir}/state/${createHash('sha256').update('jti-1').digest('hex')}`, 'latin1'), `${front.pid} ${front.startTime}\n`)
  // The agent recorded it but its reply never arrived: the same process, now standalone.
  const again = await authorise(inv, ctx, {})
  t.equal(again.target.pid, 500, 'the standalone chain accepts the record naming itself')
  const trail: Trail = {}
  await t.rejects(authorise(inv, { ...ctx, consumer: OTHER }, trail), { code: 'ERR_TOKEN_REPLAYED', message: 'token jti "jti-1" was already used to start a QEMU' },
    'any other process is refused')
  t.equal(trail.target, undefined, 'refused before the /proc scan')
})

t.test('a refusal after the target is pinned closes its pidfd (the agent lives on)', async (t) => {
  const { ctx, inv } = await setup(t)
  const closed: number[] = []
  const opened: number[] = []
  const ops = {
    ...ctx.ops,
    pidfdOpen: (pid: number) => { const fd = ctx.ops.pidfdOpen(pid); opened.push(fd); return fd },
    close: (fd: number) => (closed.push(fd), ctx.ops.close(fd)),
  }
  // The lease is held by another live VM: refused at step 7, after the pin.
  mkdirSync(`${ctx.config.state_dir}/uids`, { recursive: true, mode: 0o700 })
  chmodSync(ctx.config.state_dir, 0o700)
  writeFileSync(`${ctx.config.state_dir}/uids/${VM_UID}`, JSON.stringify({ vm: 'other-vm', pid: 1, startTime: '1001' }))
  await t.rejects(authorise(inv, { ...ctx, ops, consumer: OTHER }, {}), { code: 'ERR_UID_IN_USE' })
  t.ok(opened.length > 0, 'the target was pinned')
  t.same(closed.sort(), opened.sort(), 'every pidfd opened was closed')
})

t.test('explain (consume: false) records nothing', async (t) => {
  const { ctx, inv, dir } = await setup(t)
  await authorise(inv, { ...ctx, consume: false }, {})
  await authorise(inv, { ...ctx, consume: false }, {})
  t.notOk(existsSync(`${dir}/state`), 'not even the state dir is made')
})

// Issue 8 item 9: explain predicted "authorised" for a launch the state dir would refuse.
t.test('explain refuses what the launch would refuse about the state dir: ERR_STATE_DIR_UNSAFE', async (t) => {
  const { ctx, inv, dir } = await setup(t)
  mkdirSync(`${dir}/state`, { mode: 0o755 })
  chmodSync(`${dir}/state`, 0o755)
  const me = process.geteuid?.()
  await t.rejects(authorise(inv, { ...ctx, consume: false }, {}), {
    code: 'ERR_STATE_DIR_UNSAFE', message: `${dir}/state must be a directory owned by uid ${me} with mode 0700, is uid ${me} mode 755`,
  })
})

t.test('refusals stop the pipeline where they happen and leave a trail', async (t) => {
  {
    const { ctx, inv } = await setup(t, { podToken: 'x.y.z' })
    const trail: Trail = {}
    await t.rejects(authorise(inv, ctx, trail), { code: 'ERR_SECRET_MISMATCH', details: { pid: 500 } })
    t.equal(trail.target, undefined, 'a claimant that does not hold the token is never the target')
  }
  {
    const { ctx, inv } = await setup(t, { pods: 2 })
    await t.rejects(authorise(inv, ctx, {}), { code: 'ERR_TARGET_AMBIGUOUS' })
  }
  {
    const { ctx, inv } = await setup(t, { dead: true })
    await t.rejects(authorise(inv, ctx, {}), { code: 'ERR_TARGET_CHANGED' })
  }
  {
    const { ctx, inv } = await setup(t)
    const trail: Trail = {}
    await t.rejects(authorise({ ...inv, token: await sign(key, { sub: 'x' }) }, ctx, trail), { code: 'ERR_TOKEN_VM_MISMATCH' })
    t.same(trail, { vm: VM }, 'a bad token never reaches /proc')
    await t.rejects(authorise(inv, { ...ctx, caller: { uid: 1, gid: 1, groups: [] } }, {}), { code: 'ERR_CALLER_NOT_ALLOWED' })
  }
})

// Issue 8 item 1: a launch stopped right after the token check, resumed once the token has
// expired and another start has purged its first use, must not start a second QEMU.
t.test('replay after expiry: a token that expires while the launch is checked is refused after recording', async (t) => {
  const { ctx, inv, dir } = await setup(t)
  // Launch A passes the token check at NOW and is frozen by its caller while it reads the pod.
  // Meanwhile launch B uses the same token (its record appears), time passes beyond exp +
  // tolerance, and some other start purges B's record. Then A resumes.
  const late = new Date((NOW_S + 50 + 5 + 1) * 1000)
  let clock = NOW
  let survived: string[] = []
  const ops = {
    ...ctx.ops,
    openat2: (d: number, p: string, f: number, r: number) => {
      mkdirSync(`${dir}/state`, { mode: 0o700, recursive: true })
      writeFileSync(`${dir}/state/${createHash('sha256').update('jti-1').digest('hex')}`, '')
      utimesSync(`${dir}/state/${createHash('sha256').update('jti-1').digest('hex')}`, NOW_S + 50, NOW_S + 50)
      clock = late
      purgeExpired(`${dir}/state`, late, 5)
      survived = readdirSync(`${dir}/state`)
      return ctx.ops.openat2(d, p, f, r)
    },
  }
  await t.rejects(authorise(inv, { ...ctx, ops, now: () => clock }, {}), {
    code: 'ERR_TOKEN_EXPIRED',
    message: '"exp" passed while the launch was checked: expected now <= exp + 5 s, got now = exp + 6 s',
  })
  t.same(survived, [], 'B\'s record was purged while A was frozen')
})

t.test('a used token never makes root scan /proc or open pod files', async (t) => {
  const { ctx, inv } = await setup(t)
  await authorise(inv, ctx, {})
  let opened = 0
  const ops = { ...ctx.ops, openat2: (d: number, p: string, f: number, r: number) => (opened++, ctx.ops.openat2(d, p, f, r)) }
  const trail: Trail = {}
  await t.rejects(authorise(inv, { ...ctx, ops, consumer: OTHER }, trail), { code: 'ERR_TOKEN_REPLAYED', message: 'token jti "jti-1" was already used to start a QEMU' })
  t.equal(trail.target, undefined, 'no /proc scan')
  t.equal(opened, 0, 'no pod file opened')
})

// Issue 8 item 3: the matched command line was not tied to the pinned process. Here the
// launcher's pid is recycled at the exact moment it is pinned: pidfd_open(500) returns a pidfd
// of the successor (another start time, a command line of its own, as a process the caller
// started would have). Pinning that successor would hand it the VM's launch; every read after
// pidfd_open sees the successor, so the claim no longer holds.
t.test('a pid recycled between reading the cmdline and pinning: ERR_TARGET_CHANGED', async (t) => {
  const { ctx, inv } = await setup(t)
  const proc = ctx.config.proc_root
  const pidfdOpen = ctx.ops.pidfdOpen
  const ops = {
    ...ctx.ops,
    pidfdOpen(pid: number) {
      if (pid === 500) {
        writeFileSync(`${proc}/500/stat`, statLine({ pid: 500, argv: [], startTime: '9999' }))
        writeFileSync(`${proc}/500/cmdline`, '/bin/sh\0')
      }
      return pidfdOpen(pid)
    },
  }
  await t.rejects(authorise(inv, { ...ctx, ops }, {}), { code: 'ERR_TARGET_CHANGED', message: `target pid 500 changed during the check: its command line no longer claims VM ${VM.uuid}` })
})

// Issue 8 item 4: any process (nobody, no token) named virt-launcher with the VM's flags made
// every start ERR_TARGET_AMBIGUOUS. Only claimants whose mount namespace holds the token count.
t.test('a claimant without the token cannot block the start; two that hold it are ambiguous', async (t) => {
  const { ctx, inv } = await setup(t)
  const proc = ctx.config.proc_root
  const strangerRoot = mkdtempSync('/dev/shm/qk-stranger-')
  t.teardown(() => rmSync(strangerRoot, { recursive: true, force: true }))
  const claimant = (pid: number) => {
    mkdirSync(`${proc}/${pid}`)
    writeFileSync(`${proc}/${pid}/cmdline`, `${['virt-launcher', '-kubevirt.vm.uuid', VM.uuid, '-kubevirt.vm.name', VM.name].join('\0')}\0`)
    writeFileSync(`${proc}/${pid}/stat`, statLine({ pid, argv: [] }))
    writeFileSync(`${proc}/${pid}/cgroup`, '0::/stranger\n')
    symlinkSync(strangerRoot, `${proc}/${pid}/root`)
  }
  claimant(777)
  mkdirSync(`${strangerRoot}/var/run/kubevirt/qemu-kube`, { recursive: true })
  claimant(778)
  writeFileSync(`${strangerRoot}/var/run/kubevirt/qemu-kube/token`, 'some.other.token')
  const trail: Trail = {}
  mkdirSync(ctx.config.state_dir, { mode: 0o700 })
  const a = await authorise(inv, { ...ctx, consume: false }, trail)
  t.equal(a.target.pid, 500, 'the pod that holds the token is the target')
})

// Issue 8 item 6: with qemu_binary_from = "host" the binary is opened on the host, but the
// kernel resolves its PT_INTERP after setns, in the pod's root: the pod's dynamic loader and
// libraries would run as QEMU. Only a static binary keeps "host" meaning host.
t.test('qemu_binary_from = "host" refuses a dynamically linked QEMU: ERR_CONFIG_INVALID', async (t) => {
  const { ctx, inv } = await setup(t)
  mkdirSync(ctx.config.state_dir, { mode: 0o700 })
  const host = (qemu_binary: string) => ({ ...ctx, consume: false, config: { ...ctx.config, qemu_binary, qemu_binary_from: 'host' as const } })
  await t.rejects(authorise(inv, host('/usr/bin/qemu-system-x86_64'), {}), {
    code: 'ERR_CONFIG_INVALID',
    message: 'qemu_binary /usr/bin/qemu-system-x86_64 is dynamically linked (PT_INTERP /lib64/ld-linux-x86-64.so.2): with qemu_binary_from = "host" the kernel would load that loader and its libraries from the pod\'s root; use a static QEMU or qemu_binary_from = "pod"',
  })
  const fixture = `${import.meta.dirname}/../../dist/native/fixtures/reporter`
  t.equal((await authorise(inv, host(fixture), {})).qemu.from, 'host', 'a static binary is fine')
})

t.test('a pod whose image lacks qemu_binary is refused before the token is burnt, and explain predicts it', async (t) => {
  for (const consume of [true, false]) {
    const { ctx, inv, dir } = await setup(t)
    const root = readlinkSync(`${ctx.config.proc_root}/500/root`)
    rmSync(`${root}/usr/bin/qemu-system-x86_64`)
    await t.rejects(authorise(inv, { ...ctx, consume }, {}), {
      code: 'ERR_QEMU_MISSING', message: 'qemu_binary /usr/bin/qemu-system-x86_64 is not in pid 500\'s root (errno 2)',
    })
    t.notOk(existsSync(`${dir}/state/${createHash('sha256').update('jti-1').digest('hex')}`), `consume ${consume}: no jti recorded`)
    writeFileSync(`${root}/usr/bin/qemu-system-x86_64`, '', { mode: 0o644 })
    await t.rejects(authorise(inv, { ...ctx, consume }, {}), {
      code: 'ERR_QEMU_MISSING', message: 'qemu_binary /usr/bin/qemu-system-x86_64 in pid 500\'s root is not an executable regular file',
    })
  }
})
