// Bench section "startup": what a VM start pays for qemu-kube, as a ratio against bare Node.
//
//   node bench/startup.mjs            (or `node scripts/bench.mjs startup`; root for all rows)
//   QK_BENCH_STARTUP_RUNS=60 QK_BENCH_KEEP=1 node bench/startup.mjs
//   QK_BENCH_FAVORDYNMODS=1 ...       also remount cgroup hierarchies with favordynmods (SYSTEM-WIDE)
//                                     and re-measure the join and the rows. The mount options are
//                                     restored afterwards, BUT on Linux >= 6.18 (commit 0568f89d4fb8,
//                                     per-threadgroup rwsem for cgroup.procs writes) the first
//                                     favordynmods switches the kernel for good: turning it off only
//                                     logs "per threadgroup rwsem mechanism can't be disabled", and
//                                     joins stop waiting for RCU until the next reboot. Every later
//                                     run then measures that state (the section says so).
//   QK_BENCH_STARTUP_TREE=10000       size of the synthetic /proc of the 10k row
//
// Rows, run alternately (round-robin, 3 warm-ups each, then >= 30 timed rounds):
//   node -e 0            the baseline: /usr/bin/node with an empty environment, exec to exit
//   bundle, refusal      node BUNDLE @front 0 0 - 0,1,2 -version with no config file
//                        (ERR_CONFIG_MISSING, exit 78): the bundle's own start-up cost
//   front -> probe       the installed setuid front, libvirt's `-version` capability probe:
//                        front -> node -> enter helper -> stand-in QEMU
//   front -> launch      the installed front, a full authorised VM launch against a real pod
//                        (bench/pod.mjs: a "virt-launcher" process in its own mnt/net/ipc/uts/
//                        cgroup namespaces and fresh cgroups, the token on a pod-only tmpfs) in
//                        the real /proc: config, caller, RS256 token, /proc scan, pidfd pin, pod
//                        secret via openat2, cgroup join, replay record, decision line, koffi
//                        execve -> enter (setns) -> stand-in QEMU
//   front -> launch, 10k-process /proc
//                        the same launch with the config's proc_root on a synthetic tree
//                        (bench/proc-tree.mjs, tmpfs) whose VM identity is the pod's: the tree's
//                        own target is removed, `<tree>/<pod pid> -> /proc/<pod pid>` and
//                        `<tree>/self -> /proc/self` are added, so the scan walks 10k fake
//                        processes (and ~20 near-misses for this VM) while the pin, the pod's
//                        root, its cgroup file and our mountinfo still come from the kernel
//   C setns+exec         the floor (bench/startup-setns.c, as root): pidfd_open(pod), setns(mnt|
//                        net|ipc|uts|cgroup), setgroups/setresgid/setresuid(65534), execve
//                        the stand-in QEMU; nsenter-like, no verification, no cgroup join
// Before timing, each row is run once and checked: exit status, the stand-in ran, the error
// code; for launches the decision line must say authorised with the pod's pid, and findTarget()
// (src/, bundled) must find exactly the pod in both /proc and the tree.
// For the front rows the time runs from fork+exec of the front to the stand-in QEMU's first
// instruction (it writes CLOCK_MONOTONIC to the fd the front passed as 1); for the others, to
// exit. Peak RSS is wait4's ru_maxrss for the whole exec chain of that pid (= /usr/bin/time %M).
// A tiny C timer does the fork/exec/wait so the harness adds nothing to either side of a ratio.
// Then, once per launch row (not per timed run), a ptrace phase timer (bench/startup-phases.c)
// splits a launch at each execve and at the decision line (whose durationMs counts from the
// bundle's first statement), and a second traced set times each cgroup.procs write in place;
// bench/cgroup-join.c times the join alone on fresh cgroups (cold = first write after 100 ms).
// The front rows need root (install.sh installs a setuid front); without root they are skipped.
import { execFileSync, spawnSync } from 'node:child_process'
import { generateKeyPairSync, sign } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmdirSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { cacheAccepted } from '../scripts/code-cache.mjs'
import { bundle } from './lib.mjs'
import { hierarchies, makePod } from './pod.mjs'
import { makeProcTree } from './proc-tree.mjs'

