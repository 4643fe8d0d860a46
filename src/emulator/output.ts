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

/** `key: value` lines, nested values as compact JSON; for records without a better layout. */
export function fields(record: Record<string, unknown>, indent = ''): string {
  const width = Math.max(0, ...Object.keys(record).map((k) => k.length))
  return Object.entries(record)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${indent}${`${k}:`.padEnd(width + 2)}${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('\n')
}

/** The one-line shape of every error: the same fields as the front's and the emulator's. */
export function errorLine(err: QkError): string {
  return `${JSON.stringify({ level: 'error', code: err.code, msg: err.message, hint: err.hint })}\n`
}
