// `npm run bench`: performance measured as ratios against baselines run in the same invocation,
// never as timed unit tests. Each section is bench/<name>.mjs exporting
// `async function run(): Promise<string>` (markdown); this prints them in order.
//
//   node scripts/bench.mjs [discovery|startup|...|all]    default: every section present
//
// Everything a section needs (C baselines, the bundle) it builds into a temp dir, so the bench
// runs the same on a fresh clone after `npm ci`.
import { readFileSync, readdirSync } from 'node:fs'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

const BENCH = resolve(import.meta.dirname, '..', 'bench')
// A section is any bench/*.mjs that exports `async function run()`; the rest are helpers.
// Known sections come first in this order, any others after them by name.
const ORDER = ['discovery', 'startup', 'launch', 'storm']
const rank = (s) => (ORDER.includes(s) ? ORDER.indexOf(s) : ORDER.length)
const available = readdirSync(BENCH)
  .filter((f) => f.endsWith('.mjs') && /^export async function run\(/m.test(readFileSync(`${BENCH}/${f}`, 'utf8')))
  .map((f) => f.slice(0, -4))
  .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
const asked = process.argv.slice(2)
const sections = asked.length === 0 || asked.includes('all') ? available : asked

for (const s of sections) {
  if (!available.includes(s)) {
    console.error(`bench: no section "${s}" (available: ${available.join(', ') || 'none'})`)
    process.exit(64)
  }
}

console.log(`# qemu-kube bench (node ${process.version}, ${process.platform}/${process.arch})\n`)
for (const s of sections) {
  const { run } = await import(pathToFileURL(`${BENCH}/${s}.mjs`).href)
  console.log(await run())
  console.log()
}