const ROOT = resolve(import.meta.dirname, '..')
const NODE = existsSync('/usr/bin/node') ? '/usr/bin/node' : process.execPath
const RUNS = Math.max(30, Number(process.env.QK_BENCH_STARTUP_RUNS ?? 30))
const WARMUP = 3
const TREE_N = Number(process.env.QK_BENCH_STARTUP_TREE ?? 10000)
const FAVORDYNMODS = process.env.QK_BENCH_FAVORDYNMODS === '1'
const PHASE_RUNS = 9
const TARGET = { ratio: 1.3, rssMiB: 60 }
const BENCH = import.meta.dirname
const QEMU_ID = 65534

// fork, execve with exactly the given env, stdin/stderr on /dev/null (or stderr to -o FILE),
// stdout on a pipe; prints "total_ns first_ns maxrss_kb wait_status cpu_ns". first_ns is when the
// stand-in QEMU reported its first instruction (-1 if nothing was written on the pipe).
const TIMER_C = String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char **argv) {
  char *env[64]; int ne = 0, i = 1; const char *err = "/dev/null";
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (!strcmp(argv[i], "-e") && i + 1 < argc && ne < 63) env[ne++] = argv[++i];
    else if (!strcmp(argv[i], "-o") && i + 1 < argc) err = argv[++i];
    else return 64;
  }
  env[ne] = NULL;
  if (i + 1 >= argc) return 64;
  int p[2]; if (pipe(p) != 0) return 71;
  long long t0 = now();
  pid_t pid = fork();
  if (pid == 0) {
    int n = open("/dev/null", O_RDWR), e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(n, 0); dup2(p[1], 1); dup2(e, 2);
    for (int fd = 3; fd < 1024; fd++) close(fd);
    execve(argv[i + 1], argv + i + 1, env);
    _exit(127);
  }
  close(p[1]);
  char buf[64]; size_t got = 0; ssize_t r;
  while ((r = read(p[0], buf + got, sizeof(buf) - 1 - got)) > 0) got += (size_t)r;
  buf[got] = 0;
  int st; struct rusage ru;
  if (wait4(pid, &st, 0, &ru) != pid) return 71;
  long long t1 = now(), first = got ? atoll(buf) - t0 : -1;
  long long cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
  printf("%lld %lld %ld %d %lld\n", t1 - t0, first, ru.ru_maxrss, st, cpu);
  return 0;
}
`
// The stand-in QEMU: its first act is to report the time on fd 1.
const STANDIN_C = String.raw`
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  char b[32]; int n = snprintf(b, sizeof(b), "%lld\n", t.tv_sec * 1000000000LL + t.tv_nsec);
  return write(1, b, (size_t)n) == n ? 0 : 1;
}
`
// The pod's long-lived process (SIGTERM/SIGKILL end it).
const PAUSE_C = '#include <unistd.h>\nint main(void) { for (;;) pause(); }\n'

function gccTo(dir, name, source, flags) {
  writeFileSync(`${dir}/${name}.c`, source)
  for (const f of [flags, []]) {
    const r = spawnSync('gcc', ['-O2', '-Wall', ...f, '-o', `${dir}/${name}`, `${dir}/${name}.c`], { stdio: ['ignore', 'ignore', 'inherit'] })
    if (r.status === 0) return `${dir}/${name}`
  }
  throw new Error(`gcc ${name} failed`)
}

const b64u = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url')

function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]
}

/**
 * Everything the rows need, under a fresh root-owned temp dir. What must be undone (the pod, the
 * tree) is pushed onto `cleanups` as soon as it exists.
 */
async function setUp(base, cleanups) {
  const isRoot = process.getuid?.() === 0
  const timer = gccTo(base, 'timer', TIMER_C, [])
  const standin = gccTo(base, 'standin', STANDIN_C, ['-static'])
  chmodSync(standin, 0o755)
  // The bundle as `npm run build` makes it, with a sysconfdir that has no config.
  const plain = `${base}/plain`
  execFileSync(process.execPath, [`${ROOT}/scripts/build.mjs`, '--no-native', '--out', plain, '--sysconfdir', `${base}/no-etc`, '--node', NODE],
    { stdio: ['ignore', 'ignore', 'inherit'] })
  const rows = [
    { name: 'node -e 0', argv: [NODE, '-e', '0'], env: [], expect: { status: 0 } },
    { name: 'bundle, refusal (no config)', argv: [NODE, '--no-warnings', `${plain}/qemu-kube.cjs`, '@front', '0', '0', '-', '0,1,2', '-version'],
      env: [], expect: { status: 78, code: 'ERR_CONFIG_MISSING' } },
  ]
  const cache = (bundle) => (cacheAccepted(NODE, bundle) ? 'V8 code cache accepted' : 'NO usable V8 code cache (compiled from source)')
  if (!isRoot) return { timer, rows, notes: [`bundle: ${cache(`${plain}/qemu-kube.cjs`)}`, 'not root: the installed-front rows were skipped'] }

  const cSource = (name) => readFileSync(`${BENCH}/${name}.c`, 'utf8')
  const pause = gccTo(base, 'pause', PAUSE_C, ['-static'])
  const setnsExec = gccTo(base, 'startup-setns', cSource('startup-setns'), [])
  const phases = gccTo(base, 'startup-phases', cSource('startup-phases'), ['-pthread'])
  const joinBin = gccTo(base, 'cgroup-join', cSource('cgroup-join'), [])
  chmodSync(pause, 0o755)

  const prefix = `${base}/prefix`
  const etc = `${base}/etc`
  const group = execFileSync('getent', ['group', '0'], { encoding: 'utf8' }).split(':')[0]
  execFileSync('bash', [`${ROOT}/scripts/install.sh`, '--prefix', prefix, '--sysconfdir', etc, '--group', group, '--node', NODE],
    { stdio: ['ignore', 'ignore', 'inherit'] })
  const front = `${prefix}/bin/qemu-kube`
  const state = `${base}/state`
  mkdirSync(state, { mode: 0o700 })
  mkdirSync(`${base}/pod-secret`, { mode: 0o755 }) // empty on the host; the pod mounts its tmpfs here

  // The synthetic /proc first: its VM identity (and the near-misses aimed at it) is the pod's.
  const seed = 1 + Math.floor(Math.random() * 0x7ffffffe)
  const tree = makeProcTree(TREE_N, { seed })
  cleanups.push(tree.cleanup)
  const vm = { uuid: tree.query.uuid, name: tree.query.name }

  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  writeFileSync(`${etc}/token.pub`, publicKey.export({ type: 'spki', format: 'pem' }), { mode: 0o644 })
  const now = Math.floor(Date.now() / 1000)
  const claims = { iss: 'kubevirt.io/virt-handler', aud: 'qemu-kube', sub: vm.uuid, vm_name: vm.name, jti: `bench-${vm.uuid}`, iat: now - 1, exp: now + 3000 }
  const signingInput = `${b64u({ alg: 'RS256', typ: 'JWT' })}.${b64u(claims)}`
  const token = `${signingInput}.${sign('sha256', Buffer.from(signingInput), privateKey).toString('base64url')}`

  // The pod: its launcher carries the VM's uuid and name; the token exists only in its mount ns.
  const pod = await makePod({ uuid: vm.uuid, name: vm.name, token, secretPath: `${base}/pod-secret/token`, pause })
  cleanups.push(() => {
    const stuck = pod.destroy()
    if (stuck.length > 0) process.stderr.write(`startup bench: cgroups still busy: ${stuck.join(', ')}\n`)
  })
  if (readdirSync(`${base}/pod-secret`).length !== 0) throw new Error('startup bench: the pod\'s secret tmpfs is visible on the host')

  // The tree's own target goes; the pod's launcher and `self` come in as links to the kernel's.
  // (A tree process that holds the pod's pid moves to the freed slot: the tree keeps its size.)
  rmSync(`${tree.root}/${tree.targetPid}`, { recursive: true })
  if (existsSync(`${tree.root}/${pod.pid}`)) renameSync(`${tree.root}/${pod.pid}`, `${tree.root}/${tree.targetPid}`)
  symlinkSync(`/proc/${pod.pid}`, `${tree.root}/${pod.pid}`)
  for (const link of ['self', 'thread-self']) {
    rmSync(`${tree.root}/${link}`, { force: true })
    symlinkSync(`/proc/${link}`, `${tree.root}/${link}`)
  }
  const treeProcs = readdirSync(tree.root).filter((n) => /^[1-9]\d*$/.test(n)).length
  // Exactly one process for this VM in each /proc, and it is the pod: the scan as shipped says so
  // (it throws ERR_TARGET_AMBIGUOUS on two).
  const { module: targetTs } = await bundle('src/emulator/target.ts', 'startup-target')
  for (const procRoot of ['/proc', tree.root]) {
    const found = targetTs.findTarget({ procRoot, launcherName: 'virt-launcher', ...vm })
    if (found.pid !== pod.pid) throw new Error(`startup bench: findTarget(${procRoot}) found pid ${found.pid}, not the pod's ${pod.pid}`)
  }

  const confPath = `${etc}/qemu-kube.conf`
  const conf = {
    token_public_keys: [`${etc}/token.pub`], token_max_lifetime: 3600, allowed_users: [0], qemu_user: QEMU_ID, qemu_group: QEMU_ID,
    qemu_binary: standin, qemu_binary_from: 'host', probe_qemu_binary: standin, state_dir: state, pod_secret_path: `${base}/pod-secret/token`,
  }
  const confText = (extra) => Object.entries({ ...conf, ...extra }).map(([k, v]) => `${k} = ${JSON.stringify(v)}\n`).join('')
  const confs = { proc: confText({}), tree: confText({ proc_root: tree.root }) }
  let current
  const useConf = (text) => { if (text !== current) writeFileSync(confPath, text, { mode: 0o644 }); current = text }
  useConf(confs.proc)
  const env = [`KUBEVIRT_VM_UUID=${vm.uuid}`, `KUBEVIRT_VM_NAME=${vm.name}`, `KUBEVIRT_SECRET=${token}`]
  // Single-use tokens: the replay record is removed before each launch (outside the timing), and
  // the config for the row is put in place (only when it changes).
  const forget = () => { for (const f of readdirSync(state)) unlinkSync(`${state}/${f}`) }
  const launch = (text) => () => { useConf(text); forget() }
  const argv = [front, '-name', `guest=${vm.name}`]

  // The floor must really enter the pod: its namespaces, seen from inside, are the pod's.
  const seen = execFileSync(setnsExec, [String(pod.pid), String(QEMU_ID), String(QEMU_ID), '/usr/bin/readlink', ...Object.keys(pod.ns).map((n) => `/proc/self/ns/${n}`)],
    { encoding: 'utf8' }).trim().split('\n')
  if (seen.join(' ') !== Object.values(pod.ns).join(' ')) throw new Error(`startup bench: setns+exec did not land in the pod: ${seen.join(' ')}`)

  rows.push(
    { name: 'front -> probe -> QEMU', argv: [front, '-version'], env: [], expect: { status: 0, first: true } },
    { name: 'front -> launch -> QEMU', argv, env, before: launch(confs.proc), expect: { status: 0, first: true, decisionPid: pod.pid }, launch: 'real /proc' },
    { name: `front -> launch, ${TREE_N / 1000}k-process /proc`, argv, env, before: launch(confs.tree), expect: { status: 0, first: true, decisionPid: pod.pid },
      launch: `${TREE_N / 1000}k /proc` },
    { name: 'C setns+exec -> QEMU (floor)', argv: [setnsExec, String(pod.pid), String(QEMU_ID), String(QEMU_ID), standin], env: [], expect: { status: 0, first: true } },
  )
  return {
    timer, rows, phases, joinBin,
    notes: [
      `installed bundle: ${cache(`${prefix}/lib/qemu-kube/qemu-kube.cjs`)}`,
      `pod: launcher pid ${pod.pid}, own mnt/net/ipc/uts/cgroup namespaces, ${pod.cgroups.length} fresh cgroups; synthetic /proc: ${treeProcs} process entries (seed ${seed}, tmpfs), findTarget() finds only the pod in both`,
    ],
  }
}

