// Issue 10 item 5: an upgrade while VMs start. Two builds of the tree (A, the "old", and B, the
// "new": initcontainer/make-stage.sh, what the init container image carries) for one temp prefix;
// A installed, the resident agent of that tree running, then 8 workers each start the installed
// setuid front as their VM's uid against their own podman pod (reporter fixture as QEMU), one
// launch after another, while the test re-runs `scripts/install.sh --from-stage` (the init
// container's install step, with the very tree it lays out): B with the agent up; then, after a
// SIGTERM to the agent, A, B, A with every launch on the standalone chain; then the agent started
// again from the installed tree, and B for good.
// Every launch must end in QEMU in its pod (authorised, path agent or standalone, the decision
// line says which), never a refusal, a half-done start or a crash; the tree left is B's.
// Here rather than test/e2e/: no libvirt is involved (the front is run as libvirt runs it), and
// it is about the install, not a domain. Root, podman and the launcher image only.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import { SignJWT } from 'jose'
import { FIXTURES, REPO, toml, type Installed } from '../helpers/install.ts'
import { gidOf } from '../helpers/ids.ts'
import { GROUP, runFront, sleep, type AgentVm, type Launch } from '../helpers/agent-launch.ts'
import { startAgent, type RunningAgent } from '../helpers/agent-launch.ts'
import { cleanupStale, makePodmanPod, podmanUnavailable, rotateToken, type PodmanPod } from '../helpers/podman.ts'
import { AUD, ISS, rsaKey, tempDir, writeKey } from '../helpers/tokens.ts'

const WORKERS = 8
const why = process.getuid?.() !== 0 ? `not root (uid ${process.getuid?.()})` : podmanUnavailable()
if (why) t.test('upgrade with launches in flight', { skip: why }, () => {})
else t.test('upgrade with launches in flight', { timeout: 900_000 }, storm)

interface Ran { code: number; stdout: string; stderr: string; ms: number }
const run = (cmd: string, args: readonly string[]): Promise<Ran> => {
  const t0 = Date.now()
  return new Promise((res) => execFile(cmd, args, { encoding: 'utf8', maxBuffer: 16 << 20, timeout: 600_000 }, (err, stdout, stderr) =>
    res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr, ms: Date.now() - t0 })))
}

interface Attempt extends Launch { worker: number; at: number; ms: number }

