// `npm test` after set-up: every test file under test/, through tap (test/e2e/ last and one file
// at a time), then one closing line
// `N passed, N failed, N skipped` counted from tap's TAP stream (CI reads that line; tap's own
// summary is not recognised). Test points that close a subtest are not counted, only leaves.
import { spawn } from 'node:child_process'
import { readFileSync, readdirSync } from 'node:fs'
import { resolve } from 'node:path'

const root = resolve(import.meta.dirname, '..')
// Every *.test.ts under test/ (not the helper modules beside them), unless files are named.
const testFiles = (dir) => readdirSync(`${root}/${dir}`, { withFileTypes: true }).flatMap((e) =>
  e.isDirectory() ? testFiles(`${dir}/${e.name}`) : e.name.endsWith('.test.ts') ? [`${dir}/${e.name}`] : [])
const named = process.argv.slice(2)
// The end-to-end files share one libvirtd and restart it: they run one at a time, after the rest.
const isE2e = (f) => /(^|\/)e2e\//.test(f)
const all = named.length ? named : testFiles('test').sort()
// A file that uses test/helpers/transport.ts (directly, or through helpers/e2e.ts) is one suite
// over both transports (standalone chain and resident agent, docs/CHAIN.md section 3): it runs
// in its phase once more with QK_TEST_TRANSPORT=agent.
const transported = (f) => /helpers\/(transport|e2e)\.ts/.test(readFileSync(`${root}/${f}`, 'utf8'))
const phases = [
  [all.filter((f) => !isE2e(f)), 2, 'standalone'],
  [all.filter((f) => !isE2e(f) && transported(f)), 2, 'agent'],
  [all.filter(isE2e), 1, 'standalone'],
  [all.filter((f) => isE2e(f) && transported(f)), 1, 'agent'],
].filter(([fs]) => fs.length)

let passed = 0
let failed = 0
let skipped = 0
let pending = ''
const subtestDepth = new Set()
const point = /^(\s*)(not ok|ok) \d+/

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

function runPhase([files, jobs, transport]) {
  return new Promise((res) => {
    const tap = spawn(process.execPath, [`${root}/node_modules/tap/dist/esm/run.mjs`, '--reporter=tap', '--disable-coverage',
      '--timeout=1200', `--jobs=${jobs}`, ...files], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, QK_TEST_TRANSPORT: transport } })
    pending = ''
    tap.stdout.on('data', (chunk) => {
      process.stdout.write(chunk)
      const lines = (pending + chunk.toString()).split('\n')
      pending = lines.pop() ?? ''
      for (const line of lines) count(line)
    })
    tap.on('close', (code) => {
      if (pending) count(pending)
      subtestDepth.clear()
      res(code)
    })
  })
}

let worst = 0
for (const phase of phases) {
  const before = failed
  if (phase[2] === 'agent') console.log(`# transport agent: ${phase[0].join(' ')}`)
  const code = await runPhase(phase)
  if (code !== 0 && failed === before) failed++ // tap failed outside any test point (crash, timeout)
  if (code !== 0) worst = 1
}
console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`)
process.exit(worst)
