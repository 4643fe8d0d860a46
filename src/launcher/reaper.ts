// As a pod's PID 1 the launcher inherits every orphan in the pod's pid namespace and must reap
// them, or they stay zombies. Node only reaps children it spawned itself, so on SIGCHLD we call
// waitpid(-1, WNOHANG) until nothing is left. (The launcher spawns no children of its own, so
// this cannot steal an exit status Node is waiting for. Linked QEMUs live in the host's pid
// namespace and are never our children: they are watched through their pidfds instead.)
import type { Libc } from './libc.ts'

const WNOHANG = 1

export function startReaper(libc: Libc): void {
  const reap = () => {
    while (libc.waitpid(-1, WNOHANG) > 0) {
      // reaped one orphan
    }
  }
  process.on('SIGCHLD', reap)
  reap()
}
