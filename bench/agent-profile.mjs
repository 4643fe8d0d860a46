// Not a bench section: a CPU profile of the agent serving launches, for finding where its
// milliseconds go. Root only.
//
//   node bench/agent-profile.mjs [LAUNCHES]     (default 300) -> a .cpuprofile and a top-20 table
//
// One install with its agent run as `node --cpu-prof BUNDLE agent` (the code the front
// starts, with a profiler), a real podman pod, and LAUNCHES launches by the VM uid through the
// installed front (the startup bench's timer and stand-in QEMU).
//   QK_PROF_OFF=1              no profiler: the launch and the agent's durationMs p50/p90 only
//   QK_PROF_NODE_FLAGS="..."   more Node flags for the agent (e.g. --trace-gc)
//   QK_PROF_AGENT_OUT=FILE     the agent's stdout (its log, and --trace-gc's lines) to FILE
//   QK_PROF_STRACE=FILE        one more launch, the front under strace -f -r (to FILE) and the
//                              agent under strace -f -T (to FILE.agent)
//   QK_PROF_PERF=FILE          one more launch under `perf trace -a` of a few syscalls
//                              (QK_PROF_PERF_EVENTS=a,b,... to choose them)
//   QK_PROF_SMAPS=1            with each RSS line, the agent's resident memory by mapping
// The agent's VmRSS, RssAnon and fd count are printed after 10 launches and every 500. With
// QK_PROF_OFF and no QK_PROF_NODE_FLAGS the agent is the installed front's `agent` (as operators
// run it); otherwise Node runs the bundle directly, without the front's memory caps.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { exportSPKI, generateKeyPair, SignJWT } from 'jose'
import { helper } from './pod.mjs'
import { forgetTokens, ROOT } from './lib.mjs'

const N = Number(process.argv[2] ?? 300)
const VM_UID = 20001
const NODE = existsSync('/usr/bin/node') ? '/usr/bin/node' : process.execPath
const base = mkdtempSync('/var/tmp/qk-agent-prof-')
chmodSync(base, 0o755)
const gcc = (name, flags) => { execFileSync('gcc', ['-O2', ...flags, '-o', `${base}/${name}`, `${ROOT}/bench/${name}.c`]); return `${base}/${name}` }
const timer = gcc('startup-timer', [])
const standin = gcc('startup-standin', ['-static'])
const group = execFileSync('getent', ['group', '0'], { encoding: 'utf8' }).split(':')[0]
execFileSync('bash', [`${ROOT}/scripts/install.sh`, '--prefix', `${base}/prefix`, '--sysconfdir', `${base}/etc`, '--group', group, '--node', NODE], { stdio: ['ignore', 'ignore', 'inherit'] })
const state = `${base}/state`
mkdirSync(state, { mode: 0o700 })
const { privateKey, publicKey } = await generateKeyPair('RS256')
writeFileSync(`${base}/etc/token.pub`, await exportSPKI(publicKey), { mode: 0o644 })
writeFileSync(`${base}/etc/qemu-kube.conf`, [`token_public_keys = ["${base}/etc/token.pub"]`, 'token_max_lifetime = 3600', `qemu_binary = "${standin}"`,
  'qemu_binary_from = "host"', `state_dir = "${state}"`, ''].join('\n'), { mode: 0o644 })
const vm = { uuid: randomUUID(), name: `prof-${process.pid}` }
const now = Math.floor(Date.now() / 1000)
const token = await new SignJWT({ vm_name: vm.name, qemu_uid: VM_UID }).setProtectedHeader({ alg: 'RS256' }).setIssuer('kubevirt.io/virt-handler')
  .setAudience('qemu-kube').setSubject(vm.uuid).setJti(`prof-${randomUUID()}`).setIssuedAt(now - 1).setExpirationTime(now + 3000).sign(privateKey)
const pod = await helper.makePodmanPod({ uuid: vm.uuid, name: vm.name, token, qemuUid: VM_UID })
const errDir = `${base}/err` // the timer opens -o as the VM uid
mkdirSync(errDir, { mode: 0o700 })
chownSync(errDir, VM_UID, VM_UID)
const profDir = `${base}/prof`
mkdirSync(profDir)
const direct = !process.env.QK_PROF_OFF || process.env.QK_PROF_NODE_FLAGS
const agent = spawn(direct ? NODE : `${base}/prefix/bin/qemu-kube`, direct ? [...(process.env.QK_PROF_NODE_FLAGS ?? '').split(' ').filter(Boolean),
  ...(process.env.QK_PROF_OFF ? [] : ['--cpu-prof', `--cpu-prof-dir=${profDir}`]), `${base}/prefix/lib/qemu-kube/qemu-kube.cjs`, 'agent'] : ['agent'],
  { stdio: ['ignore', process.env.QK_PROF_AGENT_OUT ? openSync(process.env.QK_PROF_AGENT_OUT, 'w') : 'ignore', 'inherit'] })
