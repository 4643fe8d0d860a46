// The proc index against a fake /proc tree and a fake connector: datagrams built byte by byte
// in the kernel's layout (nlmsghdr, cn_msg, proc_event), so the parser is tested with the index.
import t, { type Test } from 'tap'
import { rmSync, writeFileSync, mkdirSync } from 'node:fs'
import { EAGAIN, ENOBUFS, parseDatagram, PROC_EVENT_EXEC, PROC_EVENT_EXIT, PROC_EVENT_FORK, type ProcEventSource } from '../../src/emulator/proc-connector.ts'
import { openProcIndex } from '../../src/emulator/proc-index.ts'
import { findTarget } from '../../src/emulator/target.ts'
import { fakeOps, fakeProc, launcher, statLine } from '../helpers/fakeproc.ts'

const U = '1234-5678'
const N = 'testvm'

/** One netlink message holding one proc event; data are the event_data u32s. */
function event(what: number, cpu: number, seq: number, data: number[]): Buffer {
  const b = Buffer.alloc(16 + 20 + 16 + data.length * 4)
  b.writeUInt32LE(b.length, 0)
  b.writeUInt16LE(3, 4) // NLMSG_DONE
  b.writeUInt32LE(1, 16) // CN_IDX_PROC
  b.writeUInt32LE(1, 20) // CN_VAL_PROC
  b.writeUInt32LE(seq, 24)
  b.writeUInt16LE(16 + data.length * 4, 32)
  b.writeUInt32LE(what, 36)
  b.writeUInt32LE(cpu, 40)
  data.forEach((v, i) => b.writeUInt32LE(v, 52 + i * 4))
  return b
}
const exec = (cpu: number, seq: number, pid: number, tgid = pid) => event(PROC_EVENT_EXEC, cpu, seq, [pid, tgid])
const fork = (cpu: number, seq: number, parent: number, child: number, childTgid = child) => event(PROC_EVENT_FORK, cpu, seq, [parent, parent, child, childTgid])
const exit = (cpu: number, seq: number, pid: number, tgid = pid) => event(PROC_EVENT_EXIT, cpu, seq, [pid, tgid, 0, 17, 1, 1])

/** A queue of datagrams; 'lost' stands for the kernel's ENOBUFS. */
function fakeSource() {
  const queue: (Buffer | 'lost')[] = []
  let closed = 0
  const source: ProcEventSource = {
    recv(buf) {
      const d = queue.shift()
      if (d === undefined) return -EAGAIN
      if (d === 'lost') return -ENOBUFS
      d.copy(buf)
      return d.length
    },
    close() { closed++ },
  }
  return { queue, source, get closed() { return closed } }
}

function setup(t: Test, queued: (Buffer | 'lost')[] = []) {
  const root = fakeProc(t, [{ pid: 1, argv: ['/sbin/init'] }, launcher(500, U, N), { pid: 300, argv: ['/usr/bin/bash'] }])
  const src = fakeSource()
  src.queue.push(...queued)
  const warnings: { obj: object; msg: string }[] = []
  const log = { info() {}, warn: (obj: object, msg: string) => { warnings.push({ obj, msg }) } }
  const ix = openProcIndex({ procRoot: root, launcherName: 'virt-launcher', log: log as never, events: () => src.source, drainMs: 0 })
  t.teardown(() => ix.close())
  const put = (pid: number, argv: string[]) => {
    mkdirSync(`${root}/${pid}`, { recursive: true })
    writeFileSync(`${root}/${pid}/cmdline`, argv.length ? `${argv.join('\0')}\0` : '')
    writeFileSync(`${root}/${pid}/stat`, statLine({ pid, argv }))
  }
  return { root, src, ix, warnings, put }
}

t.test('open: the scan, then the events queued meanwhile, once each', async (t) => {
  const { ix, src, warnings, put } = setup(t, [exec(0, 1, 500), exec(1, 7, 500)])
  t.equal(ix.mode, 'events')
  t.same(ix.candidates(), [500], 'an event for a scanned pid adds nothing')
  put(501, ['/usr/bin/virt-launcher', '-x'])
  src.queue.push(exec(0, 2, 501), exec(0, 3, 501))
  t.same(ix.candidates(), [500, 501], 'two events, one entry')
  t.same(warnings, [])
})

