// collectStatus on the real kernel: processes in real cgroups (v1 and the v2 unified tree),
// leases for them in a temp state dir, each value cross-checked against the cgroup files read
// here by the same rule: CPU within the two reads around the call, the working set equal to the
// value both reads agree on.
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from 'node:fs'
import { collectStatus, type StatusConfig, type StatusEntry } from '../../src/emulator/status/collect.ts'
import { formatStatus } from '../../src/emulator/status/format.ts'
import { startTimeOf } from '../../src/emulator/status/proc-facts.ts'
import { CGROUP_PARENT, hierarchies, requireRoot, type Hierarchy } from '../helpers/pod.ts'
import { tempDir } from '../helpers/tokens.ts'

if (!requireRoot(t, 'real cgroups and processes of other uids')) process.exit(0)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const hs = hierarchies()
const v2 = hs.find((h) => h.version === 2)
const v1With = (c: string) => hs.find((h) => h.version === 1 && h.key.split(',').includes(c))
// Only the hierarchies status reads; the others (cpuset needs set-up) stay the test's.
const used = [v1With('cpuacct'), v1With('memory'), v2].filter((h): h is Hierarchy => h !== undefined)

/** A leaf cgroup in each used hierarchy, removed at teardown once its processes are gone. */
function cgroups(t: Test, name: string): Map<Hierarchy, string> {
  const dirs = new Map<Hierarchy, string>()
  for (const h of used) {
    const leaf = `${h.mountPoint}/${CGROUP_PARENT}/${name}`
    // Another test's clean-up may remove the shared parent between the two mkdirs.
    for (let i = 0; ; i++) {
      mkdirSync(`${h.mountPoint}/${CGROUP_PARENT}`, { recursive: true })
      try {
        if (!existsSync(leaf)) mkdirSync(leaf)
        break
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || i > 5) throw err
      }
    }
    dirs.set(h, leaf)
  }
  t.teardown(async () => {
    for (const dir of dirs.values()) {
      for (let i = 0; i < 200; i++) {
        try {
          rmdirSync(dir)
          break
        } catch {
          await sleep(10)
        }
      }
    }
  })
  return dirs
}

/**
 * A process running as `uid`, moved into `dirs` before it does its work: it waits for a line on
 * stdin, then spends a bounded bit of CPU and execs sleep, so both CPU and memory are charged to
 * the new cgroups (v1 does not move charges made before the move).
 */
async function proc(t: Test, uid: number, dirs: Map<Hierarchy, string>): Promise<{ pid: number; startTime: string; child: ChildProcess }> {
  const child = spawn('sh', ['-c', 'read _; i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done; exec sleep 600'],
    { uid, gid: uid, stdio: ['pipe', 'ignore', 'ignore'] })
  const exited = new Promise((r) => child.once('exit', r))
  t.teardown(async () => {
    child.kill('SIGKILL')
    await exited
  })
  const pid = child.pid!
  for (const dir of dirs.values()) writeFileSync(`${dir}/cgroup.procs`, `${pid}\n`)
  child.stdin!.end('go\n')
  for (let i = 0; readFileSync(`/proc/${pid}/comm`, 'utf8') !== 'sleep\n'; i++) {
    if (i > 500) throw new Error(`pid ${pid} never reached sleep`)
    await sleep(10)
  }
  return { pid, startTime: startTimeOf('/proc', pid)!, child }
}

