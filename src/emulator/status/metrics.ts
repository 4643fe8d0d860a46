// The agent's Prometheus metrics: how many decisions by outcome, code and path, and how long an
// authorised launch took. A Registry of our own (never prom-client's global one, which any
// dependency may fill); served on the agent's root-only socket as `op=metrics` (CHAIN.md
// section 3) and printed by `qemu-kube metrics`, so the numbers are current at each scrape and
// no file on the node has to be trusted or kept fresh. Why not a node-exporter textfile first:
// it must be rewritten on every decision or on a timer (stale in between, disk writes beside
// each launch) and needs a directory shared with node-exporter; textfile.ts writes one
// atomically for nodes whose Prometheus scrapes only node-exporter (`qemu-kube metrics` output).
//
// Only the agent imports this file: prom-client must not be loaded on the launch path
// (src/emulator/main.ts), test/emulator/status-metrics.test.ts checks the launch bundle.
//
// Label values are a closed set (outcome, our error codes, the two paths), so a series per
// label set stays bounded whatever a peer sends; anything else is a bug in the caller. Such an
// observation is not recorded but counted (qemu_kube_metrics_invalid_observations_total) and
// returned as an ERR_INTERNAL for the caller's log, never thrown: the agent observes before it
// sends a launch's reply, and a metrics bug must not cost a VM its start.
import { Counter, Histogram, Registry } from 'prom-client'
import { QkError, allCodes } from '../errors.ts'

export type Outcome = 'authorised' | 'probe' | 'refused'
export type DecisionPath = 'agent' | 'standalone'
export interface DecisionLabels {
  outcome: Outcome
  /** 'OK' or an ErrorCode. */
  code: string
  path: DecisionPath
}

const OUTCOMES: readonly string[] = ['authorised', 'probe', 'refused']
const PATHS: readonly string[] = ['agent', 'standalone']
const CODES = new Set<string>(['OK', ...allCodes])
/** Measured launches take 1-200 ms; the edges catch a stalled one. */
export const LAUNCH_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5, 1, 5]

export interface Metrics {
  readonly registry: Registry
  /**
   * One decision; `seconds` from request to reply. Only authorised launches feed the histogram.
   * Returns undefined, or (labels outside the closed sets) the error, not thrown.
   */
  observeDecision(labels: DecisionLabels, seconds: number): QkError | undefined
  /** The Prometheus text exposition format. */
  metricsText(): Promise<string>
  readonly contentType: string
}

export function createMetrics(): Metrics {
  const registry = new Registry()
  const decisions = new Counter({
    name: 'qemu_kube_decisions_total',
    help: 'Launch decisions by outcome, code (OK or the refusal code) and path (agent or standalone)',
    labelNames: ['outcome', 'code', 'path'] as const,
    registers: [registry],
  })
  const launches = new Histogram({
    name: 'qemu_kube_launch_duration_seconds',
    help: 'Time from request to hand-off of authorised launches',
    labelNames: ['path'] as const,
    buckets: LAUNCH_BUCKETS,
    registers: [registry],
  })
  const invalid = new Counter({
    name: 'qemu_kube_metrics_invalid_observations_total',
    help: 'Decisions not recorded because a label was outside its closed set (a qemu-kube bug)',
    registers: [registry],
  })
  return {
    registry,
    contentType: registry.contentType,
    observeDecision(labels, seconds) {
      const bad = badLabel(labels, seconds)
      if (bad !== null) {
        invalid.inc()
        return new QkError('ERR_INTERNAL', `observeDecision: unexpected ${bad}`.slice(0, 200))
      }
      decisions.inc({ outcome: labels.outcome, code: labels.code, path: labels.path })
      if (labels.outcome === 'authorised') launches.observe({ path: labels.path }, seconds)
      return undefined
    },
    metricsText: () => registry.metrics(),
  }
}

function badLabel(l: DecisionLabels, seconds: number): string | null {
  return !OUTCOMES.includes(l.outcome) ? `outcome ${JSON.stringify(l.outcome)}`
    : !CODES.has(l.code) ? `code ${JSON.stringify(l.code)}`
    : !PATHS.includes(l.path) ? `path ${JSON.stringify(l.path)}`
    : !(Number.isFinite(seconds) && seconds >= 0) ? `duration ${seconds}`
    : (l.outcome === 'refused') === (l.code === 'OK') ? `code ${l.code} with outcome ${l.outcome}`
    : null
}
