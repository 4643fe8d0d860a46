// Issue 9: 32 launches at once through the resident agent, each for its own VM (own uid, own
// podman pod): every one is authorised by the agent (path agent) and its QEMU (the reporter
// fixture) lands in its own pod's cgroups and namespaces, never a neighbour's.
import t from 'tap'
import { requireRoot } from '../helpers/pod.ts'
import { podmanUnavailable } from '../helpers/podman.ts'
import { agentLaunchSetup, inPod, jtiOf, startAgent } from '../helpers/agent-launch.ts'

if (!requireRoot(t, 'the agent is root, the front setuid root, the pods podman\'s')) process.exit(0)

const N = 32

t.test(`${N} concurrent launches through the agent: all authorised, path agent, each QEMU in its own pod`, { skip: podmanUnavailable() ?? false }, async (t) => {
  const h = await agentLaunchSetup(t, { uids: N })
  const agent = await startAgent(t, h.inst)
  const vms = Array.from({ length: N }, (_, i) => h.vm(`c${i}`))
  const pods = await h.pods(vms, await Promise.all(vms.map((vm) => h.token(vm))), 8)
  const toks = await Promise.all(vms.map((vm, i) => h.fresh(vm, pods[i]!)))

  const runs = await Promise.all(vms.map((vm, i) => h.run(vm, toks[i]!)))

  runs.forEach((r, i) => {
    const what = `launch ${i}`
    t.equal(r.code, 0, `${what}: exit 0 (${r.stderr.trim().slice(0, 300)})`)
    t.ok(r.report, `${what}: the reporter ran`)
    t.same({ msg: r.decision?.msg, outcome: r.decision?.outcome, path: r.decision?.path, jti: r.decision?.jti, pid: r.decision?.pid, target: r.decision?.target?.pid },
      { msg: 'decision', outcome: 'authorised', path: 'agent', jti: jtiOf(toks[i]!), pid: r.pid, target: pods[i]!.pid }, `${what}: the agent's decision, for its own pod`)
    if (r.report) inPod(t, r, pods[i]!, vms[i]!, what)
  })
  // The replay records name the front that became each QEMU (the agent's consumer).
  for (const [i, r] of runs.entries()) t.match(h.recordOf(jtiOf(toks[i]!)), new RegExp(`^${r.pid} \\d+\\n$`), `launch ${i}: its record names its front`)
  // Distinct QEMUs in distinct pods: no two reports share a net namespace.
  t.equal(new Set(runs.map((r) => String(r.report?.ns?.net))).size, N, 'N distinct net namespaces')
  // The agent logged one authorised decision per launch (its log names the front as peer), and
  // no other. It replies first and logs after, so the last lines may follow the fronts' exit.
  const logged = () => agent.log().split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((l) => l.msg === 'decision')
  for (const end = Date.now() + 5000; logged().length < N && Date.now() < end;) await new Promise((r) => setTimeout(r, 20))
  const ours = new Set(runs.map((r) => r.pid))
  t.same(logged().filter((d) => ours.has(d.peer)).map((d) => d.outcome), Array(N).fill('authorised'), `the agent logged ${N} authorised decisions`)
  t.same(new Set(logged().filter((d) => ours.has(d.peer)).map((d) => d.peer)), ours, 'one per front')
  t.same(logged().filter((d) => !ours.has(d.peer)), [], 'and no other decision')
})
