// The fds a launch test passes the front besides 0..2 (libvirt's pidfile and monitor stand-ins
// at 5 and 28), and those the test process would leak to any child anyway.
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs'

/** Fds above 2 this test process itself would pass to any child (no O_CLOEXEC): the sandbox's. */
export function inheritedFds(): number[] {
  return readdirSync('/proc/self/fd').map(Number).filter((fd) => {
    if (fd <= 2 || fd === 5 || fd === 28) return false
    try {
      const flags = /flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1]
      return flags !== undefined && (parseInt(flags, 8) & 0o2000000) === 0
    } catch {
      return false
    }
  })
}

/**
 * A child's stdio as libvirt hands QEMU its fds: 0 ignored, 1 and 2 piped, 5 (the pidfile) and
 * 28 (the monitor) open on /dev/null, 3..27 closed. close() drops our copies once spawned.
 */
export function libvirtStdio(): { stdio: (number | 'ignore' | 'pipe')[]; close(): void } {
  const fd5 = openSync('/dev/null', 'r')
  const fd28 = openSync('/dev/null', 'r')
  const stdio: (number | 'ignore' | 'pipe')[] = ['ignore', 'pipe', 'pipe']
  stdio[5] = fd5
  stdio[28] = fd28
  for (let i = 3; i < 28; i++) stdio[i] ??= 'ignore'
  return { stdio, close: () => { closeSync(fd5); closeSync(fd28) } }
}
