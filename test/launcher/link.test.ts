// The launcher as a real process: its QEMU link socket, the refusals, and the teardown that
// asks each linked "QEMU"'s watcher to stop it and waits for the links to close (a `sleep` that
// test/fixtures/qklink-client.py forks, which links itself by pidfd, leaves the connection to a
// watcher and execs, as the node's enter helper does for QEMU).
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync, statSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { createInterface } from 'node:readline'
import t, { type Test } from 'tap'
import { tempDir } from '../helpers/tokens.ts'
import { bundleLauncher, REPO } from './bundle.ts'

const CLIENT = `${REPO}/test/fixtures/qklink-client.py`
const jws = (payload: object) => `eyJhbGciOiJSUzI1NiJ9.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`

type Line = Record<string, unknown> & { msg: string }

/** Lines of a child's stream, as JSON, awaitable one by one or by predicate. */
function lines(stream: NodeJS.ReadableStream) {
  const seen: Line[] = []
  const waiters: (() => void)[] = []
  createInterface({ input: stream }).on('line', (l) => {
    seen.push(JSON.parse(l) as Line)
    for (const w of waiters.splice(0)) w()
  })
  return {
    seen,
    async until(pred: (l: Line) => boolean, ms = 10000): Promise<Line> {
      const deadline = Date.now() + ms
      for (;;) {
        const hit = seen.find(pred)
        if (hit) return hit
        if (Date.now() > deadline) throw new Error(`no such line in ${JSON.stringify(seen)}`)
        await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 100) })
      }
    },
  }
}

interface Launcher {
  proc: ChildProcess
  log: ReturnType<typeof lines>
  sock: string
  exit: Promise<number | null>
}

async function launcher(t: Test, opts: { claim?: unknown; link?: string; bundle?: string; stopTimeout?: string } = {}): Promise<Launcher> {
  const dir = tempDir(t, 'qk-link-')
  const bundle = opts.bundle ?? await bundleLauncher(t)
  writeFileSync(`${dir}/token`, jws({ sub: 'u-1', ...(opts.claim === undefined ? { qemu_uid: 20001 } : { qemu_uid: opts.claim }) }))
  const sock = opts.link ?? `${dir}/run/qemu-kube/launcher.sock`
  const proc = spawn(process.execPath, [bundle, '-kubevirt.vm.uuid', 'u-1', '-kubevirt.vm.name', 'vm1', '-qemu-uid', '20001',
    '-secret-path', `${dir}/pod/token`, '-token-file', `${dir}/token`, '-qemu-link', sock, '-qemu-stop-timeout', opts.stopTimeout ?? '0.5'],
  { stdio: ['ignore', 'ignore', 'pipe'] })
  const exit = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)))
  t.teardown(() => { proc.kill('SIGKILL') })
  return { proc, log: lines(proc.stderr!), sock, exit }
}

async function ready(t: Test, opts: Parameters<typeof launcher>[1] = {}): Promise<Launcher> {
  const l = await launcher(t, opts)
  await l.log.until((x) => x.msg.startsWith('ready:'))
  return l
}

type Flag = 'ignore-term' | 'never-close' | 'no-watcher'

function client(t: Test, sock: string, mode: string, ...flags: Flag[]) {
  const proc = spawn('python3', [CLIENT, sock, mode, ...flags], { stdio: ['ignore', 'pipe', 'inherit'] })
  const out = lines(proc.stdout)
  t.teardown(() => {
    proc.kill('SIGKILL')
    for (const x of out.seen) {
      for (const pid of [x.child, x.watcher]) if (typeof pid === 'number') try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
    }
  })
  return { ack: () => out.until((x) => 'ack' in x), ended: () => out.until((x) => 'signal' in x, 20000) }
}

const stillRunning = (l: Launcher) => l.proc.exitCode === null && l.proc.signalCode === null

