// Bench section "storm": a boot storm through a real libvirtd. N domains are started at once,
// each into its own REAL pod (podman + runc, the launcher image, test/helpers/podman.ts) through
// qemu-kube, next to the same storm with plain QEMU as the emulator, in the same run, alternating.
// As e2e runs VMs (test/helpers/e2e.ts): every domain has its own host uid (a DAC <seclabel>
// +UID:+UID, plain QEMU too, so libvirt does the same labelling work for both), and for qemu-kube
// the token's qemu_uid and the launcher's -qemu-uid are that uid.
//
//   node scripts/bench.mjs storm        (root; libvirtd, virtlogd, virsh, QEMU installed)
//   QK_BENCH_STORM_SIZES=1,8,32 QK_BENCH_STORM_ROUNDS=3 node scripts/bench.mjs storm
//
// One storm of size N:
//   untimed   N domains defined (64 MiB TCG, no disk); for qemu-kube also N podman pods (made
//             eight at a time: pod creation is the runtime's cost, not qemu-kube's), each running
//             virt-launcher with a fresh token in its Secret volume that the domain's <qemu:env>
//             also carries
//   timed     N `virsh start` at once, from the first fork to the last one returning 0 (libvirt
//             returns once QEMU runs and has taken `cont`): "time to all running"
//   untimed   every domain checked running with a pid, then destroyed and undefined, its pods and
//             log (which holds the token) removed, so the next storm starts from a clean libvirt
//             (the pods' removal, like their creation, is not timed)
// Three emulators: plain QEMU; qemu-kube standalone (front -> Node -> enter helper); qemu-kube
// through its resident agent (a second install whose `qemu-kube agent` runs: the front asks it,
// then enters the pod itself). Rounds rotate which goes first; the table gives the median
// (min-max). Each install is under a temp prefix and probed by libvirt before the first round.
import { execFileSync, spawn } from 'node:child_process'
import { createHash, generateKeyPairSync, randomUUID } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { pathToFileURL } from 'node:url'
import { importPKCS8, SignJWT } from 'jose'
import { bundleHelpers, fmt, median, ROOT, table } from './lib.mjs'

const SIZES = (process.env.QK_BENCH_STORM_SIZES ?? '1,8,32').split(',').map(Number).filter((n) => n > 0)
const ROUNDS = Math.max(1, Number(process.env.QK_BENCH_STORM_ROUNDS ?? 3))
const TARGET = { 'qemu-kube': 1.5, agent: 1.05 }
const KINDS = ['plain', 'qemu-kube', 'agent']
const AT = Math.max(...SIZES)
const QEMU_GROUP = 'kvm'
const LOG_DIR = '/var/log/libvirt/qemu'
// Host uids for the storm's VMs, one per domain of a storm, inside the default vm_uid_range
// [20000, 29999] and clear of e2e's blocks (20000 + (pid % 249) * 40 + n < 29960).
const UID_FIRST = 29960

/** test/helpers/{podman,libvirt}.ts as one ES module. */
const helpers = () => bundleHelpers('storm-helpers',
  "export { cleanupStale, makePodmanPod, podmanUnavailable } from './test/helpers/podman.ts'\nexport * from './test/helpers/libvirt.ts'\n")

/** The durationMs and path of qemu-kube's decision lines in a domain log (it holds the token: read, then removed). */
function decisions(log) {
  let text = ''
  try { text = readFileSync(log, 'utf8') } catch { return [] }
  return text.split('\n').flatMap((l) => {
    const i = l.indexOf('{"level"')
    try { const o = i >= 0 && JSON.parse(l.slice(i)); return o?.msg === 'decision' ? [{ ms: o.durationMs, path: o.path }] : [] } catch { return [] }
  })
}

/** Waits (up to 20 s) until the CPUs were at least 90% idle over 0.5 s: the pods' start-up has settled. */
async function settle() {
  const idle = () => { const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number); return [f[3] + f[4], f.reduce((a, b) => a + b, 0)] }
  for (const end = Date.now() + 20_000; Date.now() < end;) {
    const [i0, t0] = idle()
    await new Promise((r) => setTimeout(r, 500))
    const [i1, t1] = idle()
    if ((i1 - i0) / (t1 - t0) >= 0.9) return
  }
}