/** The rule of cgroup-usage.ts, applied here to our own reads. */
function snapshot(dirs: Map<Hierarchy, string>, root: 'all' | 'v2') {
  const num = (p: string) => BigInt(readFileSync(p, 'utf8').trim())
  const field = (p: string, k: string) => BigInt(new RegExp(`^${k} (\\d+)$`, 'm').exec(readFileSync(p, 'utf8'))![1]!)
  const cpuV1 = root === 'all' ? v1With('cpuacct') : undefined
  const memV1 = root === 'all' ? v1With('memory') : undefined
  const cpu = cpuV1 ? num(`${dirs.get(cpuV1)}/cpuacct.usage`) : field(`${dirs.get(v2!)}/cpu.stat`, 'usage_usec') * 1000n
  let mem: bigint | null = null
  if (memV1) mem = num(`${dirs.get(memV1)}/memory.usage_in_bytes`) - field(`${dirs.get(memV1)}/memory.stat`, 'total_inactive_file')
  else if (existsSync(`${dirs.get(v2!)}/memory.current`)) mem = num(`${dirs.get(v2!)}/memory.current`) - field(`${dirs.get(v2!)}/memory.stat`, 'inactive_file')
  return { cpu, mem: mem === null ? null : mem < 0n ? 0n : mem }
}

/** collectStatus between two snapshots, retried until both agree on the working set. */
function measured(cfg: StatusConfig, dirs: Map<Hierarchy, string>, root: 'all' | 'v2', vm: string) {
  for (let i = 0; ; i++) {
    const before = snapshot(dirs, root)
    const t0 = BigInt(Date.now()) * 1_000_000n
    const e = collectStatus(cfg, vm).find((x) => x.vm === vm)
    const t1 = BigInt(Date.now()) * 1_000_000n
    const after = snapshot(dirs, root)
    if (before.mem === after.mem || i > 20) return { e, before, after, t0, t1 }
  }
}

