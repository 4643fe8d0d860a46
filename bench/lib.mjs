// Shared by the bench sections: a per-run build directory, the shipped code bundled by esbuild,
// C baselines built with gcc, and the statistics every table uses.
import { build } from 'esbuild'
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { resolve } from 'node:path'
import { pathToFileURL } from 'node:url'

export const ROOT = resolve(import.meta.dirname, '..')

let buildDir
/**
 * One temp build dir per bench run, removed at exit (QK_BENCH_KEEP=1 keeps it). It lies under
 * node_modules/.cache so that a bundle's external `koffi` resolves as it does beside dist/.
 */
export function buildDirectory() {
  if (buildDir === undefined) {
    const cache = `${ROOT}/node_modules/.cache`
    mkdirSync(cache, { recursive: true })
    buildDir = mkdtempSync(`${cache}/qk-bench-`)
    if (!process.env.QK_BENCH_KEEP) process.on('exit', () => rmSync(buildDir, { recursive: true, force: true }))
  }
  return buildDir
}

/** Bundles a src/ module the way scripts/build.mjs does (but ESM) and imports it. */
export async function bundle(entry, name) {
  const outfile = `${buildDirectory()}/${name}.mjs`
  await build({
    entryPoints: [resolve(ROOT, entry)],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    external: ['koffi'],
    minifySyntax: true,
    define: { QK_BUILD: JSON.stringify({ prefix: '/nonexistent', sysconfdir: '/nonexistent' }) },
    logLevel: 'warning',
  })
  return { path: outfile, module: await import(pathToFileURL(outfile).href) }
}

/** gcc -O2 one C file of bench/ into the build dir; returns the binary's path. */
export function gcc(source, name) {
  const out = `${buildDirectory()}/${name}`
  execFileSync('gcc', ['-O2', '-Wall', '-Werror', '-o', out, resolve(ROOT, source)], { stdio: 'inherit' })
  return out
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

export const ms = (ns) => ns / 1e6
export const fmt = (x, digits = 2) => x.toFixed(digits)

export function table(head, rows) {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n')
}

/**
 * Test helpers (TypeScript under test/helpers/) bundled into one ES module and imported: `contents`
 * is the module's source, e.g. "export * from './test/helpers/podman.ts'".
 */
export async function bundleHelpers(name, contents) {
  const outfile = `${buildDirectory()}/${name}.mjs`
  await build({
    stdin: { contents, resolveDir: ROOT, loader: 'ts', sourcefile: `${name}.ts` },
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    // The helpers find the repository from their own directory.
    define: { 'import.meta.dirname': JSON.stringify(`${ROOT}/test/helpers`) },
    logLevel: 'warning',
  })
  return import(pathToFileURL(outfile).href)
}

/**
 * Between timed launches of one token: drops the replay records (single-use jtis) and keeps
 * uids/ (its directory, the per-uid locks and the last lease, of a QEMU that has exited), which
 * is what a node's state dir holds when a VM starts again.
 */
export function forgetTokens(state) {
  for (const f of readdirSync(state)) if (f !== 'uids') rmSync(`${state}/${f}`, { recursive: true, force: true })
}
