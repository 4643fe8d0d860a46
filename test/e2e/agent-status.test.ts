// Issue 9: `qemu-kube status` and `qemu-kube metrics` against two running VMs. Real libvirtd
// starts two domains through qemu-kube with the agent serving (started here, whatever
// QK_TEST_TRANSPORT says), each a long-running QEMU in its own podman pod; then, as root through
// the installed front: status --output json lists both with uuid, name, QEMU pid (libvirt's
// domain pid), launcher pid (the pod's), uid, and CPU and memory cross-checked with the pod's
// cgroup files read just before and just after; the human table names both; metrics counts the
// agent's authorised decisions and its latency histogram.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { domainPid, requireLibvirt, setupE2e, startAgent, type Pod, type Vm } from '../helpers/agent-e2e.ts'

if (!requireLibvirt(t)) process.exit(0)

const e = await setupE2e(t, 'ast')
const agent = e.agent ?? await startAgent(t, e.inst)

function front(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => execFile(e.inst.front, args, { timeout: 30_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
    res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })))
}

/**
 * The pod's CPU and memory read the kubelet way (src/emulator/status/cgroup-usage.ts says which
 * files): on this hybrid host cpuacct and memory are v1 controllers, so their v1 directories of
 * the launcher's container; v2 only where the controller has no v1 hierarchy.
 */
function podReads(p: Pod): { cpu: bigint; cpuDir: string; mem: bigint; memDir: string } {
  const v1 = (c: string) => Object.entries(p.cgroups.v1).find(([k]) => k.split(',').includes(c))?.[1]
  const num = (f: string) => BigInt(readFileSync(f, 'utf8').trim())
  const stat = (f: string, k: string) => BigInt(new RegExp(`^${k} (\\d+)$`, 'm').exec(readFileSync(f, 'utf8'))![1]!)
  const cpuDir = v1('cpuacct') ?? p.cgroups.v2!
  const cpu = v1('cpuacct') ? num(`${cpuDir}/cpuacct.usage`) : stat(`${cpuDir}/cpu.stat`, 'usage_usec') * 1000n
  const memDir = v1('memory') ?? p.cgroups.v2!
  // Usage first, then memory.stat: the order the status code reads them in.
  const usage = v1('memory') ? num(`${memDir}/memory.usage_in_bytes`) : num(`${memDir}/memory.current`)
  const inactive = stat(`${memDir}/memory.stat`, v1('memory') ? 'total_inactive_file' : 'inactive_file')
  return { cpu, cpuDir, mem: usage > inactive ? usage - inactive : 0n, memDir }
}

// v1's memory.usage_in_bytes is fuzzy by design (cgroup-v1 memory.txt 5.5): charges are taken
// from the page counter in batches of MEMCG_CHARGE_BATCH = 64 pages and cached per CPU, so the
// counter can be ahead of the pages in use by up to 64 pages on each CPU (QUIET: how far two
// reads of a pod whose QEMU is idle may differ; observed here: exactly 128 pages on 2 CPUs). The
// status value, read at another instant, must lie within the two reads widened by that stock
// plus the QUIET the two reads themselves may differ by (a running QEMU still charges a little).
const BATCH = 64n * 4096n
const CPUS = BigInt(readFileSync('/proc/cpuinfo', 'utf8').split('\n').filter((l) => l.startsWith('processor')).length)
const QUIET = BATCH * CPUS
const MEM_TOLERANCE = 2n * QUIET