t.test('the link socket: 0666 in a 0755 directory, announced as ready', async (t) => {
  const l = await ready(t)
  t.equal(statSync(l.sock).mode & 0o7777, 0o666)
  t.ok(statSync(l.sock).isSocket())
  t.equal(statSync(dirname(l.sock)).mode & 0o7777, 0o755)
  t.match((await l.log.until((x) => x.msg.startsWith('ready:'))).msg, `QEMU uid 20001, link ${l.sock}`)
})

t.test('hellos that are not exactly "QKLINK1\\n" with one pidfd: no ack, closed, the launcher runs on', async (t) => {
  const l = await ready(t)
  const cases = [
    ['wrong-magic', 'qemu link: refused: expected the 8 bytes "QKLINK1\\n", got 8 other bytes'],
    ['no-fd', 'qemu link: refused: expected 1 fd, got 0'],
    ['not-pidfd', 'qemu link: refused: expected a pidfd, got a file'],
    ['two-fds', 'qemu link: refused: expected 1 fd, got 2'],
    ['other-pidfd', 'qemu link: refused: expected a pidfd of the connecting process, got another process\'s'],
    ['silent', 'qemu link: refused: no hello within 2000 ms'],
  ] as const
  for (const [mode, msg] of cases) {
    const c = client(t, l.sock, mode)
    t.equal((await c.ack()).ack, '', `${mode}: closed without an ack`)
    t.equal((await l.log.until((x) => x.msg === msg)).level, 'warn', `${mode}: logged`)
    t.ok(stillRunning(l), `${mode}: the launcher runs on`)
  }
  t.equal((await client(t, l.sock, 'pidfd').ack()).ack, 'k', 'a good hello after all that is still acked')
})

const linkedCount = (l: Launcher, n: number) => l.log.until((x) => x.msg === 'qemu link: linked a QEMU' && x.linked === n)

t.test('SIGTERM: "s" to every watcher, then exit 0 once their links close; a link still open is logged at the timeout', async (t) => {
  const l = await ready(t)
  const polite = client(t, l.sock, 'pidfd')
  t.equal((await polite.ack()).ack, 'k')
  await linkedCount(l, 1)
  const stubborn = client(t, l.sock, 'pidfd', 'ignore-term')
  t.equal((await stubborn.ack()).ack, 'k')
  await linkedCount(l, 2)
  const stuck = client(t, l.sock, 'pidfd', 'never-close')
  t.equal((await stuck.ack()).ack, 'k')
  await linkedCount(l, 3)
  const t0 = Date.now()
  l.proc.kill('SIGTERM')
  t.equal((await polite.ended()).signal, 15, 'the first: its watcher sent SIGTERM')
  t.equal((await stubborn.ended()).signal, 9, 'the one ignoring SIGTERM: its watcher sent SIGKILL')
  t.equal(await l.exit, 0)
  const took = Date.now() - t0
  t.ok(took >= 2500 && took < 6000, `waited -qemu-stop-timeout 0.5 s + 2 s for the stuck link (${took} ms)`)
  const msgs = l.log.seen.map((x) => x.msg).filter((m) => m !== 'qemu link: a linked QEMU exited')
  t.same(msgs.slice(msgs.indexOf('SIGTERM: stopping 3 linked QEMU(s), then exiting')),
    ['SIGTERM: stopping 3 linked QEMU(s), then exiting', 'QEMU 1 of 3: stopped', 'QEMU 2 of 3: stopped', 'QEMU 3 of 3: still running at timeout', 'exiting'])
  t.match(l.log.seen.find((x) => x.msg.startsWith('QEMU 2 of 3')), { level: 'info', qemu: 2, of: 3, outcome: 'stopped' })
  t.match(l.log.seen.find((x) => x.msg.startsWith('QEMU 3 of 3')), { level: 'error', outcome: 'still running at timeout' })
  t.ok(Number(l.log.seen.find((x) => x.msg.startsWith('QEMU 2 of 3'))!.ms) >= 1000, 'the stubborn one took its watcher\'s 1 s grace')
  t.notOk(existsSync(l.sock), 'the socket is removed')
  t.equal((await stuck.ended()).signal, 15, 'the launcher\'s exit closed the stuck link: that watcher stopped its QEMU after all')
})