async function storm(t: Test) {
  await cleanupStale()
  // The prefix is compiled into both builds, so it is made first (0755: the VM uids reach the front).
  const base = mkdtempSync('/var/tmp/qk-upgrade-')
  chmodSync(base, 0o755)
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  const prefix = `${base}/prefix`
  const sysconfdir = `${base}/etc`
  const inst: Installed = {
    prefix, sysconfdir, front: `${prefix}/bin/qemu-kube`, configPath: `${sysconfdir}/qemu-kube.conf`,
    writeConfig() { throw new Error('not used') },
  }
  const stage = async (name: string) => {
    const r = await run('bash', [`${REPO}/initcontainer/make-stage.sh`, '--prefix', prefix, '--sysconfdir', sysconfdir, '--out', `${base}/${name}`])
    if (r.code !== 0) throw new Error(`make-stage ${name}: ${r.stderr}`)
    return r.ms
  }
  const buildMs = [await stage('stage-a'), await stage('stage-b')]
  t.comment(`two builds (make-stage.sh): ${buildMs.map((ms) => (ms / 1000).toFixed(1)).join(' s, ')} s`)

  const key = await rsaKey()
  const pub = writeKey(tempDir(t, 'qk-up-keys-'), 'signing.pem', key.pem)
  // Above agent-launch.ts's blocks (40000..52799) and the e2e range (20000..29999).
  const uidFirst = 56000 + (process.pid % 200) * 16
  const config = toml({
    token_public_keys: [pub], vm_uid_range: [uidFirst, uidFirst + WORKERS - 1], pod_link_socket: '',
    qemu_binary: `${FIXTURES}/reporter`, qemu_binary_from: 'host', probe_qemu_binary: `${FIXTURES}/reporter`,
    state_dir: `${tempDir(t, 'qk-up-state-')}/state`,
  })
  const configFile = `${base}/qemu-kube.conf`
  await run('sh', ['-c', 'printf %s "$1" > "$2"', 'sh', config, configFile])
  const install = (name: string) => run('bash', [`${REPO}/scripts/install.sh`, '--from-stage', `${base}/${name}`, '--prefix', prefix,
    '--sysconfdir', sysconfdir, '--group', GROUP, '--config', configFile, '--replace-config'])
  const first = await install('stage-a')
  t.equal(first.code, 0, `install A: ${first.stderr}`)

  // koffi's directory stays, its files are replaced (a swap of the directory left a moment with no koffi.node).
  const nm = `${prefix}/lib/qemu-kube/node_modules`
  const koffiNode = `${nm}/@koromix/koffi-linux-${process.arch}/linux_${process.arch}/koffi.node`
  const before = { dir: statSync(nm).ino, file: statSync(koffiNode).ino }

  let agent: RunningAgent = await startAgent(t, inst)
  const vms: AgentVm[] = Array.from({ length: WORKERS }, (_, i) => ({ uuid: randomUUID(), name: `up-${i}`, uid: uidFirst + i }))
  let jti = 0
  const token = (vm: AgentVm) => {
    const now = Math.floor(Date.now() / 1000)
    return new SignJWT({ iss: ISS, aud: AUD, sub: vm.uuid, vm_name: vm.name, qemu_uid: vm.uid, jti: `up-${process.pid}-${jti++}-${randomUUID()}`, iat: now, exp: now + 60 })
      .setProtectedHeader({ alg: 'RS256' }).sign(key.privateKey)
  }
  const pods: PodmanPod[] = []
  for (let i = 0; i < WORKERS; i += 4) {
    pods.push(...await Promise.all(vms.slice(i, i + 4).map(async (vm) => {
      const p = await makePodmanPod({ uuid: vm.uuid, name: vm.name, token: await token(vm), qemuUid: vm.uid })
      t.teardown(() => p.destroy())
      return p
    })))
  }

  // The storm: each worker one launch at a time (its uid's lease allows one QEMU), a fresh token
  // each (rotated into its pod as the kubelet would), until the upgrade is over.
  const t0 = Date.now()
  const attempts: Attempt[] = []
  let stop = false
  const worker = async (i: number) => {
    const vm = vms[i]!
    while (!stop) {
      const tok = await token(vm)
      rotateToken(pods[i]!, tok)
      const at = Date.now() - t0
      const r = await runFront(inst.front, vm, tok)
      attempts.push({ ...r, worker: i, at, ms: Date.now() - t0 - at })
      await sleep(20)
    }
  }
  const workers = Array.from({ length: WORKERS }, (_, i) => worker(i))

  // The upgrade, while those run: B with the agent up; the agent stopped (SIGTERM); A (a
  // rollback), B, A with every launch on the standalone chain, which reads the most files of the
  // tree (node, bundle, code cache, koffi); the agent started again from the tree then
  // installed; B for good, with the agent up.
  const events: string[] = []
  const step = async (what: string, f: () => Promise<unknown>) => {
    const at = Date.now() - t0
    await f()
    events.push(`${what} ${at}-${Date.now() - t0} ms`)
  }
  const installs: Ran[] = []
  const installStep = (name: string) => step(`install ${name.slice(-1).toUpperCase()}`, async () => installs.push(await install(name)))
  await sleep(1500)
  await installStep('stage-b')
  await sleep(500)
  await step('agent SIGTERM', async () => t.equal(await agent.stop('SIGTERM'), 0, 'the agent exits 0 on SIGTERM'))
  for (const s of ['stage-a', 'stage-b', 'stage-a']) {
    await sleep(300)
    await installStep(s)
  }
  await sleep(300)
  await step('agent started (tree A)', async () => { agent = await startAgent(t, inst) })
  await sleep(500)
  await installStep('stage-b')
  await sleep(1500)
  stop = true
  await Promise.all(workers)
  t.comment(`timeline: ${events.join('; ')}`)
  for (const [i, r] of installs.entries()) t.equal(r.code, 0, `install ${i + 1} during the storm (${r.ms} ms): ${r.stderr}`)

  const byPath: Record<string, number> = {}
  const bad = attempts.filter((a) => {
    const d = a.decision
    const ok = a.code === 0 && a.report !== undefined && d?.msg === 'decision' && d.outcome === 'authorised'
      && (d.path === 'agent' || d.path === 'standalone') && a.report.uid === vms[a.worker]!.uid && a.report.pid === a.pid
    if (ok) {
      const k = d.path === 'standalone' ? `standalone(${d.agent})` : 'agent'
      byPath[k] = (byPath[k] ?? 0) + 1
    }
    return !ok
  })
  const ms = attempts.map((a) => a.ms).sort((x, y) => x - y)
  t.comment(`${attempts.length} launches by ${WORKERS} workers in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${JSON.stringify(byPath)}; `
    + `launch p50 ${ms[Math.floor(ms.length / 2)]} ms, max ${ms.at(-1)} ms`)
  for (const a of bad.slice(0, 10)) t.comment(`worker ${a.worker} at ${a.at} ms: exit ${a.code}: ${a.stderr.trim().slice(-600)}`)
  t.equal(bad.length, 0, 'every launch ended in QEMU (the reporter) in its pod, authorised by the agent or the standalone chain')
  t.ok(attempts.length >= 5 * WORKERS, `the storm ran (${attempts.length} launches)`)
  t.ok(byPath.agent! > 0, 'some launches went through the agent')
  t.ok(Object.keys(byPath).some((k) => k.startsWith('standalone(')), 'some went standalone while the agent was away')
  // Launches straddled each install: begun before its last rename, ended after its first.
  for (const e of events.filter((x) => x.startsWith('install'))) {
    const [from, to] = /(\d+)-(\d+) ms$/.exec(e)!.slice(1).map(Number) as [number, number]
    const across = attempts.filter((a) => a.at <= to && a.at + a.ms >= from).length
    t.ok(across >= WORKERS, `${e}: ${across} launches in flight across it`)
  }

  // The tree left is B's, every file by rename (no temporary left), the front 4755 root:GROUP.
  const same = async (a: string, b: string) => (await run('cmp', ['-s', a, b])).code === 0
  t.ok(await same(`${base}/stage-b/native/front`, inst.front), 'the front is B\'s')
  t.ok(await same(`${base}/stage-b/qemu-kube.cjs`, `${prefix}/lib/qemu-kube/qemu-kube.cjs`), 'the bundle is B\'s')
  const st = statSync(inst.front)
  t.same([st.mode.toString(8), st.uid, st.gid], ['104755', 0, gidOf(GROUP)], 'the front: 4755 root:GROUP')
  t.equal(statSync(nm).ino, before.dir, 'node_modules was never swapped: the same directory')
  t.not(statSync(koffiNode).ino, before.file, 'koffi.node in it was replaced (by rename)')
  const left = await run('find', [prefix, sysconfdir, '-name', '.*.new'])
  t.equal(left.stdout, '', 'no temporary file left')
  t.notOk(existsSync(`${prefix}/lib/qemu-kube/.node_modules.old`), 'no old module tree left')
  t.equal(readFileSync(inst.configPath, 'utf8'), config, 'the config is the one shipped')
  await agent.stop('SIGTERM')
}
