// The proc index on the real kernel connector (issue 9 item 3): launchers are in candidates()
// the moment spawn returns (their exec event is queued before exec returns), forks of them are
// added, exits remove them, and findTarget over the index pins what the scan pins.
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync, readdirSync } from 'node:fs'
import { QkError } from '../../src/emulator/errors.ts'
import { openProcIndex } from '../../src/emulator/proc-index.ts'
import { sys } from '../../src/emulator/sys.ts'
import { findTarget } from '../../src/emulator/target.ts'

const U = `cn-${process.pid}-uuid`
const N = 'cnvm'
const q = { procRoot: '/proc', launcherName: 'virt-launcher', uuid: U, name: N }

if (process.getuid?.() !== 0) {
  t.test('needs root (the proc connector serves root in the init user and pid namespace)', { skip: `not root (uid ${process.getuid?.()})` }, () => {})
} else {
  const warnings: string[] = []
  const log = { info() {}, warn: (o: object, msg: string) => { warnings.push(`${msg} ${JSON.stringify(o)}`) } }
  const ix = openProcIndex({ procRoot: '/proc', launcherName: 'virt-launcher', log: log as never })
  t.teardown(() => ix.close())
  const kids: ChildProcess[] = []
  t.teardown(() => { for (const k of kids) try { process.kill(-k.pid!, 'SIGKILL') } catch { /* gone */ } })
  // argv = [virt-launcher, -c, SCRIPT, x, -kubevirt.vm.uuid, U, -kubevirt.vm.name, N]; the
  // subshell is a fork of the launcher that keeps its argv, sleep is a fork that execs.
  const launch = (script = '(sleep 100; :); :') => {
    const c = spawn('/bin/bash', ['-c', script, 'x', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N], { argv0: 'virt-launcher', detached: true, stdio: 'ignore' })
    kids.push(c)
    return c
  }
  const holds = (pids: number[]) => (p: { pid: number }) => {
    if (!pids.includes(p.pid)) throw new QkError('ERR_SECRET_MISSING', `no token in ${p.pid}`, { pid: p.pid })
  }
  const childrenOf = (pid: number) => readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((p) => {
    try { return readFileSync(`/proc/${p}/stat`, 'latin1').split(') ')[1]!.split(' ')[1] === String(pid) } catch { return false }
  })
  const waitFor = async (f: () => number | undefined) => {
    for (let i = 0; i < 200; i++) { const v = f(); if (v !== undefined) return v; await new Promise((r) => setTimeout(r, 10)) }
    throw new Error('timed out')
  }

  t.test('the index is fed by events', async (t) => {
    t.equal(ix.mode, 'events', `no fallback: ${warnings.join('; ')}`)
  })

  t.test('a launcher is a candidate as soon as spawn returns; its fork too; exit removes both', async (t) => {
    const a = launch()
    t.ok(ix.candidates().includes(a.pid!), `pid ${a.pid} right after spawn, no sleep`)
    const sub = await waitFor(() => childrenOf(a.pid!)[0])
    t.ok(ix.candidates().includes(sub), `its fork ${sub} (same argv) is a candidate`)
    const sleeper = await waitFor(() => childrenOf(sub)[0])
    await waitFor(() => readFileSync(`/proc/${sleeper}/cmdline`, 'latin1').startsWith('sleep') ? 1 : undefined)
    t.notOk(ix.candidates().includes(sleeper), `the fork that exec'd sleep (${sleeper}) is not`)
    process.kill(-a.pid!, 'SIGKILL')
    await new Promise((r) => a.once('exit', r))
    await waitFor(() => { try { readFileSync(`/proc/${sub}/stat`); return undefined } catch { return 1 } })
    const now = ix.candidates()
    t.notOk(now.includes(a.pid!), 'the exited launcher is gone')
    t.notOk(now.includes(sub), 'its exited fork is gone')
  })

  t.test('findTarget over the index pins what the scan pins; a second claimant started just before is seen', async (t) => {
    const a = launch('sleep 100; :')
    await waitFor(() => childrenOf(a.pid!)[0]) // bash has forked its sleep: it is idle now
    const ops = sys()
    const viaScan = findTarget(q, ops, holds([a.pid!]))
    const viaIndex = findTarget(q, ops, holds([a.pid!]), ix.candidates())
    t.same([viaIndex.pid, viaIndex.startTime], [viaScan.pid, viaScan.startTime], 'same pid and start time')
    t.equal(viaIndex.pid, a.pid)
    ops.close(viaScan.pidfd)
    ops.close(viaIndex.pidfd)
    const b = launch('sleep 100; :')
    const both = [a.pid!, b.pid!].sort((x, y) => x - y)
    t.throws(() => findTarget(q, ops, holds(both), ix.candidates()), {
      code: 'ERR_TARGET_AMBIGUOUS',
      message: `expected 1 virt-launcher process for VM ${U} holding its token, got 2: pids ${both.join(', ')}`,
      details: { pids: both },
    })
    // A rescan is the correct answer to a lost event (GFP_NOWAIT sends can fail under memory
    // pressure), so it is reported, not failed on.
    t.comment(`rescans so far: ${ix.rescans} ${warnings.join('; ')}`)
  })
}