t.test('SIGTERM with every watcher quick: exits as soon as the links close, not at the timeout', async (t) => {
  const l = await ready(t, { stopTimeout: '30' })
  const c = client(t, l.sock, 'pidfd')
  t.equal((await c.ack()).ack, 'k')
  await linkedCount(l, 1)
  const t0 = Date.now()
  l.proc.kill('SIGTERM')
  t.equal((await c.ended()).signal, 15)
  t.equal(await l.exit, 0)
  t.ok(Date.now() - t0 < 5000, `exited at once (${Date.now() - t0} ms of a 30 s timeout)`)
  t.ok(l.log.seen.some((x) => x.msg === 'QEMU 1 of 1: stopped'))
})

t.test('a linked QEMU that exits: its watcher closes the link and the launcher drops it; SIGTERM with none linked exits 0 at once', async (t) => {
  const l = await ready(t)
  const c = client(t, l.sock, 'pidfd')
  const { child } = await c.ack()
  await linkedCount(l, 1)
  process.kill(child as number, 'SIGKILL')
  await l.log.until((x) => x.msg === 'qemu link: a linked QEMU exited' && x.linked === 0)
  l.proc.kill('SIGINT')
  t.equal(await l.exit, 0)
  t.ok(l.log.seen.some((x) => x.msg === 'SIGINT: stopping 0 linked QEMU(s), then exiting'))
})

t.test('a link that closes while its QEMU runs (no watcher): an error, the QEMU is no longer counted', async (t) => {
  const l = await ready(t)
  const c = client(t, l.sock, 'pidfd', 'no-watcher')
  t.equal((await c.ack()).ack, 'k')
  t.match(await l.log.until((x) => x.msg.startsWith('qemu link: a watcher closed its link')),
    { level: 'error', msg: 'qemu link: a watcher closed its link while its QEMU still runs; that QEMU is no longer tied to this pod', linked: 0 })
})

t.test('-qemu-link "" opens no socket', async (t) => {
  const l = await ready(t, { link: '' })
  t.match((await l.log.until((x) => x.msg.startsWith('ready:'))).msg, /link off$/)
  l.proc.kill('SIGTERM')
  t.equal(await l.exit, 0)
})

t.test('a stale socket is replaced; a file that is not a socket is refused', async (t) => {
  const first = await ready(t)
  first.proc.kill('SIGKILL') // leaves its socket behind
  await first.exit
  t.ok(existsSync(first.sock))
  const second = await ready(t, { link: first.sock })
  t.equal((await client(t, second.sock, 'pidfd').ack()).ack, 'k')
  const dir = tempDir(t, 'qk-link-')
  closeSync(openSync(`${dir}/not-a-socket`, 'w'))
  const l = await launcher(t, { link: `${dir}/not-a-socket` })
  t.equal(await l.exit, 71)
  t.match(await l.log.until((x) => x.level === 'error'), { code: 'ERR_OS', msg: `-qemu-link ${dir}/not-a-socket exists and is not a socket; not removing it` })
})

t.test('a token whose qemu_uid claim differs from -qemu-uid: refused before ready', async (t) => {
  const l = await launcher(t, { claim: 20002 })
  t.equal(await l.exit, 78)
  t.match(l.log.seen, [{ level: 'error', code: 'ERR_LAUNCHER_UID_MISMATCH', msg: 'the token\'s qemu_uid claim is 20002, -qemu-uid is 20001' }])
  t.notOk(l.log.seen.some((x) => x.msg.startsWith('ready:')))
  t.notOk(existsSync(l.sock), 'no link socket either')
})

t.test('koffi that cannot load: a clear startup error, never "ready"', async (t) => {
  const l = await launcher(t, { bundle: await bundleLauncher(t, false) })
  t.equal(await l.exit, 71)
  t.match(l.log.seen, [{ level: 'error', code: 'ERR_OS', msg: /^cannot load koffi \(MODULE_NOT_FOUND\); the launcher needs it to reap orphans and to link QEMUs$/ }])
})