t.test('exec: adds by argv[0] basename, removes when the new image is another, uses the tgid', async (t) => {
  const { ix, src, put } = setup(t)
  put(600, ['virt-launcher-evil'])
  put(601, ['/opt/virt-launcher/x'])
  put(602, ['/usr/local/bin/virt-launcher', '-kubevirt.vm.uuid', U])
  src.queue.push(exec(0, 1, 600), exec(0, 2, 601), exec(0, 3, 999, 602))
  t.same(ix.candidates(), [500, 602], 'only a whole basename; a thread\'s exec names its tgid')
  put(500, ['/bin/sleep', '100'])
  src.queue.push(exec(0, 4, 500))
  t.same(ix.candidates(), [602], 'a launcher that execs something else leaves')
})

t.test('fork: a process forked by an indexed one is added; threads and strangers\' children are not', async (t) => {
  const { ix, src } = setup(t)
  src.queue.push(fork(0, 1, 500, 700), fork(0, 2, 300, 701), fork(0, 3, 500, 702, 500))
  t.same(ix.candidates(), [500, 700], 'child 700 of 500 (no /proc read needed), not 701 (of 300) nor thread 702')
  src.queue.push(fork(0, 4, 700, 703))
  t.same(ix.candidates(), [500, 700, 703], 'a fork of the fork')
})

t.test('exit: a leader that is gone leaves; thread exits are ignored; a recycled launcher pid stays', async (t) => {
  const { root, ix, src, put } = setup(t)
  put(510, ['virt-launcher'])
  put(511, ['virt-launcher'])
  src.queue.push(exec(0, 1, 510), exec(0, 2, 511))
  t.same(ix.candidates(), [500, 510, 511])
  rmSync(`${root}/500`, { recursive: true })
  writeFileSync(`${root}/510/cmdline`, '') // a zombie's cmdline reads empty
  src.queue.push(exit(0, 3, 500), exit(0, 4, 510), exit(0, 5, 999, 511))
  t.same(ix.candidates(), [511], '500 (gone) and 510 (zombie) leave, 511 lost a thread only')
  src.queue.push(exit(0, 6, 511)) // 511 exited and its pid went to another launcher before we read
  t.same(ix.candidates(), [511], 'the pid that reads as a launcher again is kept')
})

t.test('overflow (ENOBUFS): a full rescan after the drain, logged', async (t) => {
  const { ix, src, warnings, put } = setup(t)
  put(520, ['virt-launcher']) // its exec event was among the lost
  src.queue.push('lost', exec(0, 1, 500))
  t.same(ix.candidates(), [500, 520])
  t.equal(ix.rescans, 1)
  t.same(warnings, [{ obj: { why: 'the socket buffer overflowed (ENOBUFS)' }, msg: 'proc index: events lost, rescanning procRoot' }])
})

t.test('a gap in a CPU\'s sequence numbers: a full rescan; other CPUs count apart', async (t) => {
  const { ix, src, warnings, put } = setup(t)
  src.queue.push(exec(0, 1, 300), exec(1, 40, 300), exec(0, 2, 300), exec(1, 41, 300))
  t.same(ix.candidates(), [500])
  t.equal(ix.rescans, 0, 'interleaved CPUs are no gap')
  put(530, ['virt-launcher'])
  src.queue.push(exec(0, 5, 300))
  t.same(ix.candidates(), [500, 530])
  t.equal(ix.rescans, 1)
  t.same(warnings.map((w) => w.obj), [{ why: 'cpu 0 sequence 5 after 2' }])
  src.queue.push(exec(0, 6, 300), exec(0, 0xffffffff, 300), exec(0, 0, 300))
  t.same(ix.candidates(), [500, 530])
  t.equal(ix.rescans, 2, 'the count runs on across the rescan (5 -> 6); 6 -> 2^32-1 is a gap, the wrap to 0 is not')
})

t.test('malformed datagrams are skipped, whole messages after them still count', async (t) => {
  const good = exec(0, 1, 7)
  t.same(parseDatagram(good, good.length), [{ kind: 'exec', cpu: 0, seq: 1, pid: 7, tgid: 7 }])
  const short = Buffer.from(good.subarray(0, 40))
  short.writeUInt32LE(40, 0)
  t.same(parseDatagram(short, short.length), [], 'an event cut short')
  const wrongIdx = Buffer.from(good)
  wrongIdx.writeUInt32LE(2, 16)
  t.same(parseDatagram(wrongIdx, wrongIdx.length), [], 'another connector\'s message')
  const two = Buffer.concat([short, good])
  t.same(parseDatagram(two, two.length).map((e) => e.kind), ['exec'], 'the next message is read at the aligned length')
  const lying = Buffer.from(good)
  lying.writeUInt32LE(4096, 0)
  t.same(parseDatagram(lying, lying.length), [], 'a length past the datagram')
})

