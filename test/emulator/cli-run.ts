// Runs the built operator CLI (dist/, as docs.test.ts does) through `env -i`: tap's process
// tracking would otherwise add its NODE_OPTIONS, and a child of another uid cannot write tap's
// files. Returns the exit status, stdout and the last stderr line parsed as the error line.
import { spawnSync } from 'node:child_process'
import { resolve } from 'node:path'

export const REPO = resolve(import.meta.dirname, '../..')
export const CLI = `${REPO}/dist/qemu-kube.cjs`

export interface CliResult {
  status: number | null
  stdout: string
  stderr: string
  error: { level?: string; code?: string; msg?: string; hint?: string } | undefined
}

export function cli(args: readonly string[], opts: { uid?: number } = {}): CliResult {
  const r = spawnSync('/usr/bin/env', ['-i', `PATH=${process.env['PATH'] ?? '/usr/bin:/bin'}`, process.execPath, CLI, ...args],
    { encoding: 'utf8', timeout: 30000, ...(opts.uid === undefined ? {} : { uid: opts.uid, gid: opts.uid }) })
  let error
  try {
    error = r.stderr.trim() === '' ? undefined : JSON.parse(r.stderr.trim().split('\n').at(-1)!)
  } catch {
    error = undefined
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, error }
}
