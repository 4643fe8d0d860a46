// The startup bench's cgroup side (bench/startup.mjs): the join alone on fresh cgroups
// (bench/cgroup-join.c), whether the kernel is in its default state, and the favordynmods
// remount (system-wide; see QK_BENCH_FAVORDYNMODS in bench/startup.mjs) with its restore.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, rmdirSync } from 'node:fs'
import { median as med } from './lib.mjs'
import { hierarchies } from './pod.mjs'

function joinTest(joinBin, h, rounds, gapMs) {
  const dir = `${h.own}/qk-bench-join-${process.pid}`
  mkdirSync(dir)
  try {
    const out = execFileSync(joinBin, [h.own, dir, String(rounds), String(gapMs)], { encoding: 'utf8' })
    const rows = out.trim().split('\n').map((l) => l.split(' ').map((x) => Number(x) / 1e6))
    return { cold: rows.map((r) => r[0]), warm: rows.map((r) => r[1]) }
  } finally {
    for (let i = 0; i < 100; i++) { try { rmdirSync(dir); break } catch (e) { if (e.code === 'ENOENT') break; Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10) } }
  }
}

const stats = (xs) => `${med(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}..${Math.max(...xs).toFixed(2)})`

function joinHierarchies() {
  const hs = hierarchies()
  const v1 = hs.find((h) => h.key === 'pids') ?? hs.find((h) => h.version === 1 && !h.key.split(',').includes('cpuset'))
  const v2 = hs.find((h) => h.version === 2)
  // Our own cgroup directory in each (the join test's child leaves it and comes back).
  const own = (h) => `${h.mountPoint}${readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.split(':')[1] === h.key).split(':').slice(2).join(':')}`
  return [v1, v2].filter(Boolean).map((h) => ({ ...h, own: own(h) }))
}

/** Whether joins on this kernel still take the default path: favordynmods on a mount, or once on since boot. */
export function favordynmodsState() {
  const on = hierarchies().filter((h) => (superOpts(h.mountPoint) ?? '').split(',').includes('favordynmods')).map((h) => h.mountPoint)
  const log = spawnSync('dmesg', [], { encoding: 'utf8' }).stdout ?? ''
  return { on, stuck: /per threadgroup rwsem mechanism can't be disabled/.test(log) }
}

export function joinLines(joinBin, label, sweep) {
  const lines = []
  for (const h of joinHierarchies()) {
    const r = joinTest(joinBin, h, 10, 100)
    lines.push(`- ${label}${h.version === 1 ? `v1 ${h.key}` : 'v2'}: cold ${stats(r.cold)} ms, warm ${stats(r.warm)} ms (median (min..max) of 10)`)
  }
  if (sweep) {
    const h = joinHierarchies()[0]
    const gaps = [2, 5, 10, 20, 50, 100].map((g) => `${g} ms: ${med(joinTest(joinBin, h, 5, g).cold).toFixed(2)}`)
    lines.push(`- ${label}first write after a quiet spell of (v1 ${h.key}, median of 5) ${gaps.join(', ')} ms`)
  }
  return lines
}

/** [per-mount options, super options] of the mount at mountPoint, from mountinfo. */
export const mountOpts = (mountPoint) => {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const dash = line.indexOf(' - ')
    const pre = line.slice(0, dash).split(' ')
    if (dash >= 0 && pre[4] === mountPoint) return [pre[5], line.slice(dash + 3).split(' ')[2]]
  }
  return [undefined, undefined]
}
const superOpts = (mountPoint) => mountOpts(mountPoint)[1]
// --options-mode ignore: exactly these options. By default mount(8) merges in the current ones
// from mountinfo on a remount, so `remount,rw` would keep favordynmods (cgroup2 has no "no" form).
const remount = (opts, mountPoint) => spawnSync('mount', ['--options-mode', 'ignore', '-o', `remount,${opts}`, mountPoint], { encoding: 'utf8' })

/**
 * mount -o remount,<original>,favordynmods on each join hierarchy. Every mount it changes goes
 * into `changed` at once, so restoreMounts(changed) can undo it from any exit path.
 */
export function favorDynmods(changed) {
  const report = []
  for (const h of joinHierarchies()) {
    const [origMnt, orig] = mountOpts(h.mountPoint)
    const r = remount(`${origMnt},${orig},favordynmods`, h.mountPoint)
    const [nowMnt, now] = mountOpts(h.mountPoint)
    if (now !== orig || nowMnt !== origMnt) changed.push({ h, orig, origMnt })
    const kmsg = r.status === 0 ? '' : (spawnSync('dmesg', [], { encoding: 'utf8' }).stdout ?? '').trim().split('\n').filter((l) => /cgroup/i.test(l)).at(-1) ?? ''
    report.push(`${h.mountPoint} (${orig}): ${r.status === 0 ? `remounted, now ${now}` : `refused (${(r.stderr.trim().split('\n')[0] ?? '').replace(/^mount: /, '')}${kmsg ? `; kernel: ${kmsg.replace(/^\[[^\]]*\]\s*/, '')}` : ''})`}`)
  }
  return report
}

/** Puts back the original options of every changed mount; returns the ones that did not come back. */
export function restoreMounts(changed) {
  const bad = []
  for (const { h, orig, origMnt } of changed.splice(0)) {
    remount(`${origMnt},${orig}`, h.mountPoint)
    const [m, o] = mountOpts(h.mountPoint)
    if (o !== orig || m !== origMnt) bad.push(`${h.mountPoint}: now ${m} - ${o}, was ${origMnt} - ${orig}`)
  }
  if (bad.length > 0) process.stderr.write(`startup bench: MOUNT OPTIONS NOT RESTORED: ${bad.join('; ')}\n`)
  return bad
}