function once(timer, row, errFile) {
  row.before?.()
  const args = [...row.env.flatMap((e) => ['-e', e]), ...(errFile ? ['-o', errFile] : []), '--', ...row.argv]
  const out = execFileSync(timer, args, { encoding: 'utf8' }).trim().split(' ').map(Number)
  const [total, first, rssKb, status, cpu] = out
  return { ms: (first >= 0 ? first : total) / 1e6, cpuMs: cpu / 1e6, rssKb, status: status >> 8, signalled: (status & 0x7f) !== 0, first: first >= 0 }
}

/** The decision line (pino JSON on stderr), or undefined. */
function decisionOf(text) {
  for (const line of text.split('\n')) {
    try {
      const j = JSON.parse(line)
      if (j.msg === 'decision') return j
    } catch {}
  }
  return undefined
}

/** Alternating timed rounds of `rows`; samples per row. */
function timeRows(timer, rows) {
  const samples = rows.map(() => ({ ms: [], cpu: [], rss: [] }))
  for (let i = 0; i < WARMUP + RUNS; i++) {
    rows.forEach((row, j) => {
      const r = once(timer, row)
      if (i >= WARMUP) { samples[j].ms.push(r.ms); samples[j].cpu.push(r.cpuMs); samples[j].rss.push(r.rssKb) }
    })
  }
  return samples
}