t.test('two running VMs: status (json and table) and metrics through the agent', async (t: Test) => {
  const vms: Vm[] = [e.vm('a'), e.vm('b')]
  const pods: Pod[] = []
  for (const vm of vms) {
    const tok = await e.token(vm)
    pods.push(await e.pod(vm, tok))
    const r = await e.start(vm, tok)
    t.equal(r.code, 0, `virsh start ${vm.name}: ${r.stderr}`)
  }
  const qemuPids = vms.map((vm) => domainPid(vm.name))
  t.ok(qemuPids.every((p) => p !== null), 'libvirt has a pid for both domains')
  const served = agent.log().split('\n').filter((l) => l.includes('"msg":"decision"')).map((l) => JSON.parse(l))
    .filter((d) => vms.some((vm) => d.vm?.uuid === vm.uuid))
  t.same(served.map((d) => [d.outcome, d.path]), [['authorised', 'agent'], ['authorised', 'agent']], 'the agent authorised both launches, and only those')

  // A domain just started is still booting: its memory moves by more than the batch between two
  // reads. The cross-check needs a quiet window, so the snapshot (read, status, read) is taken
  // again, up to 20 times 250 ms apart, until both pods' own reads agree within QUIET.
  let before = pods.map(podReads)
  let json = await front(['status', '--output', 'json'])
  let after = pods.map(podReads)
  const quiet = () => before.every((b, i) => (b.mem > after[i]!.mem ? b.mem - after[i]!.mem : after[i]!.mem - b.mem) <= QUIET)
  let tries = 1
  for (; !quiet() && tries < 20; tries++) {
    await new Promise((r) => setTimeout(r, 250))
    before = pods.map(podReads)
    json = await front(['status', '--output', 'json'])
    after = pods.map(podReads)
  }
  t.ok(quiet(), `a quiet snapshot (${tries} taken)`)
  t.equal(json.code, 0, json.stderr)
  const stats = (JSON.parse(json.stdout) as { stats: Array<Record<string, any>> }).stats
  t.equal(stats.length, 2, 'exactly the two running VMs')
  vms.forEach((vm, i) => {
    const s = stats.find((x) => x.qemu_kube.uuid === vm.uuid)
    t.ok(s, `${vm.name} is listed`)
    if (!s) return
    const q = s.qemu_kube
    t.same({ uuid: q.uuid, name: q.name, uid: q.uid, qemuPid: q.qemu.pid, helperPid: q.qemu.helper_pid, qemuUid: q.qemu.uid, launcher: q.launcher, problems: q.problems },
      { uuid: vm.uuid, name: vm.vmName, uid: vm.uid, qemuPid: qemuPids[i], helperPid: null, qemuUid: vm.uid, launcher: { pid: pods[i]!.pid, alive: true }, problems: [] },
      `${vm.name}: uuid, name, uid, QEMU pid = libvirt's, launcher = the pod's, no problems`)
    t.same(s.attributes, { id: vm.uuid, metadata: { name: vm.vmName }, labels: { 'qemu-kube/vm-uuid': vm.uuid, 'qemu-kube/uid': String(vm.uid), 'qemu-kube/vm-name': vm.vmName } },
      `${vm.name}: CRI attributes`)
    const b = before[i]!
    const a = after[i]!
    t.same(q.cgroup_dirs, { cpu: { source: b.cpuDir === pods[i]!.cgroups.v2 ? 'v2' : 'v1', dir: b.cpuDir }, memory: { source: b.memDir === pods[i]!.cgroups.v2 ? 'v2' : 'v1', dir: b.memDir } },
      `${vm.name}: read from the pod's own cgroup directories`)
    const cpu = BigInt(s.cpu.usage_core_nano_seconds.value)
    t.ok(b.cpu <= cpu && cpu <= a.cpu, `${vm.name}: usage_core_nano_seconds ${cpu} between the reads before (${b.cpu}) and after (${a.cpu})`)
    t.ok(a.cpu > 0n, `${vm.name}: the pod used CPU (QEMU runs in it)`)
    const mem = BigInt(s.memory.working_set_bytes.value)
    const lo = (b.mem < a.mem ? b.mem : a.mem) - MEM_TOLERANCE
    const hi = (b.mem > a.mem ? b.mem : a.mem) + MEM_TOLERANCE
    t.ok(lo <= mem && mem <= hi, `${vm.name}: working_set_bytes ${mem} within [${lo}, ${hi}] (reads ${b.mem}, ${a.mem} +- ${MEM_TOLERANCE})`)
    t.ok(mem > 16n << 20n, `${vm.name}: a QEMU's working set (over 16 MiB) is counted in its pod`)
    for (const k of ['cpu', 'memory'] as const) {
      const ts = BigInt(s[k].timestamp)
      t.ok(ts > BigInt(Date.now() - 60_000) * 1_000_000n && ts <= BigInt(Date.now()) * 1_000_000n, `${vm.name}: ${k} timestamp is now, in ns`)
    }
  })

  const table = await front(['status'])
  t.equal(table.code, 0, table.stderr)
  const lines = table.stdout.split('\n')
  t.match(lines[0], /^UUID +NAME +UID +QEMU +LAUNCHER +UPTIME +CPU +MEMORY +CGROUP$/, 'the table header')
  vms.forEach((vm, i) => {
    const row = lines.find((l) => l.startsWith(`${vm.uuid} `))
    t.ok(row, `the table has a row for ${vm.name}`)
    t.match(row, new RegExp(`^${vm.uuid} +${vm.vmName} +${vm.uid} +${qemuPids[i]} +${pods[i]!.pid} +`), `${vm.name}: uuid, name, uid, QEMU pid, launcher pid`)
  })
  t.equal(lines.filter((l) => /^ {2}namespaces /.test(l)).length, 2, 'one namespaces line per VM')

  const m = await front(['metrics'])
  t.equal(m.code, 0, m.stderr)
  const sample = (re: RegExp) => Number(re.exec(m.stdout)?.[1] ?? NaN)
  const authorised = sample(/^qemu_kube_decisions_total\{outcome="authorised",code="OK",path="agent"\} (\d+)$/m)
  t.ok(authorised >= 2, `decisions_total{authorised,OK,agent} = ${authorised} >= 2`)
  // Only authorised launches feed the histogram, and this agent served every one of them.
  t.equal(sample(/^qemu_kube_launch_duration_seconds_count\{path="agent"\} (\d+)$/m), authorised, 'the latency histogram counts each authorised launch')
  t.equal(sample(/^qemu_kube_launch_duration_seconds_bucket\{le="\+Inf",path="agent"\} (\d+)$/m), authorised, 'its +Inf bucket too')
})
