// Synthetic /proc trees for the discovery bench: N numeric pid directories, each with `cmdline`
// and `stat` in the kernel's formats, plus the non-numeric entries a real /proc has.
// Deterministic: the same (n, seed) always gives the same tree, byte for byte.
//
// Where: tmpfs (/dev/shm) by default. /proc is an in-memory pseudo file system; tmpfs is the
// closest stand-in that we can fill with 100k directories (no block layer, no journal, no
// writeback). On this machine /tmp is ext4 on a disk, so it is not the default; pass
// dir: '/tmp' (or QK_BENCH_DIR=/tmp) to measure there instead.
//
// Mix, per process (the same fractions at every size, so per-process cost is comparable):
//   8%    kernel threads: empty cmdline, comm like `kworker/3:1-events`
//   3%    virt-launcher processes for other VMs (300 at 10k)
//   1%    long command lines, 4.5..12 KiB (java -cp, qemu with a long -object list)
//   ~20   hostile near-misses for the target VM (wrong basename, substring uuid, after `--`,
//         repeated flag, `bash -c "virt-launcher ..."`, setproctitle-style, ...)
//   1     the target: virt-launcher -kubevirt.vm.uuid U -kubevirt.vm.name N
//   rest  ordinary processes (bash -c, containerd-shim, pause, sshd, python, nginx, ...)
// A few comms hold spaces and ')', as a hostile process may name itself.
//
//   node bench/proc-tree.mjs N [--seed S] [--dir D]   prints the root and the query as JSON
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

export const LAUNCHER = 'virt-launcher'
export const DEFAULT_DIR = process.env.QK_BENCH_DIR || '/dev/shm'

/** mulberry32: small, fast, good enough for picking a process mix. */
function rng(seed) {
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const int = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)) // inclusive
  const pick = (xs) => xs[Math.floor(next() * xs.length)]
  const hex = (len) => {
    let s = ''
    while (s.length < len) s += Math.floor(next() * 16).toString(16)
    return s
  }
  const uuid = () => `${hex(8)}-${hex(4)}-4${hex(3)}-${pick(['8', '9', 'a', 'b'])}${hex(3)}-${hex(12)}`
  return { next, int, pick, hex, uuid }
}

const KTHREADS = ['kworker/%d:1-events', 'kworker/u%d:2', 'ksoftirqd/%d', 'migration/%d', 'rcu_preempt', 'kthreadd',
  'kworker/%d:0H-kblockd', 'cpuhp/%d', 'watchdog/%d', 'jbd2/vda1-8', 'kcompactd0', 'xfsaild/dm-%d']
// comm (TASK_COMM_LEN 16: at most 15 bytes) a process may choose for itself.
const HOSTILE_COMMS = ['a) R 1 2 3 (b', 'evil) Z 0', ') )) )', 'x (y) z', 'sp ace s']

function ordinary(r) {
  switch (r.int(0, 11)) {
    case 0: case 1: case 2:
      return ['/usr/bin/bash', '-c', `while sleep ${r.int(1, 60)}; do /usr/local/bin/healthcheck --port ${r.int(1024, 65535)}; done`]
    case 3:
      return ['/usr/bin/containerd-shim-runc-v2', '-namespace', 'k8s.io', '-id', r.hex(64), '-address', '/run/containerd/containerd.sock']
    case 4:
      return ['/pause']
    case 5:
      return ['/usr/bin/python3', '-u', `/opt/app/worker_${r.int(0, 99)}.py`, '--queue', `q${r.int(0, 9)}`, '--concurrency', `${r.int(1, 16)}`]
    case 6:
      return ['sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups'] // setproctitle: one argument
    case 7:
      return [`nginx: worker process${' '.repeat(r.int(0, 40))}`] // rewritten argv, often unterminated
    case 8:
      return ['/usr/bin/virt-handler', '--port', '8443', '--hostname-override', `node-${r.int(1, 500)}`, '--pod-ip-address', `10.${r.int(0, 255)}.${r.int(0, 255)}.${r.int(1, 254)}`]
    case 9:
      return ['/usr/lib/systemd/systemd-journald']
    case 10:
      return ['/usr/sbin/libvirtd', '--listen', '--timeout', '0']
    default:
      return ['/usr/bin/coreutils', '--coreutils-prog-shebang=sleep', '/usr/bin/sleep', `${r.int(1, 100000)}`]
  }
}