function rowTable(rows, samples) {
  const base50 = percentile(samples[0].ms, 50)
  return [
    '| path | p50 ms | p90 ms | p50 / node -e 0 | CPU p50 ms | peak RSS MiB |',
    '|---|---|---|---|---|---|',
    ...rows.map((row, j) => {
      const { ms, cpu, rss } = samples[j]
      return `| ${row.name} | ${percentile(ms, 50).toFixed(1)} | ${percentile(ms, 90).toFixed(1)} | ${(percentile(ms, 50) / base50).toFixed(2)}x | ${percentile(cpu, 50).toFixed(1)} | ${(Math.max(...rss) / 1024).toFixed(1)} |`
    }),
  ]
}

function verdict(rows, samples) {
  const base50 = percentile(samples[0].ms, 50)
  const parts = rows.flatMap((row, j) => {
    if (!row.launch) return []
    const ratio = percentile(samples[j].ms, 50) / base50
    const rss = Math.max(...samples[j].rss) / 1024
    return [`${row.launch}: ${ratio.toFixed(2)}x ${ratio <= TARGET.ratio ? 'PASS' : 'FAIL'}, ${rss.toFixed(1)} MiB ${rss <= TARGET.rssMiB ? 'PASS' : 'FAIL'}`]
  })
  return `**Verdict** (launch p50 <= ${TARGET.ratio}x node -e 0 = ${(TARGET.ratio * base50).toFixed(1)} ms; peak RSS <= ${TARGET.rssMiB} MiB): ${parts.join('; ')}`
}

