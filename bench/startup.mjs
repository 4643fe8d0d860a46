// Bench section "startup": what a VM start pays for qemu-kube, as a ratio against bare Node.
//
//   node bench/startup.mjs            (or, once wired in, `npm run bench startup`)
//   QK_BENCH_STARTUP_RUNS=60 QK_BENCH_KEEP=1 node bench/startup.mjs
//
// Rows, run alternately (round-robin, 3 warm-ups each, then >= 30 timed rounds):
//   node -e 0            the baseline: /usr/bin/node with an empty environment, exec to exit
//   bundle, refusal      node BUNDLE @front 0 0 - 0,1,2 -version with no config file
//                        (ERR_CONFIG_MISSING, exit 78): the bundle's own start-up cost
//   front -> probe       the installed setuid front, libvirt's `-version` capability probe:
//                        front -> node -> enter helper -> stand-in QEMU
//   front -> launch      the installed front, a full authorised VM launch against a real
//                        "virt-launcher" process in the real /proc: config, caller, RS256 token,
//                        /proc scan, pidfd pin, pod secret via openat2, cgroup join, replay
//                        record, decision line, koffi execve -> enter (setns) -> stand-in QEMU
// For the front rows the time runs from fork+exec of the front to the stand-in QEMU's first
// instruction (it writes CLOCK_MONOTONIC to the fd the front passed as 1); for the others, to
// exit. Peak RSS is wait4's ru_maxrss for the whole exec chain of that pid (= /usr/bin/time %M).
// A tiny C timer does the fork/exec/wait so the harness adds nothing to either side of a ratio.
// The front rows need root (install.sh installs a setuid front); without root they are skipped.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { cacheAccepted } from '../scripts/code-cache.mjs'

const ROOT = resolve(import.meta.dirname, '..')
const NODE = existsSync('/usr/bin/node') ? '/usr/bin/node' : process.execPath
const RUNS = Math.max(30, Number(process.env.QK_BENCH_STARTUP_RUNS ?? 30))
const WARMUP = 3

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

/** Everything the rows need, under a fresh root-owned temp dir. */
function setUp(base) {
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

  const prefix = `${base}/prefix`
  const etc = `${base}/etc`
  const group = execFileSync('getent', ['group', '0'], { encoding: 'utf8' }).split(':')[0]
  execFileSync('bash', [`${ROOT}/scripts/install.sh`, '--prefix', prefix, '--sysconfdir', etc, '--group', group, '--node', NODE],
    { stdio: ['ignore', 'ignore', 'inherit'] })
  const front = `${prefix}/bin/qemu-kube`
  const state = `${base}/state`
  mkdirSync(state, { mode: 0o700 })
  mkdirSync(`${base}/pod`, { mode: 0o755 })
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  writeFileSync(`${etc}/token.pub`, publicKey.export({ type: 'spki', format: 'pem' }), { mode: 0o644 })
  const vm = { uuid: randomUUID(), name: 'bench-vm' }
  const now = Math.floor(Date.now() / 1000)
  const claims = { iss: 'kubevirt.io/virt-handler', aud: 'qemu-kube', sub: vm.uuid, vm_name: vm.name, jti: `bench-${vm.uuid}`, iat: now - 1, exp: now + 3000 }
  const signingInput = `${b64u({ alg: 'RS256', typ: 'JWT' })}.${b64u(claims)}`
  const token = `${signingInput}.${sign('sha256', Buffer.from(signingInput), privateKey).toString('base64url')}`
  writeFileSync(`${base}/pod/token`, token, { mode: 0o644 })
  const conf = {
    token_public_keys: [`${etc}/token.pub`], token_max_lifetime: 3600, allowed_users: [0], qemu_user: 65534, qemu_group: 65534,
    qemu_binary: standin, qemu_binary_from: 'host', probe_qemu_binary: standin, state_dir: state, pod_secret_path: `${base}/pod/token`,
  }
  writeFileSync(`${etc}/qemu-kube.conf`, Object.entries(conf).map(([k, v]) => `${k} = ${JSON.stringify(v)}\n`).join(''), { mode: 0o644 })
  // The pod's launcher: a real process in the real /proc (its root is the host's, so the pod
  // secret path is a host path), argv[0] virt-launcher, carrying the VM's uuid and name.
  const launcher = spawn('/bin/sh', ['-c', 'sleep 100000; :', `-kubevirt.vm.uuid`, vm.uuid, '-kubevirt.vm.name', vm.name],
    { argv0: 'virt-launcher', detached: true, stdio: 'ignore' })
  launcher.unref()
  const env = [`KUBEVIRT_VM_UUID=${vm.uuid}`, `KUBEVIRT_VM_NAME=${vm.name}`, `KUBEVIRT_SECRET=${token}`]
  // Single-use tokens: the replay record is removed before each launch (outside the timing).
  const forget = () => { for (const f of readdirSync(state)) unlinkSync(`${state}/${f}`) }
  rows.push(
    { name: 'front -> probe -> QEMU', argv: [front, '-version'], env: [], expect: { status: 0, first: true } },
    { name: 'front -> launch -> QEMU', argv: [front, '-name', 'guest=bench-vm'], env, before: forget, expect: { status: 0, first: true } },
  )
  return { timer, rows, launcher, notes: [`installed bundle: ${cache(`${prefix}/lib/qemu-kube/qemu-kube.cjs`)}`] }
}

