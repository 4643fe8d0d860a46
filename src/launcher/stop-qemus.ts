// Pod teardown for linked QEMUs: ask each QEMU's watcher to stop it ("s" on its link), and wait
// until every watcher has closed its link (it does once its QEMU has exited: SIGTERM, then
// SIGKILL after the node's pod stop timeout) or our own stop timeout, plus a margin, has passed.
// So the pod does not end while its VM still runs on the node, and a stuck one is logged.
// We cannot signal QEMU ourselves: it lives in the host's pid namespace, outside ours, and
// pidfd_send_signal (like kill) refuses such a target whatever our privileges; the watcher
// runs next to QEMU, in its pid namespace, as its uid. Pids being unknown here, each QEMU's line
// carries its index and outcome. If we exit before a watcher is done, it carries on: our exit
// closes its link, which also means "stop QEMU".
import type { LinkedQemu, LinkEnd, Log, QemuLink } from './qemu-link.ts'

/** Beyond the stop timeout: the watcher's SIGKILL and QEMU's exit take a moment. */
export const STOP_MARGIN_MS = 2000

type Outcome = 'stopped' | 'still running at timeout' | 'watcher gone, QEMU still running' | 'watcher unreachable, still running at timeout'

export async function stopQemus(link: QemuLink, timeoutS: number, log: Log): Promise<void> {
  await link.close() // no QEMU links from now on
  const qemus = [...link.linked]
  const t0 = Date.now()
  const asked = qemus.map((q) => link.requestStop(q))
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<null>((r) => { timer = setTimeout(() => r(null), timeoutS * 1000 + STOP_MARGIN_MS) })
  const timed = (q: LinkedQemu) =>
    Promise.race([q.ended, timeout]).then((end) => ({ end, ms: Date.now() - t0 }))
  const ends = await Promise.all(qemus.map(timed))
  clearTimeout(timer)
  ends.forEach(({ end, ms }: { end: LinkEnd | null; ms: number }, i) => {
    const o: Outcome = end === 'qemu exited' ? 'stopped'
      : end === 'watcher gone, qemu running' ? 'watcher gone, QEMU still running'
        : asked[i] ? 'still running at timeout' : 'watcher unreachable, still running at timeout'
    log(o === 'stopped' ? 'info' : 'error', `QEMU ${i + 1} of ${qemus.length}: ${o}`,
      { qemu: i + 1, of: qemus.length, outcome: o, ms })
  })
  await link.end()
}