// ---- phases: one launch split at each execve and at the decision line ---------------------

function traced(phasesBin, row, writes) {
  row.before?.()
  const args = [...(writes ? ['-w'] : []), ...row.env.flatMap((e) => ['-e', e]), '--', ...row.argv]
  const out = execFileSync(phasesBin, args, { encoding: 'utf8', maxBuffer: 1 << 24 })
  const r = { exec: [], lines: [], writes: [], first: undefined, status: undefined }
  for (const line of out.split('\n')) {
    const [kind, rest] = [line[0], line.slice(2)]
    const sp = rest.indexOf(' ')
    const at = Number(sp < 0 ? rest : rest.slice(0, sp)) / 1e6
    const text = sp < 0 ? '' : rest.slice(sp + 1)
    if (kind === 'E') r.exec.push({ at, exe: text })
    else if (kind === 'L') r.lines.push({ at, text })
    else if (kind === 'W') {
      const [dur, who, path] = text.split(' ')
      r.writes.push({ at, ms: Number(dur) / 1e6, main: who === 'main', path })
    } else if (kind === 'F') r.first = at
    else if (kind === 'X') r.status = Number(rest)
  }
  const dec = r.lines.find((l) => decisionOf(l.text))
  const d = dec && decisionOf(dec.text)
  if (r.status !== 0 || r.exec.length !== 4 || r.first === undefined || d?.outcome !== 'authorised') {
    throw new Error(`startup bench: traced "${row.name}" did not behave: ${out.trim().slice(0, 2000)}`)
  }
  return { ...r, decisionAt: dec.at, durationMs: d.durationMs }
}

const med = (xs) => percentile(xs, 50)

