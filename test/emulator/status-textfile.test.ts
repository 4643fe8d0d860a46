// The optional node-exporter textfile: atomic replace, refused paths, no temp left behind.
import t from 'tap'
import { mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { writeMetricsTextfile } from '../../src/emulator/status/textfile.ts'
import { tempDir } from '../helpers/tokens.ts'

const refusal = (fn: () => unknown) => {
  try {
    fn()
  } catch (e) {
    return { name: (e as Error).name, code: (e as { code: string }).code, message: (e as Error).message }
  }
  return undefined
}

t.test('the file is replaced whole, 0644, and no temp file stays', async (t) => {
  const dir = tempDir(t)
  writeMetricsTextfile(`${dir}/qemu_kube.prom`, 'a 1\n')
  writeMetricsTextfile(`${dir}/qemu_kube.prom`, 'a 2\nb 3\n')
  t.equal(readFileSync(`${dir}/qemu_kube.prom`, 'utf8'), 'a 2\nb 3\n')
  t.equal(statSync(`${dir}/qemu_kube.prom`).mode & 0o777, 0o644)
  t.same(readdirSync(dir), ['qemu_kube.prom'])
})

t.test('paths that are not DIR/NAME.prom are refused with ERR_USAGE', async (t) => {
  for (const p of ['relative.prom', '/tmp/x.txt', '/tmp/../etc/x.prom', '/tmp/a b.prom', '/x.prom\0']) {
    t.same(refusal(() => writeMetricsTextfile(p, '')), {
      name: 'QkError', code: 'ERR_USAGE', message: `the metrics textfile must be an absolute path to a NAME.prom file, got ${JSON.stringify(p)}`,
    }, JSON.stringify(p))
  }
})

t.test('a planted temp name (symlink) is never written through: ERR_OS, the target untouched', async (t) => {
  const dir = tempDir(t)
  writeFileSync(`${dir}/victim`, 'keep\n')
  symlinkSync(`${dir}/victim`, `${dir}/m.prom.${process.pid}.tmp`)
  t.same(refusal(() => writeMetricsTextfile(`${dir}/m.prom`, 'x 1\n')), {
    name: 'QkError', code: 'ERR_OS', message: `cannot create ${dir}/m.prom.${process.pid}.tmp: EEXIST`,
  })
  t.equal(readFileSync(`${dir}/victim`, 'utf8'), 'keep\n')
})

t.test('a failed rename leaves no temp file and says which file', async (t) => {
  const dir = tempDir(t)
  mkdirSync(`${dir}/m.prom`) // a directory where the file should go: rename fails
  mkdirSync(`${dir}/m.prom/inside`)
  t.same(refusal(() => writeMetricsTextfile(`${dir}/m.prom`, 'x 1\n')), {
    name: 'QkError', code: 'ERR_OS', message: `cannot write ${dir}/m.prom: EISDIR`,
  })
  t.same(readdirSync(dir), ['m.prom'])
})
