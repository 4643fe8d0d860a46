/**
 * Watches the directories of the files the agent reads (an atomic replace by rename changes the
 * file's inode, which a watch on the file itself would miss), filtered by the names we read.
 *
 * A directory's watch is kept across reloads: closing every watch and opening new ones left a
 * window in which a write was seen by nobody (CI hit it: a config written right after a reload
 * was never reloaded). Only a directory that is new to the set is opened, and it may have
 * changed between our read and its watch, so update() says so and the caller reads once more.
 */
import { watch as fsWatch, type FSWatcher } from 'node:fs'
import { basename, dirname } from 'node:path'

export type WatchFn = (dir: string, opts: { persistent: boolean }, cb: (event: string, name: string | Buffer | null) => void) => FSWatcher

interface Watched { readonly watcher: FSWatcher; names: Set<string> }

export class FileWatch {
  private readonly dirs = new Map<string, Watched>()

  constructor(private readonly changed: (why: string) => void, private readonly watchFn: WatchFn = fsWatch as unknown as WatchFn) {}

  /** Watch exactly these files' directories; true if a directory was newly watched. */
  update(files: readonly string[]): boolean {
    const wanted = new Map<string, Set<string>>()
    for (const f of files) {
      const names = wanted.get(dirname(f)) ?? new Set<string>()
      names.add(basename(f))
      wanted.set(dirname(f), names)
    }
    for (const [dir, w] of this.dirs) {
      if (!wanted.has(dir)) {
        w.watcher.close()
        this.dirs.delete(dir)
      }
    }
    let added = false
    for (const [dir, names] of wanted) {
      const have = this.dirs.get(dir)
      if (have) {
        have.names = names
        continue
      }
      const entry = this.open(dir, names)
      if (entry) {
        this.dirs.set(dir, entry)
        added = true
      }
    }
    return added
  }

  close(): void {
    for (const w of this.dirs.values()) w.watcher.close()
    this.dirs.clear()
  }

  private open(dir: string, names: Set<string>): Watched | undefined {
    try {
      // The names are looked up at each event, so an update() of the set needs no new watch.
      const watcher = this.watchFn(dir, { persistent: false }, (_event, name) => {
        if (name === null || this.dirs.get(dir)?.names.has(String(name))) this.changed(`${dir}/${name ?? '?'} changed`)
      })
      watcher.on('error', () => {})
      return { watcher, names }
    } catch {
      // A directory that cannot be watched still reloads on SIGHUP.
      return undefined
    }
  }
}