function phaseTable(s, launchRows) {
  const PHASES = [
    ['execve of the setuid front', (r) => r.exec[0].at],
    ['front: checks, becomes root, execve node', (r) => r.exec[1].at - r.exec[0].at],
    ['node start-up + bundle load, to its first statement', (r) => r.decisionAt - r.durationMs - r.exec[1].at],
    ['bundle: config .. verify .. cgroup join .. decision (durationMs)', (r) => r.durationMs],
    ['decision line -> execve of the enter helper', (r) => r.exec[2].at - r.decisionAt],
    ['enter helper: setns, creds, execve QEMU', (r) => r.exec[3].at - r.exec[2].at],
    ['QEMU image -> first instruction', (r) => r.first - r.exec[3].at],
    ['total (traced)', (r) => r.first],
  ]
  const runs = launchRows.map((row) => Array.from({ length: PHASE_RUNS }, () => traced(s.phases, row, false)))
  return [
    `| phase (median of ${PHASE_RUNS} traced launches, ms) | ${launchRows.map((r) => r.launch).join(' | ')} |`,
    `|---|${launchRows.map(() => '---').join('|')}|`,
    ...PHASES.map(([name, f]) => `| ${name} | ${runs.map((rs) => med(rs.map(f)).toFixed(2)).join(' | ')} |`),
  ]
}

function writesLines(s, launchRows, label) {
  const wruns = launchRows.map((row) => Array.from({ length: PHASE_RUNS }, () => traced(s.phases, row, true)))
  // In place: each cgroup.procs write of the launch (seccomp-traced runs, so a little slower).
  const w = wruns.map((rs) => {
    const warm = rs.map((r) => r.writes.filter((x) => !x.main))
    const joins = rs.map((r) => r.writes.filter((x) => x.main))
    return {
      n: med(joins.map((j) => j.length)),
      warmAt: med(warm.map((x) => x[0]?.at ?? NaN)),
      warmMs: med(warm.map((x) => x[0]?.ms ?? NaN)),
      joinAt: med(joins.map((j) => j[0]?.at ?? NaN)),
      firstJoin: med(joins.map((j) => j[0]?.ms ?? NaN)),
      allJoins: med(joins.map((j) => j.reduce((a, x) => a + x.ms, 0))),
      maxJoin: Math.max(...joins.flat().map((x) => x.ms)),
      dur: med(rs.map((r) => r.durationMs)),
    }
  })
  return launchRows.map((row, i) => {
    const x = w[i]
    return (`- ${label}${row.launch}: warm-up write (libuv thread) starts at ${x.warmAt.toFixed(1)}, takes ${x.warmMs.toFixed(2)}; ` +
      `the ${x.n} joins (main thread) start at ${x.joinAt.toFixed(1)}, first ${x.firstJoin.toFixed(3)}, all ${x.allJoins.toFixed(3)} (slowest single join seen ${x.maxJoin.toFixed(2)}); durationMs ${x.dur.toFixed(1)}`)
  })
}

// ---- the cgroup join alone, and favordynmods ------------------------------------------------

function joinTest(joinBin, h, rounds, gapMs) {
  const dir = `${h.own}/qk-bench-join-${process.pid}`
  mkdirSync(dir)
  try {
    const out = execFileSync(joinBin, [h.own, dir, String(rounds), String(gapMs)], { encoding: 'utf8' })
    const rows = out.trim().split('\n').map((l) => l.split(' ').map((x) => Number(x) / 1e6))
    return { cold: rows.map((r) => r[0]), warm: rows.map((r) => r[1]) }
  } finally {
    for (let i = 0; i < 100; i++) { try { rmdirSync(dir); break } catch (e) { if (e.code === 'ENOENT') break; Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10) } }
  }
}

const stats = (xs) => `${med(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}..${Math.max(...xs).toFixed(2)})`

function joinHierarchies() {
  const hs = hierarchies()
  const v1 = hs.find((h) => h.key === 'pids') ?? hs.find((h) => h.version === 1 && !h.key.split(',').includes('cpuset'))
  const v2 = hs.find((h) => h.version === 2)
  return [v1, v2].filter(Boolean)
}

