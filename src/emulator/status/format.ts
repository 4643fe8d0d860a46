// Two renderings of collectStatus's entries. `json` uses CRI's ListContainerStats field names
// (proto names; uint64/int64 as decimal strings, as protobuf's JSON mapping writes them and
// because nanosecond counters outgrow JavaScript numbers), with our own facts under "qemu_kube".
// `human` is a table for an operator's terminal: every string from /proc or the state dir is
// escaped to printable ASCII first, so a cgroup name cannot carry terminal control sequences.
import { QkError } from '../errors.ts'
import type { StatusEntry } from './collect.ts'

export type StatusFormat = 'human' | 'json'
export const STATUS_FORMATS: readonly StatusFormat[] = ['human', 'json']

export function formatStatus(entries: readonly StatusEntry[], format: StatusFormat): string {
  if (format === 'json') return `${JSON.stringify({ stats: entries.map(criStats) }, null, 2)}\n`
  if (format === 'human') return human(entries)
  throw new QkError('ERR_USAGE', `--output must be one of ${STATUS_FORMATS.join(', ')}, got ${JSON.stringify(String(format).slice(0, 40))}`, { what: '--output' })
}

function criStats(e: StatusEntry): Record<string, unknown> {
  const labels: Record<string, string> = { 'qemu-kube/vm-uuid': e.vm, 'qemu-kube/uid': String(e.uid) }
  if (e.name !== null) labels['qemu-kube/vm-name'] = e.name
  const out: Record<string, unknown> = { attributes: { id: e.vm, metadata: { name: e.name ?? e.vm }, labels } }
  if (e.cpu !== null) out.cpu = { timestamp: String(e.cpu.timestamp), usage_core_nano_seconds: { value: String(e.cpu.usageCoreNanoSeconds) } }
  if (e.memory !== null) out.memory = { timestamp: String(e.memory.timestamp), working_set_bytes: { value: String(e.memory.workingSetBytes) } }
  out.qemu_kube = {
    uuid: e.vm,
    name: e.name,
    uid: e.uid,
    qemu: { pid: e.qemu.pid, helper_pid: e.qemu.helperPid ?? null, uid: e.qemu.uid, start_time: e.qemu.startTime, namespaces: e.qemu.namespaces },
    launcher: e.launcher,
    cgroup: e.cgroup,
    cgroup_dirs: {
      cpu: e.cpu === null ? null : { source: e.cpu.source, dir: e.cpu.dir },
      memory: e.memory === null ? null : { source: e.memory.source, dir: e.memory.dir },
    },
    uptime_seconds: e.qemu.uptimeSeconds,
    problems: e.problems,
  }
  return out
}

type CriStats = {
  cpu?: { timestamp: string; usage_core_nano_seconds: { value: string } }
  memory?: { timestamp: string; working_set_bytes: { value: string } }
  qemu_kube: {
    uuid: string; name: string | null; uid: number
    qemu: { pid: number; helper_pid?: number | null; uid: number | null; start_time: string; namespaces: StatusEntry['qemu']['namespaces'] }
    launcher: StatusEntry['launcher']; cgroup: string | null; uptime_seconds: number | null; problems: string[]
    cgroup_dirs: { cpu: { source: 'v1' | 'v2'; dir: string } | null; memory: { source: 'v1' | 'v2'; dir: string } | null }
  }
}

/**
 * The entries back from `json` (the CLI gets JSON from the agent and prints the table here):
 * the exact inverse of criStats, so the mapping is written once, in this file.
 */
