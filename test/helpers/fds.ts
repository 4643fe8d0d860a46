// The fds a launch test passes the front besides 0..2 (libvirt's pidfile and monitor stand-ins
// at 5 and 28), and those the test process would leak to any child anyway.
import { readdirSync, readFileSync } from 'node:fs'

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