/** Whether joins on this kernel still take the default path: favordynmods on a mount, or once on since boot. */
function favordynmodsState() {
  const on = hierarchies().filter((h) => (superOpts(h.mountPoint) ?? '').split(',').includes('favordynmods')).map((h) => h.mountPoint)
  const log = spawnSync('dmesg', [], { encoding: 'utf8' }).stdout ?? ''
  return { on, stuck: /per threadgroup rwsem mechanism can't be disabled/.test(log) }
}

function joinLines(joinBin, label, sweep) {
  const lines = []
  for (const h of joinHierarchies()) {
    const r = joinTest(joinBin, h, 10, 100)
    lines.push(`- ${label}${h.version === 1 ? `v1 ${h.key}` : 'v2'}: cold ${stats(r.cold)} ms, warm ${stats(r.warm)} ms (median (min..max) of 10)`)
  }
  if (sweep) {
    const h = joinHierarchies()[0]
    const gaps = [2, 5, 10, 20, 50, 100].map((g) => `${g} ms: ${med(joinTest(joinBin, h, 5, g).cold).toFixed(2)}`)
    lines.push(`- ${label}first write after a quiet spell of (v1 ${h.key}, median of 5) ${gaps.join(', ')} ms`)
  }
  return lines
}

/** [per-mount options, super options] of the mount at mountPoint, from mountinfo. */
const mountOpts = (mountPoint) => {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const dash = line.indexOf(' - ')
    const pre = line.slice(0, dash).split(' ')
    if (dash >= 0 && pre[4] === mountPoint) return [pre[5], line.slice(dash + 3).split(' ')[2]]
  }
  return [undefined, undefined]
}
const superOpts = (mountPoint) => mountOpts(mountPoint)[1]
// --options-mode ignore: exactly these options. By default mount(8) merges in the current ones
// from mountinfo on a remount, so `remount,rw` would keep favordynmods (cgroup2 has no "no" form).
const remount = (opts, mountPoint) => spawnSync('mount', ['--options-mode', 'ignore', '-o', `remount,${opts}`, mountPoint], { encoding: 'utf8' })

/**
 * mount -o remount,<original>,favordynmods on each join hierarchy. Every mount it changes goes
 * into `changed` at once, so restoreMounts(changed) can undo it from any exit path.
 */
function favorDynmods(changed) {
  const report = []
  for (const h of joinHierarchies()) {
    const [origMnt, orig] = mountOpts(h.mountPoint)
    const r = remount(`${origMnt},${orig},favordynmods`, h.mountPoint)
    const [nowMnt, now] = mountOpts(h.mountPoint)
    if (now !== orig || nowMnt !== origMnt) changed.push({ h, orig, origMnt })
    const kmsg = r.status === 0 ? '' : (spawnSync('dmesg', [], { encoding: 'utf8' }).stdout ?? '').trim().split('\n').filter((l) => /cgroup/i.test(l)).at(-1) ?? ''
    report.push(`${h.mountPoint} (${orig}): ${r.status === 0 ? `remounted, now ${now}` : `refused (${(r.stderr.trim().split('\n')[0] ?? '').replace(/^mount: /, '')}${kmsg ? `; kernel: ${kmsg.replace(/^\[[^\]]*\]\s*/, '')}` : ''})`}`)
  }
  return report
}

/** Puts back the original options of every changed mount; returns the ones that did not come back. */
function restoreMounts(changed) {
  const bad = []
  for (const { h, orig, origMnt } of changed.splice(0)) {
    remount(`${origMnt},${orig}`, h.mountPoint)
    const [m, o] = mountOpts(h.mountPoint)
    if (o !== orig || m !== origMnt) bad.push(`${h.mountPoint}: now ${m} - ${o}, was ${origMnt} - ${orig}`)
  }
  if (bad.length > 0) process.stderr.write(`startup bench: MOUNT OPTIONS NOT RESTORED: ${bad.join('; ')}\n`)
  return bad
}