function once(timer, row, errFile) {
  row.before?.()
  const args = [...row.env.flatMap((e) => ['-e', e]), ...(errFile ? ['-o', errFile] : []), '--', ...row.argv]
  const out = execFileSync(timer, args, { encoding: 'utf8' }).trim().split(' ').map(Number)
  const [total, first, rssKb, status, cpu] = out
  return { ms: (first >= 0 ? first : total) / 1e6, cpuMs: cpu / 1e6, rssKb, status: status >> 8, signalled: (status & 0x7f) !== 0, first: first >= 0 }
}

export async function run() {
  const base = mkdtempSync('/var/tmp/qk-bench-startup-')
  chmodSync(base, 0o755)
  let launcher
  try {
    const s = setUp(base)
    launcher = s.launcher
    // Check each row does what its name says before timing it.
    for (const row of s.rows) {
      const errFile = `${base}/check.err`
      const r = once(s.timer, row, errFile)
      const err = existsSync(errFile) ? readFileSync(errFile, 'utf8') : ''
      const ok = r.status === row.expect.status && !r.signalled && (!row.expect.first || r.first) && (!row.expect.code || err.includes(`"${row.expect.code}"`))
      if (!ok) throw new Error(`startup bench: "${row.name}" did not behave (exit ${r.status}, stand-in ran: ${r.first}): ${err.trim()}`)
    }
    const samples = s.rows.map(() => ({ ms: [], cpu: [], rss: [] }))
    for (let i = 0; i < WARMUP + RUNS; i++) {
      s.rows.forEach((row, j) => {
        const r = once(s.timer, row)
        if (i >= WARMUP) { samples[j].ms.push(r.ms); samples[j].cpu.push(r.cpuMs); samples[j].rss.push(r.rssKb) }
      })
    }
    const base50 = percentile(samples[0].ms, 50)
    const lines = [
      '## startup',
      '',
      `${RUNS} alternating runs each (after ${WARMUP} warm-ups), empty environment, node ${NODE}. Front rows: fork+exec of the`,
      'installed front to the stand-in QEMU\'s first instruction; others: to exit. CPU: user+sys of the whole chain',
      '(launch p50 - CPU p50 is mostly the kernel making the cgroup.procs writes wait for an RCU grace period). RSS: peak of the chain.',
      '',
      '| path | p50 ms | p90 ms | p50 / node -e 0 | CPU p50 ms | peak RSS MiB |',
      '|---|---|---|---|---|---|',
      ...s.rows.map((row, j) => {
        const { ms, cpu, rss } = samples[j]
        return `| ${row.name} | ${percentile(ms, 50).toFixed(1)} | ${percentile(ms, 90).toFixed(1)} | ${(percentile(ms, 50) / base50).toFixed(2)}x | ${percentile(cpu, 50).toFixed(1)} | ${(Math.max(...rss) / 1024).toFixed(1)} |`
      }),
      '',
      ...s.notes,
    ]
    return lines.join('\n')
  } finally {
    if (launcher?.pid) try { process.kill(-launcher.pid, 'SIGKILL') } catch {}
    if (!process.env.QK_BENCH_KEEP) rmSync(base, { recursive: true, force: true })
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) console.log(await run())
