// The agent's metrics: the exposition text, bounded labels, own registry, and prom-client kept
// off the launch path.
import t from 'tap'
import { build } from 'esbuild'
import { resolve } from 'node:path'
import { register as globalRegistry } from 'prom-client'
import { LAUNCH_BUCKETS, createMetrics, type DecisionLabels } from '../../src/emulator/status/metrics.ts'

const REPO = resolve(import.meta.dirname, '../..')

t.test('decisions are counted by outcome, code and path; authorised launches feed the histogram', async (t) => {
  const m = createMetrics()
  m.observeDecision({ outcome: 'authorised', code: 'OK', path: 'agent' }, 0.004)
  m.observeDecision({ outcome: 'authorised', code: 'OK', path: 'agent' }, 0.03)
  m.observeDecision({ outcome: 'refused', code: 'ERR_TOKEN_EXPIRED', path: 'standalone' }, 0.2)
  m.observeDecision({ outcome: 'probe', code: 'OK', path: 'agent' }, 0.001)
  const text = await m.metricsText()
  const lines = text.split('\n')
  t.same(lines.filter((l) => l.startsWith('qemu_kube_decisions_total')), [
    'qemu_kube_decisions_total{outcome="authorised",code="OK",path="agent"} 2',
    'qemu_kube_decisions_total{outcome="refused",code="ERR_TOKEN_EXPIRED",path="standalone"} 1',
    'qemu_kube_decisions_total{outcome="probe",code="OK",path="agent"} 1',
  ])
  t.ok(lines.includes('# TYPE qemu_kube_decisions_total counter'))
  t.ok(lines.includes('# TYPE qemu_kube_launch_duration_seconds histogram'))
  const h = lines.filter((l) => l.startsWith('qemu_kube_launch_duration_seconds'))
  t.ok(h.includes('qemu_kube_launch_duration_seconds_bucket{le="0.002",path="agent"} 0'))
  t.ok(h.includes('qemu_kube_launch_duration_seconds_bucket{le="0.005",path="agent"} 1'))
  t.ok(h.includes('qemu_kube_launch_duration_seconds_bucket{le="0.035",path="agent"} 2'))
  t.ok(h.includes('qemu_kube_launch_duration_seconds_bucket{le="+Inf",path="agent"} 2'))
  t.ok(h.includes('qemu_kube_launch_duration_seconds_count{path="agent"} 2'))
  t.ok(h.includes('qemu_kube_launch_duration_seconds_sum{path="agent"} 0.034'))
  t.notOk(h.some((l) => l.includes('path="standalone"')), 'refusals and probes are not launches')
  t.match(m.contentType, /^text\/plain; version=0\.0\.4/)
})

t.test('buckets resolve 1 to 200 ms', async (t) => {
  t.equal(LAUNCH_BUCKETS[0], 0.001)
  t.ok(LAUNCH_BUCKETS.includes(0.2))
  t.ok(LAUNCH_BUCKETS.filter((b) => b >= 0.001 && b <= 0.2).length >= 8)
})

t.test('each Metrics has its own registry, never prom-client\'s global one', async (t) => {
  const a = createMetrics()
  const b = createMetrics()
  a.observeDecision({ outcome: 'probe', code: 'OK', path: 'agent' }, 0)
  t.notMatch(await b.metricsText(), /qemu_kube_decisions_total\{/)
  t.notMatch(await globalRegistry.metrics(), /qemu_kube/)
})

t.test('a label outside the closed sets is a bug in the caller: ERR_INTERNAL returned (not thrown), counted apart, no decision recorded', async (t) => {
  const m = createMetrics()
  const ok: DecisionLabels = { outcome: 'refused', code: 'ERR_TOKEN_REPLAYED', path: 'agent' }
  const cases: [Partial<DecisionLabels>, number, string][] = [
    [{ outcome: 'maybe' as 'probe' }, 0.01, 'observeDecision: unexpected outcome "maybe"'],
    [{ code: 'ERR_MADE_UP' }, 0.01, 'observeDecision: unexpected code "ERR_MADE_UP"'],
    [{ code: 'x'.repeat(300) }, 0.01, `observeDecision: unexpected code "${'x'.repeat(300)}`.slice(0, 200)],
    [{ path: 'elsewhere' as 'agent' }, 0.01, 'observeDecision: unexpected path "elsewhere"'],
    [{}, -1, 'observeDecision: unexpected duration -1'],
    [{}, Number.NaN, 'observeDecision: unexpected duration NaN'],
    [{ code: 'OK' }, 0.01, 'observeDecision: unexpected code OK with outcome refused'],
    [{ outcome: 'authorised' }, 0.01, 'observeDecision: unexpected code ERR_TOKEN_REPLAYED with outcome authorised'],
  ]
  for (const [more, s, message] of cases) {
    let err: unknown
    t.doesNotThrow(() => { err = m.observeDecision({ ...ok, ...more }, s) })
    t.match(err, { name: 'QkError', code: 'ERR_INTERNAL' })
    t.equal((err as Error).message, message, message.slice(0, 60))
  }
  const text = await m.metricsText()
  t.notMatch(text, /qemu_kube_decisions_total\{/)
  t.notMatch(text, /qemu_kube_launch_duration_seconds_count\{/)
  t.ok(text.split('\n').includes(`qemu_kube_metrics_invalid_observations_total ${cases.length}`))
  t.equal(m.observeDecision(ok, 0.01), undefined, 'a valid one returns nothing')
})

t.test('the launch bundle (src/emulator/main.ts) pulls in neither prom-client nor the status code', async (t) => {
  const r = await build({ entryPoints: [`${REPO}/src/emulator/main.ts`], bundle: true, platform: 'node', format: 'cjs', write: false,
    metafile: true, logLevel: 'silent', external: ['*.node'] })
  const inputs = Object.keys(r.metafile.inputs)
  t.ok(inputs.some((i) => i.includes('src/emulator/main.ts')), 'the metafile lists the inputs')
  t.same(inputs.filter((i) => i.includes('node_modules/prom-client') || i.includes('src/emulator/status/')), [])
})
