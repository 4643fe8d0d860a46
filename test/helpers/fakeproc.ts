// Fake /proc trees for the pure stages: one directory per test, only the files we read.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import type { Test } from 'tap'

export interface FakeProcess {
  pid: number
  argv: string[]
  state?: string
  startTime?: string
  comm?: string
  cgroup?: string
  /** A directory to serve as /proc/PID/root (a symlink to it). */
  root?: string
}

export const HOST_CGROUP = ['4:memory:/pods/a', '3:cpu,cpuacct:/pods/a', '2:name=systemd:/pods/a', '0::/pods/a', ''].join('\n')

export const MOUNTINFO = [
  '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
  '32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct',
  '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
  '40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd',
  '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate',
  '',
].join('\n')

export function statLine(p: FakeProcess): string {
  const fields = [p.state ?? 'S', '1', '1', '1', '0', '-1', '4194560', '0', '0', '0', '0', '0', '0', '0', '0', '20', '0', '1', '0',
    p.startTime ?? `${1000 + p.pid}`, '1000', '10']
  return `${p.pid} (${p.comm ?? 'x'}) ${fields.join(' ')}\n`
}

export function fakeProc(t: Test, processes: FakeProcess[], extra: { mountinfo?: string } = {}): string {
  const dir = mkdtempSync(`${tmpdir()}/qk-proc-`)
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const p of processes) {
    const d = `${dir}/${p.pid}`
    mkdirSync(d)
    writeFileSync(`${d}/cmdline`, p.argv.length ? `${p.argv.join('\0')}\0` : '')
    writeFileSync(`${d}/stat`, statLine(p))
    writeFileSync(`${d}/cgroup`, p.cgroup ?? HOST_CGROUP)
    if (p.root !== undefined) symlinkSync(p.root, `${d}/root`)
  }
  mkdirSync(`${dir}/self`)
  writeFileSync(`${dir}/self/mountinfo`, extra.mountinfo ?? MOUNTINFO)
  mkdirSync(`${dir}/sys`)
  return dir
}

export const launcher = (pid: number, uuid: string, name: string, more: Partial<FakeProcess> = {}): FakeProcess =>
  ({ pid, argv: ['virt-launcher', '-kubevirt.vm.uuid', uuid, '-kubevirt.vm.name', name], ...more })

/**
 * Stand-ins for pidfd_open/pidfd_send_signal/close on fake pids: `gone` pids have exited before
 * pidfd_open (ESRCH), `dead` ones die right after it (the pidfd reports ESRCH).
 */
export function fakeOps(opts: { dead?: Set<number>; gone?: Set<number> } = {}) {
  const byFd = new Map<number, number>()
  let next = 100
  return {
    closed: [] as number[],
    pidfdOpen(pid: number) {
      if (opts.gone?.has(pid)) return -3
      byFd.set(next, pid)
      return next++
    },
    pidfdSignalZero(fd: number) {
      const pid = byFd.get(fd)
      return pid === undefined || opts.dead?.has(pid) ? 3 : 0
    },
    close(fd: number) {
      this.closed.push(fd)
      byFd.delete(fd)
      return 0
    },
  }
}