export async function run() {
  const head = '## storm: concurrent domain starts through libvirt, plain QEMU vs qemu-kube'
  if (process.getuid?.() !== 0) return `${head}\n\nskipped: not root (needs libvirtd, real pods and a setuid install)`
  const h = await helpers()
  const why = h.libvirtUnavailable() ?? h.podmanUnavailable()
  if (why !== null) return `${head}\n\nskipped: ${why}`
  if (SIZES.some((n) => n > 40)) throw new Error('storm: at most 40 concurrent domains (one host uid each)')

  const base = mkdtempSync('/var/tmp/qk-storm-')
  chmodSync(base, 0o755) // the qemu user must reach the front
  const work = `${base}/work` // domain XML (with tokens) before `virsh define`: root only
  mkdirSync(work, { mode: 0o700 })
  const front = `${base}/prefix/bin/qemu-kube`
  const agentFront = `${base}/aprefix/bin/qemu-kube`
  const emulator = { 'qemu-kube': front, agent: agentFront }
  let agent
  const live = { domains: new Set(), pods: new Set() }
  const notes = []
  let startedLibvirt = false
  try {
    execFileSync('bash', [`${ROOT}/scripts/install.sh`, '--prefix', `${base}/prefix`, '--sysconfdir', `${base}/etc`, '--group', QEMU_GROUP],
      { stdio: ['ignore', 'ignore', 'inherit'] })
    const { privateKey, publicKey } = generateKeyPairSync('rsa', {
      modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    })
    mkdirSync(`${base}/keys`, { mode: 0o700 })
    writeFileSync(`${base}/keys/storm.pem`, publicKey, { mode: 0o644 })
    // The defaults otherwise: vm_uid_range [20000, 29999], qemu_mount_namespace "own", the pod link.
    writeFileSync(`${base}/etc/qemu-kube.conf`, `token_public_keys = [ "${base}/keys/storm.pem" ]\nstate_dir = "${base}/state"\ntoken_max_lifetime = 600\n`, { mode: 0o644 })
    // The agent's install: the same config but its own state dir, and its agent running.
    execFileSync('bash', [`${ROOT}/scripts/install.sh`, '--prefix', `${base}/aprefix`, '--sysconfdir', `${base}/aetc`, '--group', QEMU_GROUP],
      { stdio: ['ignore', 'ignore', 'inherit'] })
    writeFileSync(`${base}/aetc/qemu-kube.conf`, `token_public_keys = [ "${base}/keys/storm.pem" ]\nstate_dir = "${base}/astate"\ntoken_max_lifetime = 600\n`, { mode: 0o644 })
    agent = spawn(agentFront, ['agent'], { stdio: ['ignore', 'ignore', 'inherit'] })
    for (let i = 0; !existsSync(`${base}/aetc/qemu-kube-agent/agent.sock`); i++) {
      if (agent.exitCode !== null || i > 300) throw new Error('storm: qemu-kube agent did not listen')
      await new Promise((r) => setTimeout(r, 50))
    }
    const signer = await importPKCS8(privateKey, 'RS256')

    await h.cleanupStale()
    await h.startLibvirt()
    startedLibvirt = true
    const version = (await h.virsh(['version'])).stdout
    const libvirtVersion = /Using library: libvirt ([\d.]+)/.exec(version)?.[1] ?? '?'
    const qemuVersion = /Running hypervisor: QEMU ([\d.]+)/.exec(version)?.[1] ?? '?'
    // libvirt probes an emulator path the first time it sees it: not part of any storm.
    for (const emu of [h.PLAIN_QEMU, front, agentFront]) {
      const r = await h.virsh(['domcapabilities', '--emulatorbin', emu, '--virttype', 'qemu', '--arch', 'x86_64'])
      if (r.code !== 0) throw new Error(`virsh domcapabilities ${emu}: ${r.stderr.trim()}`)
    }

    let seq = 0
    let decisionMs = { 'qemu-kube': [], agent: [] } // each path's own durationMs (its start to the decision) per start of a size
    // Which path served each start of a kind, over the whole section: an agent start that fell back shows as standalone.
    const paths = { 'qemu-kube': {}, agent: {} }
    /** One storm; returns seconds to all running. */
    async function storm(kind, n) {
      const tag = `qk-storm-${process.pid}-${seq++}`
      const vms = Array.from({ length: n }, (_, i) => ({ name: `${tag}-${kind}-${i}`, uuid: randomUUID(), vmName: `storm-${i}`, uid: UID_FIRST + i }))
      const pods = []
      try {
        // Both storms get the same N pods, so the node is in the same state (N idle launchers)
        // when the clock starts; plain QEMU just does not use them.
        const now = Math.floor(Date.now() / 1000)
        for (const vm of vms) {
          vm.token = await new SignJWT({ vm_name: vm.vmName, qemu_uid: vm.uid }).setProtectedHeader({ alg: 'RS256' }).setIssuer('kubevirt.io/virt-handler')
            .setAudience('qemu-kube').setSubject(vm.uuid).setJti(randomUUID()).setIssuedAt(now).setExpirationTime(now + 600).sign(signer)
        }
        for (let i = 0; i < n; i += 8) { // eight at a time (not timed)
          const made = await Promise.all(vms.slice(i, i + 8).map((vm) => h.makePodmanPod({
            uuid: vm.uuid, name: vm.vmName, token: vm.token, qemuUid: vm.uid, extraArgs: ['-emulator', emulator[kind] ?? front],
          })))
          for (const p of made) {
            pods.push(p)
            live.pods.add(p)
          }
        }
        await Promise.all(vms.map(async (vm) => {
          const xml = h.domainXml({
            name: vm.name, uuid: vm.uuid, emulator: kind === 'plain' ? h.PLAIN_QEMU : emulator[kind], seclabelUid: vm.uid,
            env: kind === 'plain' ? {} : { KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.vmName, KUBEVIRT_SECRET: vm.token },
          })
          const file = `${work}/${vm.name}.xml`
          writeFileSync(file, xml, { mode: 0o600 })
          const r = await h.virsh(['define', file])
          rmSync(file, { force: true })
          if (r.code !== 0) throw new Error(`virsh define ${vm.name}: ${r.stderr.trim()}`)
          live.domains.add(vm.name)
        }))

        await settle()
        const t0 = process.hrtime.bigint()
        const results = await Promise.all(vms.map((vm) => h.virsh(['start', vm.name])))
        const secs = Number(process.hrtime.bigint() - t0) / 1e9

        const failed = results.map((r, i) => [r, vms[i]]).filter(([r]) => r.code !== 0)
        if (failed.length > 0) throw new Error(`${kind} storm of ${n}: ${failed.length} starts failed, first: ${failed[0][1].name}: ${failed[0][0].stderr.trim()}`)
        const pids = vms.map((vm) => h.domainPid(vm.name))
        if (pids.some((p) => p === null) || new Set(pids).size !== n) throw new Error(`${kind} storm of ${n}: not every domain runs with its own pid`)
        if (kind !== 'plain') {
          const cg = (pid) => readFileSync(`/proc/${pid}/cgroup`, 'utf8')
          const uids = (pid) => /^Uid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1].split(/\s+/).map(Number)
          for (const [i, p] of pods.entries()) {
            if (cg(pids[i]) !== cg(p.pid)) throw new Error(`${vms[i].name}: QEMU is not in its pod's cgroups`)
            if (uids(pids[i]).some((u) => u !== vms[i].uid)) throw new Error(`${vms[i].name}: QEMU does not run as its uid ${vms[i].uid}`)
          }
        }
        return secs
      } finally {
        await Promise.all(vms.filter((vm) => live.domains.has(vm.name)).map(async (vm) => {
          await h.destroyAndUndefine(vm.name)
          live.domains.delete(vm.name)
          for (const d of kind === 'plain' ? [] : decisions(`${LOG_DIR}/${vm.name}.log`)) {
            decisionMs[kind].push(d.ms)
            paths[kind][d.path] = (paths[kind][d.path] ?? 0) + 1
          }
          rmSync(`${LOG_DIR}/${vm.name}.log`, { force: true })
        }))
        await Promise.all(pods.map(async (p) => {
          await p.destroy()
          live.pods.delete(p)
        }))
      }
    }

    // Warm-up (page cache, libvirt's first domain): one of each, not counted.
    for (const kind of KINDS) await storm(kind, 1)

    const rows = []
    let verdict = ''
    for (const n of SIZES) {
      const times = { plain: [], 'qemu-kube': [], agent: [] }
      decisionMs = { 'qemu-kube': [], agent: [] }
      for (let r = 0; r < ROUNDS; r++) {
        const order = KINDS.map((_, i) => KINDS[(i + r) % KINDS.length])
        for (const kind of order) times[kind].push(await storm(kind, n))
      }
      const cell = (xs) => `${fmt(median(xs))} (${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))})`
      const ratio = (kind) => median(times[kind]) / median(times.plain)
      const dec = (kind) => `${fmt(median(decisionMs[kind]), 1)} / ${fmt(Math.max(...decisionMs[kind]), 1)}`
      rows.push([String(n), cell(times.plain), cell(times['qemu-kube']), `${fmt(ratio('qemu-kube'))}x`, cell(times.agent), `${fmt(ratio('agent'))}x`,
        dec('qemu-kube'), dec('agent')])
      if (n === AT) {
        const say = (kind, label) => `${label} ${fmt(ratio(kind))}x the plain one (${ratio(kind) <= TARGET[kind] ? 'within' : '**over**'} the ${TARGET[kind]}x target)`
        verdict = `**Verdict**: at ${n} concurrent starts the storm through qemu-kube takes: ${say('agent', 'through the agent')}; ${say('qemu-kube', 'standalone')}.`
      }
    }
    notes.push(`libvirt ${libvirtVersion}, QEMU ${qemuVersion} (TCG), ${cpus().length} CPUs; guests: 64 MiB, 1 vCPU, no disk; `
      + `${ROUNDS} rounds per size, the three rotated (each first in turn); median (min-max) seconds from the first \`virsh start\` `
      + 'to the last one returning with its domain running. Each domain ran as its own uid (DAC seclabel). qemu-kube: every start verified an RS256 token '
      + '(qemu_uid = the domain\'s uid), found its podman pod\'s virt-launcher in /proc, took the uid lease, joined the pod\'s cgroups and namespaces, built QEMU\'s own '
      + 'mount namespace (--mnt=own) and linked QEMU to the launcher; domains and pods were defined and made before the clock started.')
    const served = (kind) => Object.entries(paths[kind]).map(([p, n]) => `${n} by path ${p}`).join(', ')
    notes.push(`Decision lines: standalone emulator ${served('qemu-kube')}; agent emulator ${served('agent')}.`)
    return [head, '', table(['concurrency', 'plain QEMU (s)', 'standalone (s)', 'ratio', 'agent (s)', 'ratio', 'standalone decision ms, median / max', 'agent decision ms, median / max'], rows),
      '', verdict, '', ...notes].join('\n')
  } finally {
    for (const name of live.domains) await h.destroyAndUndefine(name).catch(() => {})
    for (const p of live.pods) await p.destroy().catch(() => {})
    if (agent && agent.exitCode === null) agent.kill('SIGTERM')
    if (startedLibvirt) await h.stopLibvirt()
    for (const f of [front, agentFront]) rmSync(`/var/cache/libvirt/qemu/capabilities/${createHash('sha256').update(f).digest('hex')}.xml`, { force: true })
    rmSync(base, { recursive: true, force: true })
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) console.log(await run())
