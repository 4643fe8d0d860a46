// CPU and memory of a pod, read straight from its cgroup as kubelet's CRI stats do
// (ContainerStats.cpu.usage_core_nano_seconds, .memory.working_set_bytes).
//
// Which hierarchy: a controller bound to a v1 hierarchy has no files in v2 (hybrid nodes keep
// cpuacct and memory on v1, the unified tree only shows the core cpu.stat), so, as cadvisor does,
// the v1 hierarchy that carries the controller wins and v2 is read only when there is none.
//   cpu      v1 cpuacct.usage (ns)                v2 cpu.stat usage_usec * 1000
//   memory   v1 memory.usage_in_bytes             v2 memory.current
//            - memory.stat total_inactive_file    - memory.stat inactive_file, floored at 0
// Usage is read before memory.stat (one order, so a test can apply the same rule to its reads).
// Values are bigints: a node's nanoseconds of CPU pass 2^53 within months.
import { readFileSync } from 'node:fs'
import { planJoins } from '../cgroup.ts'
import { errnoOf } from '../errors.ts'

export interface Usage {
  /** "v1" or "v2": where the number came from. */
  source: 'v1' | 'v2'
  dir: string
  value: bigint
}

export interface PodUsage {
  cpu: Usage | null
  memory: Usage | null
  /** Why a value is missing (each names the file or rule), for the operator. */
  problems: string[]
}

type Read = (path: string) => string

const readText: Read = (p) => readFileSync(p, 'latin1')

/**
 * cgroupText: PROC/PID/cgroup of a process in the pod; mountinfo: our own (paths in the cgroup
 * file are relative to our cgroup namespace, as for the launch's joins).
 */
export function podUsage(cgroupText: string, mountinfo: string, cgroupRoot: string, read: Read = readText): PodUsage {
  const lines = cgroupText.split('\n').filter((l) => l !== '')
  const v1Line = (controller: string) => lines.find((l) => /^\d+:([^:]*):/.exec(l)?.[1]!.split(',').includes(controller))
  const v2Line = lines.find((l) => l.startsWith('0::'))
  const problems: string[] = []
  const dirOf = (line: string | undefined): string | string[] => {
    if (line === undefined) return []
    try {
      return planJoins(`${line}\n`, mountinfo, cgroupRoot)[0]!.dir
    } catch (err) {
      return [(err as Error).message]
    }
  }
  const pick = (controller: string, v1: (dir: string) => bigint, v2: (dir: string) => bigint): Usage | null => {
    const why: string[] = []
    for (const [source, line, get] of [['v1', v1Line(controller), v1], ['v2', v2Line, v2]] as const) {
      const dir = dirOf(line)
      if (typeof dir !== 'string') {
        why.push(...dir)
        continue
      }
      try {
        return { source, dir, value: get(dir) }
      } catch (err) {
        why.push((err as Error).message)
      }
    }
    problems.push(`${controller}: ${why.length ? why.join('; ') : 'the process is in no cgroup'}`)
    return null
  }
  const cpu = pick('cpuacct', (d) => counter(read, `${d}/cpuacct.usage`), (d) => statField(read, `${d}/cpu.stat`, 'usage_usec') * 1000n)
  const memory = pick('memory',
    (d) => workingSet(counter(read, `${d}/memory.usage_in_bytes`), statField(read, `${d}/memory.stat`, 'total_inactive_file')),
    (d) => workingSet(counter(read, `${d}/memory.current`), statField(read, `${d}/memory.stat`, 'inactive_file')))
  return { cpu, memory, problems }
}

/** kubelet's rule: usage minus inactive file pages, never below 0. */
export function workingSet(usage: bigint, inactiveFile: bigint): bigint {
  return usage > inactiveFile ? usage - inactiveFile : 0n
}

function counter(read: Read, path: string): bigint {
  const text = tryRead(read, path).trim()
  if (!/^\d{1,20}$/.test(text)) throw new Error(`${path}: expected a decimal counter, got ${JSON.stringify(text.slice(0, 40))}`)
  return BigInt(text)
}

/** A `key value` line of a flat-keyed cgroup file (cpu.stat, memory.stat). */
function statField(read: Read, path: string, key: string): bigint {
  for (const line of tryRead(read, path).split('\n')) {
    const sp = line.indexOf(' ')
    if (line.slice(0, sp) !== key) continue
    const v = line.slice(sp + 1).trim()
    if (!/^\d{1,20}$/.test(v)) throw new Error(`${path}: ${key} is not a decimal counter`)
    return BigInt(v)
  }
  throw new Error(`${path}: no ${key} line`)
}

function tryRead(read: Read, path: string): string {
  try {
    return read(path)
  } catch (err) {
    throw new Error(`cannot read ${path}: ${errnoOf(err) ?? 'error'}`)
  }
}
