// An optional second transport for the agent's metrics: node-exporter's textfile collector reads
// DIR/*.prom. The primary transport is `op=metrics` on the agent's root-only socket (values at
// the moment of asking, nothing on disk); this exists for nodes whose Prometheus scrapes only
// node-exporter. Order: write a temp file beside the target, then rename over it, so the
// collector never reads half a file (it ignores names not ending in .prom, so the temp is
// never collected either).
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync, constants } from 'node:fs'
import { QkError, errnoOf } from '../errors.ts'

const PROM_PATH = /^\/[^\0]*\/[A-Za-z0-9_.-]+\.prom$/

export function writeMetricsTextfile(path: string, text: string): void {
  if (!PROM_PATH.test(path) || path.split('/').includes('..')) {
    throw new QkError('ERR_USAGE', `the metrics textfile must be an absolute path to a NAME.prom file, got ${JSON.stringify(path.slice(0, 200))}`, { what: 'textfile' })
  }
  const temp = `${path}.${process.pid}.tmp`
  let fd: number
  try {
    // O_EXCL|O_NOFOLLOW: a temp name planted by someone else is never written through.
    fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644)
  } catch (err) {
    throw new QkError('ERR_OS', `cannot create ${temp}: ${errnoOf(err) ?? 'error'}`, { path: temp })
  }
  let open = true
  try {
    const buf = Buffer.from(text, 'utf8')
    for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off)
    fsyncSync(fd)
    open = false
    closeSync(fd)
    renameSync(temp, path)
  } catch (err) {
    // Close only our own fd: once closed, its number may already be another file's.
    if (open) closeSync(fd)
    try {
      unlinkSync(temp)
    } catch {
      // already gone
    }
    throw new QkError('ERR_OS', `cannot write ${path}: ${errnoOf(err) ?? 'error'}`, { path })
  }
}