function long(r) {
  if (r.next() < 0.5) {
    const jars = []
    const target = r.int(4600, 12000)
    let len = 0
    while (len < target) {
      const j = `/opt/app/lib/${r.hex(12)}-${r.int(1, 9)}.${r.int(0, 30)}.${r.int(0, 9)}.jar`
      jars.push(j)
      len += j.length + 1
    }
    return ['/usr/lib/jvm/java-17-openjdk-amd64/bin/java', '-Xmx2g', '-cp', jars.join(':'), 'com.example.Main']
  }
  const argv = ['/usr/libexec/qemu-kvm', '-name', `guest=default_vm-${r.hex(6)},debug-threads=on`]
  while (argv.join('\0').length < 4700) {
    argv.push('-object', `{"qom-type":"memory-backend-file","id":"ram-node${argv.length}","mem-path":"/dev/hugepages/libvirt/qemu/${r.hex(16)}","prealloc":true,"size":${r.int(1, 64)}073741824}`)
  }
  return argv
}

const launcherArgv = (uuid, name, a0 = '/usr/bin/virt-launcher') => [a0, '-kubevirt.vm.uuid', uuid, '-kubevirt.vm.name', name]

/** Processes that look like the target to anything but an exact, whole-argument parser. */
function nearMisses(U, N, r) {
  return [
    launcherArgv(U, `${N}x`),
    launcherArgv(`${U}0`, N),
    launcherArgv(U.slice(1), N),
    launcherArgv(U, N, '/usr/bin/virt-launcher-monitor'),
    launcherArgv(U, N, '/opt/virt-launcher/bin/run'),
    launcherArgv(U, N, 'xvirt-launcher'),
    launcherArgv(U, N, '/usr/bin/virt-launche'),
    ['/usr/bin/virt-launcher', '--', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N],
    ['/usr/bin/virt-launcher', `-kubevirt.vm.uuid=${U} -kubevirt.vm.name=${N}`],
    ['/usr/bin/virt-launcher', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N, '-kubevirt.vm.uuid', r.uuid()],
    ['/usr/bin/virt-launcher', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N, '--kubevirt.vm.name', N],
    ['/usr/bin/virt-launcher', '---kubevirt.vm.uuid', U, '-kubevirt.vm.name', N],
    ['/usr/bin/virt-launcher', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name'],
    ['/usr/bin/bash', '-c', `virt-launcher -kubevirt.vm.uuid ${U} -kubevirt.vm.name ${N}`],
    [`virt-launcher -kubevirt.vm.uuid ${U} -kubevirt.vm.name ${N}`], // setproctitle-style, one arg
    ['/usr/bin/grep', '-r', `kubevirt.vm.uuid ${U}`, '/var/log'],
    ['/usr/bin/virt-launcher', '-kubevirt.vm.uuid', r.uuid(), '-kubevirt.vm.name', N],
    ['/usr/bin/virt-launcher', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', 'x'.repeat(5000)],
  ]
}

function statLine(pid, comm, state, ppid, startTime, r) {
  const vsize = r.int(0, 1 << 30)
  const f = [state, ppid, pid, pid, 0, -1, 4194560, r.int(0, 9999), 0, r.int(0, 99), 0, r.int(0, 9999), r.int(0, 999), 0, 0, 20, 0,
    r.int(1, 64), 0, startTime, vsize, r.int(0, 60000), '18446744073709551615', 1, 1, 0, 0, 0, 0, 0, 4096, 16386, 1, 0, 0, 17,
    r.int(0, 1), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
  return `${pid} (${comm}) ${f.join(' ')}\n` // 52 fields, field 22 = start time
}

const comm = (argv0) => argv0.slice(argv0.lastIndexOf('/') + 1).slice(0, 15)

/**
 * Writes the tree and returns { root, query, targetPid, counts, cleanup }.
 * query is the findTarget() argument; exactly one process matches it.
 */
export function makeProcTree(n, { seed = 1, dir = DEFAULT_DIR } = {}) {
  const r = rng(seed * 2654435761 + n)
  const uuid = r.uuid()
  const name = `vm-${r.hex(6)}`
  const procs = []
  let pid = 1
  for (let i = 0; i < n; i++) {
    procs.push({ pid, kind: 'ordinary' })
    pid += r.int(1, 4)
  }
  // Roles by fraction, assigned to shuffled slots (kernel threads mostly low pids, as on a node).
  const kthreads = Math.round(n * 0.08)
  const launchers = Math.round(n * 0.03)
  const longs = Math.round(n * 0.01)
  const slots = procs.map((_, i) => i).slice(kthreads)
  for (let i = slots.length - 1; i > 0; i--) {
    const j = r.int(0, i)
    ;[slots[i], slots[j]] = [slots[j], slots[i]]
  }
  for (let i = 0; i < kthreads; i++) procs[i].kind = 'kthread'
  let s = 0
  procs[slots[s++]].kind = 'target'
  const misses = nearMisses(uuid, name, r)
  for (const argv of misses) Object.assign(procs[slots[s++]], { kind: 'miss', argv })
  for (let i = 0; i < launchers; i++) procs[slots[s++]].kind = 'launcher'
  for (let i = 0; i < longs; i++) procs[slots[s++]].kind = 'long'
  for (let i = 0; i < HOSTILE_COMMS.length * 4 && s < slots.length; i++) procs[slots[s++]].comm = HOSTILE_COMMS[i % HOSTILE_COMMS.length]

  const root = mkdtempSync(`${dir}/qk-proc-${n}-`)
  let targetPid = 0
  let bootTicks = 1200
  for (const p of procs) {
    let argv
    let c
    let terminated = true
    switch (p.kind) {
      case 'kthread':
        argv = []
        c = r.pick(KTHREADS).replace('%d', String(r.int(0, 63)))
        break
      case 'target':
        argv = launcherArgv(uuid, name)
        targetPid = p.pid
        break
      case 'miss':
        argv = p.argv
        break
      case 'launcher':
        argv = r.next() < 0.5
          ? launcherArgv(r.uuid(), `vm-${r.hex(6)}`)
          : ['/usr/bin/virt-launcher', `--kubevirt.vm.uuid=${r.uuid()}`, `--kubevirt.vm.name=vm-${r.hex(6)}`, '--qemu-timeout', '245s', '--keep-after-failure']
        break
      case 'long':
        argv = long(r)
        break
      default:
        argv = ordinary(r)
        terminated = !argv[0].startsWith('nginx:')
    }
    c = p.comm ?? c ?? comm(argv[0])
    bootTicks += r.int(0, 50)
    const d = `${root}/${p.pid}`
    mkdirSync(d)
    writeFileSync(`${d}/cmdline`, argv.length === 0 ? '' : argv.join('\0') + (terminated ? '\0' : ''), 'latin1')
    writeFileSync(`${d}/stat`, statLine(p.pid, c, 'S', p.kind === 'kthread' ? 2 : 1, bootTicks, r), 'latin1')
  }
  // The non-numeric entries of a real /proc (none may be taken for a process).
  for (const e of ['sys', 'net', 'bus', 'fs', 'irq', 'driver', 'tty', 'sysvipc', 'acpi']) mkdirSync(`${root}/${e}`)
  for (const e of ['meminfo', 'cpuinfo', 'stat', 'uptime', 'loadavg', 'version', 'mounts', 'cmdline', 'filesystems']) writeFileSync(`${root}/${e}`, 'x\n')
  symlinkSync(String(procs[0].pid), `${root}/self`)
  symlinkSync(`${procs[0].pid}/task/${procs[0].pid}`, `${root}/thread-self`)

  return {
    root,
    targetPid,
    query: { procRoot: root, launcherName: LAUNCHER, uuid, name },
    counts: { processes: n, kthreads, launchers: launchers + 1, nearMisses: misses.length, long: longs },
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { seed: { type: 'string' }, dir: { type: 'string' } } })
  const n = Number(positionals[0] ?? 1000)
  const t = makeProcTree(n, { seed: Number(values.seed ?? 1), dir: values.dir ?? DEFAULT_DIR })
  console.log(JSON.stringify({ root: t.root, targetPid: t.targetPid, query: t.query, counts: t.counts }))
}
