// Issue 9: the agent SIGKILLed while 8 launches are in flight (8 VMs, each its own uid and podman
// pod; the reporter fixture as a host QEMU). Whatever the kill interrupts, every launch is either
// authorised through one path (its decision line says agent, or standalone after the fallback)
// or refused with a code, and none is half done: every QEMU that ran is in its own pod's cgroups
// and namespaces, and no jti is burnt without a QEMU (a launch that ran none has no record, or
// docs/CHAIN.md section 3's "recorded but not answered" record naming its own front, which then
// would have run QEMU).
//
// The kill is made to land mid-flight by order, not timing: the agent is SIGSTOPped, the 8 fronts
// started, and each is seen blocked in recvmsg on its connection (/proc/PID/syscall 47: its
// request sent, its reply awaited) before the agent is killed (1) at once, or (2) SIGCONTed and
// killed on the first decision it logs for one of them (it logs after its reply, so that one was
// answered; the others are queued, or being verified, or answered in the same instant).
import t, { type Test } from 'tap'
import type { ChildProcess } from 'node:child_process'
import { requireRoot } from '../helpers/pod.ts'
import { podmanUnavailable, type PodmanPod } from '../helpers/podman.ts'
import {
  agentLaunchSetup, blockedIn, inPod, jtiOf, sleep, startAgent, type AgentLaunch, type AgentVm, type Launch,
} from '../helpers/agent-launch.ts'

if (!requireRoot(t, 'the agent is root, the front setuid root, the pods podman\'s')) process.exit(0)

const N = 8
const RECVMSG = '47' // x86_64

/** Starts the 8 fronts against the stopped agent; resolves once each waits for its reply. */
async function launchAgainstStopped(t: Test, h: AgentLaunch, agent: ChildProcess, vms: readonly AgentVm[], toks: readonly string[]) {
  agent.kill('SIGSTOP')
  const runs = vms.map((vm, i) => h.run(vm, toks[i]!))
  for (const end = Date.now() + 10_000; ;) {
    const waiting = runs.filter((r) => blockedIn(r.pid)?.syscall === RECVMSG).length
    if (waiting === N) break
    if (Date.now() > end) throw new Error(`only ${waiting} of ${N} fronts wait for the agent's reply after 10 s`)
    await sleep(10)
  }
  t.pass(`all ${N} fronts sent their request and wait in recvmsg`)
  return runs
}

/** What no launch may be: half done. Returns how each ended. */
function noneHalfDone(t: Test, h: AgentLaunch, runs: readonly Launch[], pods: readonly PodmanPod[], vms: readonly AgentVm[], toks: readonly string[]) {
  return runs.map((r, i) => {
    const what = `launch ${i}`
    const jti = jtiOf(toks[i]!)
    const d = r.decision ?? {}
    t.equal(d.msg, 'decision', `${what}: ends in a decision line`)
    t.equal(d.jti, jti, `${what}: for its own token`)
    if (r.report !== undefined) {
      t.equal(r.code, 0, `${what}: QEMU ran and exited 0`)
      t.equal(d.outcome, 'authorised', `${what}: authorised`)
      t.ok(d.path === 'agent' || d.path === 'standalone', `${what}: through one path (${d.path})`)
      inPod(t, r, pods[i]!, vms[i]!, what)
      t.match(h.recordOf(jti), new RegExp(`^${r.pid} \\d+\\n$`), `${what}: its record names its front, which became QEMU`)
      return d.path === 'agent' ? 'agent' : `standalone ${d.agent}`
    }
    t.equal(d.outcome, 'refused', `${what}: no QEMU, so refused`)
    t.match(d.code, /^ERR_[A-Z_]+$/, `${what}: with a code`)
    t.equal(r.code, 77, `${what}: 77`)
    t.equal(h.recordOf(jti), null, `${what}: no QEMU ran, so its jti is not burnt`)
    return `refused ${d.code}`
  })
}

t.test(`the agent killed with ${N} launches in flight`, { skip: podmanUnavailable() ?? false }, async (t) => {
  const h = await agentLaunchSetup(t, { uids: N })
  const vms = Array.from({ length: N }, (_, i) => h.vm(`f${i}`))
  const pods = await h.pods(vms, await Promise.all(vms.map((vm) => h.token(vm))), 8)
  let toks: string[] = []
  const fresh = async () => {
    toks = await Promise.all(vms.map((vm, i) => h.fresh(vm, pods[i]!)))
  }
  await fresh()

  await t.test('killed before it accepted any: all 8 fall back to standalone (down:ECONNRESET) and run', async (t) => {
    const agent = await startAgent(t, h.inst)
    const runs = await launchAgainstStopped(t, h, agent.child, vms, toks)
    agent.child.kill('SIGKILL')
    const done = await Promise.all(runs)
    const how = noneHalfDone(t, h, done, pods, vms, toks)
    // Connections still in the listen queue are reset when the killed agent's socket closes.
    t.same(how, Array(N).fill('standalone down:ECONNRESET'), 'every launch: standalone after the agent reset its connection')
    t.notOk(agent.log().split('\n').some((l) => l.includes('"msg":"decision"') && done.some((r) => l.includes(`"peer":${r.pid}`))),
      'the agent decided none of them')
  })

  await fresh()
  await t.test('killed on its first decision: the rest fall back, nothing half done', async (t) => {
    const agent = await startAgent(t, h.inst) // unlinks the killed agent's stale socket
    const runs = await launchAgainstStopped(t, h, agent.child, vms, toks)
    const ours = new Set(runs.map((r) => r.pid))
    let line = ''
    let killedAfter: number | undefined
    // Killed synchronously in the handler that first sees a decision for one of ours.
    agent.child.stdout!.on('data', (b: Buffer) => {
      line += b.toString()
      if (killedAfter !== undefined) return
      for (const l of line.split('\n').slice(0, -1)) {
        const peer = /"msg":"decision"/.test(l) ? (JSON.parse(l) as { peer?: number }).peer : undefined
        if (peer !== undefined && ours.has(peer)) {
          agent.child.kill('SIGKILL')
          killedAfter = peer
          return
        }
      }
    })
    agent.child.kill('SIGCONT')
    const done = await Promise.all(runs)
    t.ok(killedAfter !== undefined, 'the agent logged a decision for one of them and was killed there')
    const how = noneHalfDone(t, h, done, pods, vms, toks)
    const tally = how.reduce<Record<string, number>>((a, k) => ({ ...a, [k]: (a[k] ?? 0) + 1 }), {})
    t.comment(`how the ${N} ended: ${JSON.stringify(tally)}`)
    t.ok(Object.keys(tally).every((k) => /^(agent|standalone down:(EOF|ECONNRESET)|refused ERR_[A-Z_]+)$/.test(k)),
      'each: served by the agent, or standalone after the agent went down (EOF or ECONNRESET), or refused')
    t.ok((tally['agent'] ?? 0) < N, 'the kill landed mid-flight: the agent did not serve all of them')
    t.equal(Object.keys(tally).filter((k) => k.startsWith('refused')).length, 0,
      'none refused: a record or lease the agent left names the front that falls back, which takes it as its own')
  })
})
