// Discovery bench: findTarget() (src/emulator/target.ts as shipped, bundled by esbuild) against
// bench/cscan.c on synthetic proc trees of 1k, 10k and 100k processes, in the same run.
//
//   warm:  in this process, after warm-up, findTarget() timed with process.hrtime; the C scanner
//          spawned per run, its scan timed inside C with clock_gettime (start-up excluded).
//          Runs alternate ours/C (order flipped every round); medians of RUNS each.
//   cold:  a fresh `node` per run importing the bundle and calling findTarget() once (what one
//          launch pays: no JIT warm-up), timed inside; plus both processes' end-to-end wall time.
//
// Environment: QK_BENCH_SIZES=1000,10000 QK_BENCH_RUNS=9 QK_BENCH_DIR=/dev/shm (tree location)
//   QK_BENCH_TARGET=bench/scratch/x.ts   measure a candidate copy of target.ts instead of src/'s
//
// findTarget() pins each claimant with pidfd_open on the real kernel; a synthetic tree's pids are
// not live processes, so both calls get PIDFD_STUB (every pid alive). That leaves out the pin's
// two syscalls for the one claimant (microseconds), not the scan, which is what is measured.
import { spawnSync } from 'node:child_process'
import { bundle, fmt, gcc, median, ms, table } from './lib.mjs'
import { DEFAULT_DIR, makeProcTree } from './proc-tree.mjs'

const SIZES = (process.env.QK_BENCH_SIZES ?? '1000,10000,100000').split(',').map(Number)
const RUNS = Math.max(7, Number(process.env.QK_BENCH_RUNS ?? 9))
const COLD_RUNS = 7
const TARGET_RATIO = 1.3
const ENTRY = process.env.QK_BENCH_TARGET || 'src/emulator/target.ts'

const PIDFD_STUB = { pidfdOpen: () => 1_000_000, pidfdSignalZero: () => 0, close: () => 0 }
const COLD = `
const [url, q] = [process.argv[1], JSON.parse(process.argv[2])]
const { findTarget } = await import(url)
const t0 = process.hrtime.bigint()
const r = findTarget(q, { pidfdOpen: () => 1_000_000, pidfdSignalZero: () => 0, close: () => 0 }) // PIDFD_STUB
const t1 = process.hrtime.bigint()
console.log(JSON.stringify({ pid: r.pid, ns: Number(t1 - t0) }))`

function cscan(bin, q) {
  const t0 = process.hrtime.bigint()
  const p = spawnSync(bin, [q.procRoot, q.launcherName, q.uuid, q.name], { encoding: 'utf8' })
  const wall = Number(process.hrtime.bigint() - t0)
  const m = /^matches=(\d+) numeric=(\d+) ns=(\d+)$/m.exec(p.stdout)
  if (p.status !== 0 || m === null) throw new Error(`cscan failed: ${p.status} ${p.stderr}`)
  return { matches: Number(m[1]), numeric: Number(m[2]), ns: Number(m[3]), wall }
}

function ours(findTarget, q) {
  const t0 = process.hrtime.bigint()
  const r = findTarget(q, PIDFD_STUB)
  return { pid: r.pid, ns: Number(process.hrtime.bigint() - t0) }
}

function cold(bundlePath, q) {
  const t0 = process.hrtime.bigint()
  const p = spawnSync(process.execPath, ['--input-type=module', '-e', COLD, `file://${bundlePath}`, JSON.stringify(q)], { encoding: 'utf8' })
  const wall = Number(process.hrtime.bigint() - t0)
  if (p.status !== 0) throw new Error(`cold run failed: ${p.stderr}`)
  return { ...JSON.parse(p.stdout), wall }
}

export async function run() {
  const bin = gcc('bench/cscan.c', 'cscan')
  const { path: bundlePath, module: target } = await bundle(ENTRY, 'target')
  const rows = []
  for (const n of SIZES) {
    process.stderr.write(`discovery: ${n} processes: generating in ${DEFAULT_DIR} ... `)
    const tree = makeProcTree(n)
    try {
      const q = tree.query
      // Both must find the one target, or the numbers mean nothing.
      const first = ours(target.findTarget, q)
      const c0 = cscan(bin, q)
      if (first.pid !== tree.targetPid || c0.matches !== 1 || c0.numeric !== n) {
        throw new Error(`mismatch: ours pid ${first.pid} (want ${tree.targetPid}), C matches ${c0.matches} numeric ${c0.numeric}`)
      }
      process.stderr.write('warm-up ... ')
      for (let i = 0; i < 3; i++) ours(target.findTarget, q), cscan(bin, q)
      const js = []
      const c = []
      const cWall = []
      for (let i = 0; i < RUNS; i++) {
        const pair = i % 2 ? [() => c.push(cscan(bin, q)), () => js.push(ours(target.findTarget, q))]
          : [() => js.push(ours(target.findTarget, q)), () => c.push(cscan(bin, q))]
        pair[0]()
        pair[1]()
      }
      process.stderr.write('cold ... ')
      const cl = []
      for (let i = 0; i < COLD_RUNS; i++) {
        cl.push(cold(bundlePath, q))
        cWall.push(cscan(bin, q).wall)
      }
      process.stderr.write('done\n')
      rows.push({
        n,
        ours: median(js.map((x) => x.ns)),
        c: median(c.map((x) => x.ns)),
        cold: median(cl.map((x) => x.ns)),
        coldWall: median(cl.map((x) => x.wall)),
        cWall: median(cWall),
      })
    } finally {
      tree.cleanup()
    }
  }

  const out = []
  out.push(`### Discovery: findTarget() (${ENTRY}) vs a C scan (${RUNS} alternating runs, medians; tree on ${DEFAULT_DIR})`, '')
  out.push(table(['processes', 'ours (ms)', 'C (ms)', 'ratio', 'ours per process (µs)', 'C per process (µs)'],
    rows.map((r) => [r.n, fmt(ms(r.ours)), fmt(ms(r.c)), `${fmt(r.ours / r.c)}x`, fmt(r.ours / r.n / 1e3), fmt(r.c / r.n / 1e3)])), '')
  out.push('Growth (ms per 1k processes; linear means flat across the row):', '')
  out.push(table(['', ...rows.map((r) => `${r.n}`)], [
    ['ours', ...rows.map((r) => fmt(ms(r.ours) / (r.n / 1000), 3))],
    ['C', ...rows.map((r) => fmt(ms(r.c) / (r.n / 1000), 3))],
  ]), '')
  out.push(`Cold (a fresh process per launch, medians of ${COLD_RUNS}): findTarget()'s first call, and each process end to end:`, '')
  out.push(table(['processes', 'ours first call (ms)', 'node process (ms)', 'C process (ms)'],
    rows.map((r) => [r.n, fmt(ms(r.cold)), fmt(ms(r.coldWall)), fmt(ms(r.cWall))])), '')
  const judged = rows.filter((r) => r.n >= 10000)
  const worst = judged.length ? Math.max(...judged.map((r) => r.ours / r.c)) : NaN
  const perK = rows.map((r) => r.ours / r.n)
  const growth = perK.length > 1 ? perK.at(-1) / perK[0] : NaN
  out.push(`Target: ours <= ${TARGET_RATIO}x C at >= 10k: ${judged.length ? (worst <= TARGET_RATIO ? 'met' : 'NOT met') : 'n/a'}` +
    ` (worst ${fmt(worst)}x); per-process cost at the largest vs the smallest size: ${fmt(growth)}x.`)
  return out.join('\n')
}