try {
  while (!existsSync(`${base}/etc/qemu-kube-agent/agent.sock`)) await new Promise((r) => setTimeout(r, 50))
  const ms = []
  const agentMs = []
  for (let i = 0; i < N; i++) {
    forgetTokens(state)
    const env = [`KUBEVIRT_VM_UUID=${vm.uuid}`, `KUBEVIRT_VM_NAME=${vm.name}`, `KUBEVIRT_SECRET=${token}`].flatMap((e) => ['-e', e])
    const errFile = `${errDir}/launch.err`
    const out = execFileSync(timer, [...env, '-o', errFile, '-u', String(VM_UID), '--', `${base}/prefix/bin/qemu-kube`, '-name', `guest=${vm.name}`], { encoding: 'utf8' }).trim().split(' ').map(Number)
    agentMs.push(JSON.parse(readFileSync(errFile, 'utf8').trim().split('\n')[0]).durationMs)
    if (out[1] < 0) throw new Error(`launch ${i} did not reach QEMU (status ${out[3]})`)
    ms.push(out[1] / 1e6)
    if ((i + 1) % 500 === 0 || i === 9) {
      const st = readFileSync(`/proc/${agent.pid}/status`, 'utf8')
      if (process.env.QK_PROF_SMAPS) console.log(smapsSummary(agent.pid))
      console.log(`after ${i + 1}: VmRSS ${/VmRSS:\s+(\d+)/.exec(st)[1]} kB, RssAnon ${/RssAnon:\s+(\d+)/.exec(st)[1]} kB, fds ${readdirSync(`/proc/${agent.pid}/fd`).length}`)
    }
  }
  ms.sort((a, b) => a - b)
  agentMs.sort((a, b) => a - b)
  console.log(`${N} launches through the agent: p50 ${ms[Math.floor(N / 2)].toFixed(2)} ms, p90 ${ms[Math.floor(N * 0.9)].toFixed(2)} ms; `
    + `the agent's own durationMs p50 ${agentMs[Math.floor(N / 2)].toFixed(2)}, p90 ${agentMs[Math.floor(N * 0.9)].toFixed(2)}`)
  if (process.env.QK_PROF_STRACE || process.env.QK_PROF_PERF) {
    // One more launch, traced after a 1 s pause (so its cgroup joins are cold): strace -f -r of
    // the front and strace -f -T of the agent (every syscall stops: slow, but complete), or perf
    // trace of the whole machine for a few syscalls (in-kernel filtering: timing nearly real).
    forgetTokens(state)
    const env = [`KUBEVIRT_VM_UUID=${vm.uuid}`, `KUBEVIRT_VM_NAME=${vm.name}`, `KUBEVIRT_SECRET=${token}`].flatMap((e) => ['-e', e])
    const launchArgv = [...env, '-u', String(VM_UID), '--', `${base}/prefix/bin/qemu-kube`, '-name', `guest=${vm.name}`]
    const perf = process.env.QK_PROF_PERF
    const tracer = perf
      ? spawn('perf', ['trace', '-a', '-e', process.env.QK_PROF_PERF_EVENTS ?? 'connect,recvmsg,sendmsg,sendto,setns,unshare,poll,execve,execveat,accept4,clone', '-o', perf], { stdio: 'ignore' })
      : spawn('strace', ['-f', '-tt', '-T', '-o', `${process.env.QK_PROF_STRACE}.agent`, '-p', String(agent.pid)], { stdio: 'ignore' })
    await new Promise((r) => setTimeout(r, 1000))
    if (perf) spawnSync(timer, launchArgv)
    else spawnSync('strace', ['-f', '-r', '-o', process.env.QK_PROF_STRACE, timer, ...launchArgv])
    await new Promise((r) => setTimeout(r, 300))
    tracer.kill('SIGINT')
    await new Promise((r) => tracer.on('exit', r))
  }
} finally {
  agent.kill('SIGTERM')
  await new Promise((r) => agent.on('exit', r))
  await pod.destroy()
  // The install and its state go; with a profile, the directory stays for its .cpuprofile.
  if (process.env.QK_PROF_OFF) rmSync(base, { recursive: true, force: true })
}
if (process.env.QK_PROF_OFF) process.exit(0)
const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'))
const prof = JSON.parse(readFileSync(`${profDir}/${file}`, 'utf8'))
const self = new Map()
const dt = new Map()
prof.samples.forEach((id, i) => dt.set(id, (dt.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)))
for (const n of prof.nodes) {
  const k = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').pop()}:${n.callFrame.lineNumber}`
  self.set(k, (self.get(k) ?? 0) + (dt.get(n.id) ?? 0))
}
const total = [...self.values()].reduce((a, b) => a + b, 0)
console.log(`profile: ${profDir}/${file}; per launch ${(total / N / 1000).toFixed(2)} ms sampled (idle included)`)
for (const [k, v] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${(v / N / 1000).toFixed(3)} ms/launch  ${k}`)

/** The agent's resident memory by mapping kind (heap, anon, file), largest first. */
function smapsSummary(pid) {
  const by = new Map()
  let name = ''
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const m = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (m) { name = m[1] || '[anon]'; continue }
    const r = /^Rss:\s+(\d+)/.exec(line)
    if (r) by.set(name, (by.get(name) ?? 0) + Number(r[1]))
  }
  return [...by.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, v]) => `  ${v} kB ${k}`).join('\n')
}