t.test('no connector: logs once why, and every candidates() scans', async (t) => {
  const root = fakeProc(t, [launcher(500, U, N)])
  const warnings: { obj: object; msg: string }[] = []
  const log = { info() {}, warn: (obj: object, msg: string) => { warnings.push({ obj, msg }) } }
  const ix = openProcIndex({ procRoot: root, launcherName: 'virt-launcher', log: log as never })
  t.equal(ix.mode, 'scan')
  t.same(ix.candidates(), [500])
  mkdirSync(`${root}/501`)
  writeFileSync(`${root}/501/cmdline`, 'virt-launcher\0')
  t.same(ix.candidates(), [500, 501], 'no event needed: it scanned')
  t.same(warnings, [{
    obj: { procRoot: root, reason: `${root}/self is no link: ${root} is not this process's pid namespace` },
    msg: 'proc index: no process events, every launch scans procRoot',
  }])
  ix.close()
})

t.test('findTarget over the index: the same pin as the scan, the same refusals', async (t) => {
  const { root, ix, src, put } = setup(t)
  const q = { procRoot: root, launcherName: 'virt-launcher', uuid: U, name: N }
  const a = findTarget(q, fakeOps(), undefined, ix.candidates())
  const b = findTarget(q, fakeOps())
  t.same([a.pid, a.startTime], [b.pid, b.startTime])
  put(501, ['virt-launcher', '-kubevirt.vm.uuid', U, '-kubevirt.vm.name', N])
  src.queue.push(exec(0, 1, 501))
  t.throws(() => findTarget(q, fakeOps(), undefined, ix.candidates()), {
    code: 'ERR_TARGET_AMBIGUOUS', message: `expected 1 virt-launcher process for VM ${U} holding its token, got 2: pids 500, 501`,
  })
  src.queue.push(fork(0, 2, 300, 502)) // stale entries cost a read, never a claimant
  rmSync(`${root}/500`, { recursive: true })
  src.queue.push(exit(0, 3, 500))
  t.same(ix.candidates(), [501])
  t.equal(findTarget(q, fakeOps({ gone: new Set([777]) }), undefined, [501, 777]).pid, 501, 'a stale candidate (777, exited: pidfd_open says ESRCH) is skipped')
})

t.test('close() unsubscribes once', async (t) => {
  const { ix, src } = setup(t)
  ix.close()
  ix.close()
  t.equal(src.closed, 1)
})

t.test('a source that fails after open: logged once, closed, and every candidates() scans', async (t) => {
  const { root, ix, src, warnings, put } = setup(t)
  src.source.recv = () => { throw new Error('proc connector: recv failed: errno 9') }
  put(540, ['virt-launcher'])
  t.same(ix.candidates(), [500, 540], 'the scan answers, with the launcher no event announced')
  t.equal(ix.mode, 'scan')
  t.same(warnings, [{ obj: { reason: 'proc connector: recv failed: errno 9' }, msg: 'proc index: the event source failed, every launch scans procRoot from now on' }])
  t.equal(src.closed, 1, 'the source is closed')
  rmSync(`${root}/540`, { recursive: true })
  t.same(ix.candidates(), [500])
  t.equal(warnings.length, 1, 'logged once')
  ix.close()
  t.equal(src.closed, 1, 'not closed twice')
})

t.test('a storm that keeps the queue full: the drain stops at maxDrain and answers with a scan', async (t) => {
  const root = fakeProc(t, [launcher(500, U, N), { pid: 300, argv: ['/usr/bin/bash'] }])
  let seq = 0
  const warnings: object[] = []
  const storm: ProcEventSource = { recv(buf) { const d = fork(0, seq++, 300, 301); d.copy(buf); return d.length }, close() {} }
  const ix = openProcIndex({ procRoot: root, launcherName: 'virt-launcher', events: () => storm, drainMs: 0, maxDrain: 50, log: { info() {}, warn: (o: object) => { warnings.push(o) } } as never })
  t.same(ix.candidates(), [500], 'an answer, though the queue never runs dry')
  t.equal(seq, 100, 'two drains (open, candidates) of 50 datagrams each')
  t.equal(ix.rescans, 2)
  t.same(warnings, [{ why: 'more than 50 datagrams pending' }, { why: 'more than 50 datagrams pending' }])
  ix.close()
})