export function entriesFromJson(body: string): StatusEntry[] {
  let stats: CriStats[]
  try {
    stats = (JSON.parse(body) as { stats: CriStats[] }).stats
    if (!Array.isArray(stats)) throw new Error('no stats')
    return stats.map((s) => {
      const q = s.qemu_kube
      return {
        uid: q.uid,
        vm: q.uuid,
        name: q.name,
        qemu: { pid: q.qemu.pid, helperPid: q.qemu.helper_pid ?? null, startTime: q.qemu.start_time, uid: q.qemu.uid, namespaces: q.qemu.namespaces, uptimeSeconds: q.uptime_seconds },
        launcher: q.launcher,
        cgroup: q.cgroup,
        cpu: s.cpu === undefined || q.cgroup_dirs.cpu === null ? null
          : { timestamp: BigInt(s.cpu.timestamp), usageCoreNanoSeconds: BigInt(s.cpu.usage_core_nano_seconds.value), source: q.cgroup_dirs.cpu.source, dir: q.cgroup_dirs.cpu.dir },
        memory: s.memory === undefined || q.cgroup_dirs.memory === null ? null
          : { timestamp: BigInt(s.memory.timestamp), workingSetBytes: BigInt(s.memory.working_set_bytes.value), source: q.cgroup_dirs.memory.source, dir: q.cgroup_dirs.memory.dir },
        problems: q.problems,
      }
    })
  } catch {
    throw new QkError('ERR_INTERNAL', `the status reply is not formatStatus json (${body.length} bytes)`)
  }
}

const HEADER = ['UUID', 'NAME', 'UID', 'QEMU', 'LAUNCHER', 'UPTIME', 'CPU', 'MEMORY', 'CGROUP'] as const

function human(entries: readonly StatusEntry[]): string {
  if (entries.length === 0) return 'no running VM launched by qemu-kube on this node\n'
  const rows = entries.map((e) => [
    e.vm,
    e.name ?? '-',
    e.qemu.uid === null || e.qemu.uid === e.uid ? String(e.uid) : `${e.uid}(runs as ${e.qemu.uid})`,
    e.qemu.helperPid == null ? String(e.qemu.pid) : `${e.qemu.pid}(under ${e.qemu.helperPid})`,
    e.launcher === null ? '-' : `${e.launcher.pid}${e.launcher.alive ? '' : '(exited)'}`,
    e.qemu.uptimeSeconds === null ? '-' : duration(e.qemu.uptimeSeconds),
    e.cpu === null ? '-' : `${cpuSeconds(e.cpu.usageCoreNanoSeconds)}s`,
    e.memory === null ? '-' : bytes(e.memory.workingSetBytes),
    e.cgroup ?? '-',
  ].map(printable))
  const widths = HEADER.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')
  const out = [line(HEADER)]
  entries.forEach((e, i) => {
    out.push(line(rows[i]!))
    const ns = Object.entries(e.qemu.namespaces).map(([k, v]) => `${k}:${v ?? '?'}`).join(' ')
    out.push(`  namespaces ${ns}`)
    for (const p of e.problems) out.push(`  ! ${printable(p)}`)
  })
  return `${out.join('\n')}\n`
}

/** Anything outside printable ASCII as \xHH (or \u{...}). */
export function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/gu, (c) => {
    const cp = c.codePointAt(0)!
    return cp <= 0xff ? `\\x${cp.toString(16).padStart(2, '0')}` : `\\u{${cp.toString(16)}}`
  })
}

function duration(s: number): string {
  const d = Math.floor(s / 86400)
  const h = Math.floor((s % 86400) / 3600)
  const m = Math.floor((s % 3600) / 60)
  if (d > 0) return `${d}d${h}h`
  if (h > 0) return `${h}h${m}m`
  return m > 0 ? `${m}m${s % 60}s` : `${s}s`
}

/** Core-seconds with two decimals, from nanoseconds (bigint all the way). */
function cpuSeconds(ns: bigint): string {
  const cs = ns / 10_000_000n
  return `${cs / 100n}.${String(cs % 100n).padStart(2, '0')}`
}

function bytes(n: bigint): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let u = 0
  let scaled = n * 10n
  while (scaled >= 10240n && u < units.length - 1) {
    scaled /= 1024n
    u++
  }
  return u === 0 ? `${n}B` : `${scaled / 10n}.${scaled % 10n}${units[u]}`
}