export async function run() {
  const base = mkdtempSync('/var/tmp/qk-bench-startup-')
  chmodSync(base, 0o755)
  const cleanups = []
  const changed = [] // mounts remounted with favordynmods, until restored
  // Undone in the finally below, or at exit, or on SIGINT/SIGTERM (at the next turn of the
  // event loop: the timing loops are synchronous), whichever comes first.
  let done = false
  const cleanUp = () => {
    if (done) return
    done = true
    restoreMounts(changed)
    for (const c of cleanups.reverse()) try { c() } catch (e) { process.stderr.write(`startup bench cleanup: ${e.message}\n`) }
    if (!process.env.QK_BENCH_KEEP) rmSync(base, { recursive: true, force: true })
  }
  const onSignal = (sig) => { cleanUp(); process.exit(sig === 'SIGINT' ? 130 : 143) }
  process.on('exit', cleanUp).on('SIGINT', onSignal).on('SIGTERM', onSignal)
  try {
    const s = await setUp(base, cleanups)
    // Check each row does what its name says before timing it.
    const checks = []
    for (const row of s.rows) {
      const errFile = `${base}/check.err`
      rmSync(errFile, { force: true })
      const r = once(s.timer, row, errFile)
      const err = existsSync(errFile) ? readFileSync(errFile, 'utf8') : ''
      const d = decisionOf(err)
      const ok = r.status === row.expect.status && !r.signalled && (!row.expect.first || r.first) && (!row.expect.code || err.includes(`"${row.expect.code}"`)) &&
        (!row.expect.decisionPid || (d?.outcome === 'authorised' && d?.target?.pid === row.expect.decisionPid))
      if (!ok) throw new Error(`startup bench: "${row.name}" did not behave (exit ${r.status}, stand-in ran: ${r.first}): ${err.trim()}`)
      if (row.expect.decisionPid) checks.push(`${row.launch}: decision ${d.outcome}, target pid ${d.target.pid}, durationMs ${d.durationMs}`)
    }
    const samples = timeRows(s.timer, s.rows)
    const lines = [
      '## startup',
      '',
      `${RUNS} alternating runs each (after ${WARMUP} warm-ups), empty environment, node ${NODE}. Front and C rows: fork+exec to the`,
      'stand-in QEMU\'s first instruction; others: to exit. CPU: user+sys of the whole chain. RSS: peak of the chain (wait4 ru_maxrss).',
      '',
      ...rowTable(s.rows, samples),
      '',
    ]
    if (s.phases) {
      lines.push(verdict(s.rows, samples), '', `Checked before timing: ${checks.join('; ')}.`, '')
      const launchRows = s.rows.filter((r) => r.launch)
      lines.push('### phases', '', ...phaseTable(s, launchRows), '',
        `cgroup.procs writes inside the launch (median of ${PHASE_RUNS} seccomp-traced launches; ms from execve of the front):`,
        ...writesLines(s, launchRows, ''), '')
      lines.push('### cgroup join alone (bench/cgroup-join.c: a sleeping child into a fresh cgroup, ms)', '')
      const state = favordynmodsState()
      if (state.on.length > 0 || state.stuck) {
        lines.push(`- NOTE: not the kernel's default state: ${state.on.length ? `favordynmods is on (${state.on.join(', ')})` : 'favordynmods was on since boot and could not be turned off (dmesg)'}; ` +
          'cgroup.procs writes use the per-threadgroup rwsem and never wait for RCU, in this whole section and the tables above')
      }
      lines.push(...joinLines(s.joinBin, '', true))
      if (FAVORDYNMODS) {
        // System-wide: restored right after (cleanUp() restores too, should anything throw).
        try {
          const report = favorDynmods(changed)
          lines.push(`- favordynmods remount: ${report.join('; ')}`)
          if (changed.length > 0) {
            lines.push(...joinLines(s.joinBin, 'favordynmods, ', false), ...writesLines(s, s.rows.filter((r) => r.launch), 'favordynmods, in the launch, '))
            const some = s.rows.filter((r) => r.name === 'node -e 0' || r.launch || r.name.startsWith('C setns'))
            lines.push('', 'The same rows with favordynmods on (same run, after the table above):', '', ...rowTable(some, timeRows(s.timer, some)))
          }
        } finally {
          const had = changed.map((c) => c.h)
          const bad = restoreMounts(changed)
          if (had.length > 0) lines.push(bad.length ? `- MOUNT OPTIONS NOT RESTORED: ${bad.join('; ')}` : `- mount options restored: ${had.map((h) => `${h.mountPoint} ${mountOpts(h.mountPoint).join(' - ')}`).join(', ')}`)
          if (had.length > 0 && favordynmodsState().stuck) {
            lines.push('- but the kernel logged "per threadgroup rwsem mechanism can\'t be disabled": cgroup.procs writes stay on the per-threadgroup rwsem (no RCU wait) until reboot')
          }
        }
      } else {
        lines.push('- favordynmods: not tried (set QK_BENCH_FAVORDYNMODS=1; it remounts cgroup hierarchies system-wide for the run)')
      }
      lines.push('')
    }
    lines.push(...s.notes)
    return lines.join('\n')
  } finally {
    cleanUp()
    process.off('exit', cleanUp).off('SIGINT', onSignal).off('SIGTERM', onSignal)
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) console.log(await run())
