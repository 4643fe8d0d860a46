// Pod teardown for linked QEMUs: SIGTERM each (QEMU then shuts down cleanly and libvirt reports
// the domain shut off), give them the stop timeout, SIGKILL whatever is left, and wait until
// they are gone, so the pod does not end while its VM still runs on the node. Signals go
// through the pidfds: QEMU's pid is not visible in this pid namespace, and a pidfd cannot hit
// a recycled pid. Pids being unknown here, each QEMU's line carries its index and outcome.
import type { Libc } from './libc.ts'
import { ESRCH } from './libc.ts'
import type { Log } from './qemu-link.ts'

const SIGKILL = 9
const SIGTERM = 15
const POLL_MS = 20
/** After SIGKILL a process can still take a moment (or hang in the kernel, state D). */
const KILL_WAIT_MS = 5000

type Outcome = 'already exited' | 'exited after SIGTERM' | 'killed after SIGKILL' | 'still running after SIGKILL'

export async function stopQemus(libc: Libc, pidfds: readonly number[], timeoutS: number, log: Log): Promise<void> {
  const outcome = new Map<number, Outcome>()
  const t0 = Date.now()
  for (const fd of pidfds) if (libc.pidfdSendSignal(fd, SIGTERM) === ESRCH) outcome.set(fd, 'already exited')
  await waitGone(libc, pidfds, outcome, timeoutS * 1000, 'exited after SIGTERM')
  const left = pidfds.filter((fd) => !outcome.has(fd))
  for (const fd of left) if (libc.pidfdSendSignal(fd, SIGKILL) === ESRCH) outcome.set(fd, 'killed after SIGKILL')
  await waitGone(libc, left, outcome, KILL_WAIT_MS, 'killed after SIGKILL')
  pidfds.forEach((fd, i) => {
    const o = outcome.get(fd) ?? 'still running after SIGKILL'
    log(o === 'still running after SIGKILL' ? 'error' : 'info', `QEMU ${i + 1} of ${pidfds.length}: ${o}`,
      { qemu: i + 1, of: pidfds.length, outcome: o, ms: Date.now() - t0 })
  })
}

// A pidfd polls readable once its process has exited. Polled with timeout 0 on a timer, so the
// event loop (the reaper, a second signal) keeps running while we wait.
async function waitGone(libc: Libc, fds: readonly number[], outcome: Map<number, Outcome>, ms: number, as: Outcome): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    const open = fds.filter((fd) => !outcome.has(fd))
    libc.poll(open, 0).forEach((r, i) => {
      if (r !== 0) outcome.set(open[i]!, as)
    })
    if (fds.every((fd) => outcome.has(fd)) || Date.now() >= deadline) return
    await new Promise((r) => setTimeout(r, POLL_MS))
  }
}
