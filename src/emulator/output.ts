// How operator commands print: human-readable text by default, `--output json` for machines,
// like virsh and kubectl. The emulator path is not an operator command: it keeps its one JSON
// decision line, because libvirt's domain log is read by machines. Errors are one JSON line on
// stderr in every mode (errorLine), the shape the front and the emulator path use too.
import { Option } from 'commander'
import type { QkError } from './errors.ts'

export const OUTPUT_FORMATS = ['human', 'json'] as const
export type OutputFormat = (typeof OUTPUT_FORMATS)[number]

/** The one `--output` option every operator command takes (cli-agent.ts's commands may too). */
export function outputOption(description = 'human-readable text, or one JSON document for machines'): Option {
  return new Option('-o, --output <format>', description).choices(OUTPUT_FORMATS).default('human')
}

/** Writes `value` as pretty JSON, or what `human` makes of it, to stdout. */
export function emit<T>(format: OutputFormat, value: T, human: (v: T) => string): void {
  const text = format === 'json' ? JSON.stringify(value, null, 2) : human(value)
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`)
}

/**
 * `key: value` lines for records without a better layout: nested objects as dotted keys, lists
 * of scalars comma-separated, anything deeper as compact JSON.
 */
export function fields(record: Record<string, unknown>, indent = ''): string {
  const flat: [string, string][] = []
  const walk = (prefix: string, v: unknown) => {
    if (v === undefined) return
    if (typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length > 0) {
      for (const [k, sub] of Object.entries(v)) walk(prefix === '' ? k : `${prefix}.${k}`, sub)
    } else if (Array.isArray(v) && v.every((x) => typeof x !== 'object' || x === null)) {
      flat.push([prefix, v.length === 0 ? '(none)' : v.join(', ')])
    } else {
      flat.push([prefix, typeof v === 'string' ? v : JSON.stringify(v)])
    }
  }
  for (const [k, v] of Object.entries(record)) walk(k, v)
  const width = Math.max(0, ...flat.map(([k]) => k.length))
  return flat.map(([k, v]) => `${indent}${`${k}:`.padEnd(width + 2)}${v}`).join('\n')
}

/** The one-line shape of every error: the same fields as the front's and the emulator's. */
export function errorLine(err: QkError): string {
  return `${JSON.stringify({ level: 'error', code: err.code, msg: err.message, hint: err.hint })}\n`
}
