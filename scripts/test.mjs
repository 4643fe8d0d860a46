// `npm test` after set-up: every test file under test/, through tap, then one closing line
// `N passed, N failed, N skipped` counted from tap's TAP stream (CI reads that line; tap's own
// summary is not recognised). Test points that close a subtest are not counted, only leaves.
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { resolve } from 'node:path'

const root = resolve(import.meta.dirname, '..')
// Every *.test.ts under test/ (not the helper modules beside them), unless files are named.
const testFiles = (dir) => readdirSync(`${root}/${dir}`, { withFileTypes: true }).flatMap((e) =>
  e.isDirectory() ? testFiles(`${dir}/${e.name}`) : e.name.endsWith('.test.ts') ? [`${dir}/${e.name}`] : [])
const files = process.argv.slice(2)
const tap = spawn(process.execPath, [`${root}/node_modules/tap/dist/esm/run.mjs`, '--reporter=tap', '--disable-coverage',
  '--timeout=1200', '--jobs=2', ...(files.length ? files : testFiles('test').sort())], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })

let passed = 0
let failed = 0
let skipped = 0
let pending = ''
const subtestDepth = new Set()
const point = /^(\s*)(not ok|ok) \d+/

tap.stdout.on('data', (chunk) => {
  process.stdout.write(chunk)
  const lines = (pending + chunk.toString()).split('\n')
  pending = lines.pop() ?? ''
  for (const line of lines) count(line)
})

function count(line) {
  const sub = /^(\s*)# Subtest/.exec(line)
  if (sub) {
    subtestDepth.add(sub[1].length)
    return
  }
  const m = point.exec(line)
  if (!m) return
  const depth = m[1].length
  // A point at the depth of an open subtest header closes that subtest: not a leaf.
  if (subtestDepth.has(depth)) {
    subtestDepth.delete(depth)
    return
  }
  if (/# SKIP/i.test(line)) skipped++
  else if (m[2] === 'ok' || /# TODO/.test(line)) passed++
  else failed++
}

tap.on('close', (code) => {
  if (pending) count(pending)
  if (code !== 0 && failed === 0) failed = 1 // tap failed outside any test point (crash, timeout)
  console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`)
  process.exit(code === 0 ? 0 : 1)
})
