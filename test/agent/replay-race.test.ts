// Issue 9: one token, 8 concurrent launches across both paths. Two installs share one config
// (same keys, same state_dir): install A has its agent running, install B has none, so A's
// fronts are served by the agent and B's by the standalone chain, and all race for one jti.
// Exactly one QEMU may run; the other seven are refused.
//
// Which refusals are possible, and why (src/emulator/verify.ts finish(), uid-lease.ts):
// every launch takes the uid's lease lock, then links the jti's record (O_EXCL), then releases.
// - ERR_TOKEN_REPLAYED: the record exists, seen by the early check or by the link (both paths).
// - ERR_UID_IN_USE ("holds its lease lock; the agent does not wait"): only the agent path, and
//   only when a standalone launch holds the lock at that instant (the agent takes it with
//   waitMs 0; the standalone chain waits up to 2 s for it, and then finds the record).
// Same VM, so a committed lease never refuses (checkUidFree lets the same VM take it over).
// Each round is run with a different head start for the standalone fronts (Node's start-up is
// ~100s of ms slower than the agent's answer), and the codes observed are printed.
import t, { type Test } from 'tap'
import { requireRoot } from '../helpers/pod.ts'
import { podmanUnavailable } from '../helpers/podman.ts'
import { agentLaunchSetup, inPod, jtiOf, sleep, startAgent, type Launch } from '../helpers/agent-launch.ts'

if (!requireRoot(t, 'the agent is root, the front setuid root, the pods podman\'s')) process.exit(0)

const allowed = { agent: ['ERR_TOKEN_REPLAYED', 'ERR_UID_IN_USE'], standalone: ['ERR_TOKEN_REPLAYED'] } as const

t.test('one token, 4 launches through the agent and 4 standalone at once: one QEMU, 7 refusals', { skip: podmanUnavailable() ?? false }, async (t) => {
  const h = await agentLaunchSetup(t, { uids: 1 })
  const b = h.twin()
  await startAgent(t, h.inst)
  const vm = h.vm('race')
  const pod = await h.pod(vm, await h.token(vm))
  const seen: string[] = []

  for (const delayMs of [0, 150, 300]) {
    const tok = await h.fresh(vm, pod)
    await t.test(`agent fronts started ${delayMs} ms after the standalone ones`, async (t: Test) => {
      const jti = jtiOf(tok)
      const standalone = Array.from({ length: 4 }, () => h.run(vm, tok, b.front).then((r) => ({ r, via: 'standalone' as const })))
      await sleep(delayMs)
      const viaAgent = Array.from({ length: 4 }, () => h.run(vm, tok).then((r) => ({ r, via: 'agent' as const })))
      const all = await Promise.all([...standalone, ...viaAgent])

      const won = all.filter(({ r }) => r.report !== undefined)
      t.equal(won.length, 1, 'exactly one QEMU ran')
      const w = won[0]!
      t.equal(w.r.code, 0, 'the winner exits 0 (the reporter)')
      t.same({ outcome: w.r.decision?.outcome, path: w.r.decision?.path, jti: w.r.decision?.jti }, { outcome: 'authorised', path: w.via, jti },
        'the winner was authorised by the path its front took')
      inPod(t, w.r, pod, vm, 'the winner')
      t.match(h.recordOf(jti), new RegExp(`^${w.r.pid} \\d+\\n$`), 'the record names the winner, the process that became QEMU')

      for (const { r, via } of all.filter((x) => x !== w)) refused(t, r, via, jti, vm.uid)
      seen.push(`${delayMs} ms: winner ${w.via}; ${all.filter((x) => x !== w).map(({ r, via }) => `${via}:${r.decision?.code}`).sort().join(' ')}`)
    })
  }
  t.comment(`observed: ${seen.join(' | ')}`)
})

function refused(t: Test, r: Launch, via: 'agent' | 'standalone', jti: string, uid: number): void {
  const d = r.decision ?? {}
  t.equal(r.code, 77, `${via}: refused with 77 (${r.stderr.trim().slice(0, 200)})`)
  t.equal(r.report, undefined, `${via}: no QEMU`)
  t.equal(r.stderr.trim().split('\n').length, 1, `${via}: one line on stderr`)
  t.equal(d.path, via, `${via}: refused by its own path`)
  t.equal(d.outcome, 'refused')
  t.ok((allowed[via] as readonly string[]).includes(d.code), `${via}: ${d.code} is one of ${allowed[via].join(', ')}`)
  if (d.code === 'ERR_TOKEN_REPLAYED') t.equal(d.reason, `token jti ${JSON.stringify(jti)} was already used to start a QEMU`)
  else t.equal(d.reason, `another launch for uid ${uid} holds its lease lock; the agent does not wait for it`)
}
