// As a pod's PID 1 the launcher inherits every orphan in the pod's pid namespace and must reap
// them, or they stay zombies. Node only reaps children it spawned itself, so on SIGCHLD we call
// waitpid(-1, WNOHANG) until nothing is left. (The launcher spawns no children of its own, so
// this cannot steal an exit status Node is waiting for.)
import { createRequire } from 'node:module'

const WNOHANG = 1

export function startReaper(): void {
  const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi')
  const waitpid = koffi.load('libc.so.6').func('int waitpid(int, _Out_ int *, int)')
  const reap = () => {
    const status = [0]
    while (waitpid(-1, status, WNOHANG) > 0) {
      // reaped one orphan
    }
  }
  process.on('SIGCHLD', reap)
  reap()
}
