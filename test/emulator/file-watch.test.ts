import t from 'tap'
import { EventEmitter } from 'node:events'
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileWatch, type WatchFn } from '../../src/emulator/file-watch.ts'

type Fake = EventEmitter & { dir: string; closed: boolean; fire: (name: string) => void; close: () => void }

function fakeWatch(): { fn: WatchFn; opened: Fake[] } {
  const opened: Fake[] = []
  const fn: WatchFn = (dir, _opts, cb) => {
    const w = Object.assign(new EventEmitter(), { dir, closed: false, fire: (name: string) => cb('rename', name), close: () => { w.closed = true } }) as Fake
    opened.push(w)
    return w as never
  }
  return { fn, opened }
}

t.test('a reload with the same files keeps the same watches open (no window without a watch)', async (t) => {
  const { fn, opened } = fakeWatch()
  const why: string[] = []
  const w = new FileWatch((s) => why.push(s), fn)
  t.equal(w.update(['/etc/a/conf', '/etc/k/one.pem', '/etc/k/two.pem']), true)
  t.same(opened.map((o) => o.dir), ['/etc/a', '/etc/k'])
  t.equal(w.update(['/etc/a/conf', '/etc/k/one.pem', '/etc/k/two.pem']), false)
  t.equal(opened.length, 2)
  t.same(opened.map((o) => o.closed), [false, false])
  opened[1]!.fire('two.pem')
  opened[1]!.fire('other.pem')
  t.same(why, ['/etc/k/two.pem changed'])
})

t.test('names follow the latest set; a new directory says so, a dropped one is closed', async (t) => {
  const { fn, opened } = fakeWatch()
  const why: string[] = []
  const w = new FileWatch((s) => why.push(s), fn)
  w.update(['/etc/a/conf', '/etc/k/one.pem'])
  t.equal(w.update(['/etc/a/conf', '/etc/k/two.pem', '/srv/n/new.pem']), true)
  opened[1]!.fire('one.pem')
  opened[1]!.fire('two.pem')
  t.same(why, ['/etc/k/two.pem changed'])
  t.equal(w.update(['/etc/a/conf']), false)
  t.same(opened.map((o) => [o.dir, o.closed]), [['/etc/a', false], ['/etc/k', true], ['/srv/n', true]])
  w.close()
  t.equal(opened[0]!.closed, true)
})

t.test('a directory that cannot be watched is skipped (SIGHUP still reloads)', async (t) => {
  const w = new FileWatch(() => {}, () => { throw new Error('ENOENT') })
  t.equal(w.update(['/nowhere/conf']), false)
})

t.test('real inotify: a rename into the directory is seen, other names are not', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qk-fw-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const seen: string[] = []
  const w = new FileWatch((s) => seen.push(s))
  t.teardown(() => w.close())
  w.update([join(dir, 'conf')])
  writeFileSync(join(dir, 'unrelated'), 'x')
  writeFileSync(join(dir, 'conf.tmp'), 'y')
  renameSync(join(dir, 'conf.tmp'), join(dir, 'conf'))
  const until = Date.now() + 5000
  while (seen.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
  t.ok(seen.length > 0, 'the rename was seen')
  t.same([...new Set(seen)], [`${dir}/conf changed`])
})