const nsOf = (pid: number) => Object.fromEntries(['mnt', 'net', 'ipc', 'uts', 'cgroup', 'pid', 'user'].map((n) =>
  [n, /\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/${n}`))![1]]))

t.test('two VMs in their own real cgroups, a dead one, the filter', async (t) => {
  const tag = `status-${process.pid}`
  const cgA = cgroups(t, `${tag}-a`)
  const cgB = cgroups(t, `${tag}-b`)
  const qemuA = await proc(t, 20101, cgA)
  const launcherA = await proc(t, 20111, cgA)
  const qemuB = await proc(t, 20102, cgB)
  const dead = spawn('sleep', ['600'], { stdio: 'ignore' })
  const deadStart = await (async () => {
    for (let i = 0; i < 100 && readFileSync(`/proc/${dead.pid}/comm`, 'utf8') !== 'sleep\n'; i++) await sleep(10)
    return startTimeOf('/proc', dead.pid!)!
  })()
  dead.kill('SIGKILL')
  await new Promise((r) => dead.once('exit', r))

  const state = tempDir(t)
  mkdirSync(`${state}/uids`, { mode: 0o700 })
  const lease = (uid: number, rec: object) => writeFileSync(`${state}/uids/${uid}`, JSON.stringify(rec), { mode: 0o600 })
  const A = `a-${tag}`
  const B = `b-${tag}`
  lease(20101, { vm: A, name: 'vm-a', pid: qemuA.pid, startTime: qemuA.startTime, launcher: { pid: launcherA.pid, startTime: launcherA.startTime } })
  lease(20102, { vm: B, pid: qemuB.pid, startTime: qemuB.startTime }) // the old format
  lease(20103, { vm: 'dead', name: 'vm-dead', pid: dead.pid, startTime: deadStart })
  lease(20104, { vm: 'recycled', pid: process.pid, startTime: '1' }) // a live pid, another process

  const cfg: StatusConfig = { proc_root: '/proc', cgroup_root: '/sys/fs/cgroup', state_dir: state }
  const all = collectStatus(cfg)
  t.same(all.map((e) => e.vm), [A, B], 'the dead and the recycled lease are not listed')

  const check = (t: Test, e: StatusEntry | undefined, m: ReturnType<typeof measured>, pid: number, uid: number, dirs: Map<Hierarchy, string>, root: 'all' | 'v2') => {
    if (e === undefined) {
      t.fail('listed')
      return
    }
    t.equal(e.qemu.pid, pid)
    t.equal(e.qemu.uid, uid, 'the real uid from /proc')
    t.same(e.qemu.namespaces, nsOf(pid), 'the namespace inodes')
    t.ok(e.qemu.uptimeSeconds !== null && e.qemu.uptimeSeconds >= 0 && e.qemu.uptimeSeconds < 60, `uptime ${e.qemu.uptimeSeconds}`)
    t.equal(e.cgroup, `/${CGROUP_PARENT}/${[...dirs.values()].at(-1)!.split('/').at(-1)}`, 'the unified line of its cgroup file')
    const cpuH = root === 'all' ? v1With('cpuacct') ?? v2! : v2!
    t.equal(e.cpu?.source, cpuH.version === 1 ? 'v1' : 'v2')
    t.equal(e.cpu?.dir, dirs.get(cpuH))
    const cpu = e.cpu?.usageCoreNanoSeconds ?? -1n
    t.ok(m.before.cpu > 0n, `the process spent CPU in its cgroup (${m.before.cpu} ns)`)
    t.ok(m.before.cpu <= cpu && cpu <= m.after.cpu, `cpu ${m.before.cpu} <= ${cpu} <= ${m.after.cpu}`)
    t.ok(e.cpu !== null && m.t0 <= e.cpu.timestamp && e.cpu.timestamp <= m.t1, 'the CRI timestamp is the read\'s')
    if (m.before.mem === null) t.equal(e.memory, null, 'no memory controller in this tree')
    else {
      t.equal(m.before.mem, m.after.mem, 'two reads agreed')
      t.equal(e.memory?.workingSetBytes, m.before.mem, `working set ${m.before.mem}`)
      t.ok(m.before.mem > 0n, 'pages were charged after the move')
    }
  }

  t.test('VM A (new lease): by uuid', async (t) => {
    const m = measured(cfg, cgA, 'all', A)
    check(t, m.e, m, qemuA.pid, 20101, cgA, 'all')
    t.same(m.e?.launcher, { pid: launcherA.pid, alive: true })
    t.equal(m.e?.name, 'vm-a')
    t.same(m.e?.problems, [])
  })
  t.test('VM B (old lease): listed without name or launcher', async (t) => {
    const m = measured(cfg, cgB, 'all', B)
    check(t, m.e, m, qemuB.pid, 20102, cgB, 'all')
    t.equal(m.e?.name, null)
    t.equal(m.e?.launcher, null)
  })
  t.test('the filter: by name, by uuid, none', async (t) => {
    t.same(collectStatus(cfg, 'vm-a').map((e) => e.vm), [A])
    t.same(collectStatus(cfg, B).map((e) => e.vm), [B])
    t.same(collectStatus(cfg, 'vm-dead'), [], 'a dead VM is not found by name either')
    t.match(formatStatus(collectStatus(cfg), 'human'), new RegExp(`\\n${A} +vm-a +20101 +${qemuA.pid} +${launcherA.pid} `))
  })
  t.test('the v2 unified tree alone (cgroup_root at its mount): CPU from cpu.stat', { skip: v2 === undefined || v2.mountPoint === '/sys/fs/cgroup' ? 'no separate v2 mount (pure v2: the first subtests read v2)' : false }, async (t) => {
    const m = measured({ ...cfg, cgroup_root: v2!.mountPoint }, cgA, 'v2', A)
    check(t, m.e, m, qemuA.pid, 20101, cgA, 'v2')
    if (m.before.mem === null) {
      t.same(m.e?.problems, [`memory: no mount under ${v2!.mountPoint} for hierarchy "${v1With('memory')?.key}"; cannot read ${cgA.get(v2!)}/memory.current: ENOENT`],
        'both ways to the memory figures named')
    }
  })
  t.test('the launcher leaves: QEMU is still listed, with the problem named', async (t) => {
    launcherA.child.kill('SIGKILL')
    await new Promise((r) => launcherA.child.once('exit', r))
    const e = collectStatus(cfg, A)[0]
    t.same(e?.launcher, { pid: launcherA.pid, alive: false })
    t.same(e?.problems, [`the launcher (pid ${launcherA.pid}) has exited: QEMU outlives its pod`])
  })
})
