// A real pod for the bench sections (root only): the launcher process `virt-launcher
// -kubevirt.vm.uuid U -kubevirt.vm.name N` in fresh cgroups (one per hierarchy, nested under the
// bench's own cgroup there) and in its own mount, net, ipc, uts and cgroup namespaces, with the
// token on a tmpfs that only the pod's mount namespace sees (the host sees an empty directory).
// A trimmed copy of test/helpers/pod.ts's plain layout, in plain JS so the bench needs no loader.
//
//   host bash: echo $$ > every cgroup.procs (before unshare --cgroup, so the pod's cgroup
//              namespace is rooted at its own cgroups)
//   -> unshare --mount --propagation private --net --ipc --uts --cgroup   (execs in place)
//   -> pod bash: token from stdin, tmpfs at SECRET_DIR, token written, tmpfs remounted ro
//   -> exec -a virt-launcher PAUSE -kubevirt.vm.uuid U -kubevirt.vm.name N
// Nothing forks on the way, so the pid we spawn is the launcher's.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from 'node:fs'

const unescapeMount = (s) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)))

/** Every hierarchy /proc/self/cgroup lists: { key, version, mountPoint, own (our cgroup's directory) }. */
export function hierarchies() {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').flatMap((line) => {
    const dash = line.indexOf(' - ')
    if (dash < 0) return []
    const pre = line.slice(0, dash).split(' ')
    const [fstype = '', , superOpts = ''] = line.slice(dash + 3).split(' ')
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') return []
    return [{ fstype, opts: new Set(superOpts.split(',')), superOpts, root: unescapeMount(pre[3]), mountPoint: unescapeMount(pre[4]) }]
  })
  const out = []
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line)
    if (!m) continue
    const key = m[2]
    const mount = m[1] === '0' && key === ''
      ? mounts.find((x) => x.fstype === 'cgroup2')
      : mounts.find((x) => x.fstype === 'cgroup' && key.split(',').every((c) => x.opts.has(c)))
    if (!mount) continue
    const root = mount.root === '/' ? '' : mount.root
    if (root && m[3] !== root && !m[3].startsWith(`${root}/`)) continue
    const rest = m[3].slice(root.length)
    out.push({ key, version: key === '' ? 2 : 1, mountPoint: mount.mountPoint, superOpts: mount.superOpts, own: rest === '/' || rest === '' ? mount.mountPoint : `${mount.mountPoint}${rest}` })
  }
  return out
}

export function procsOf(dir) {
  try {
    return readFileSync(`${dir}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number)
  } catch {
    return []
  }
}

function tryRmdir(dir) {
  try {
    rmdirSync(dir)
    return true
  } catch (err) {
    return err.code === 'ENOENT'
  }
}

const kill = (pid, sig = 'SIGKILL') => { try { process.kill(pid, sig) } catch {} }
const nap = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)

/** A fresh cgroup named `name` under our own in every hierarchy (cpuset: cpus and mems copied). */
export function makeCgroups(name) {
  const dirs = []
  try {
    for (const h of hierarchies()) {
      const dir = `${h.own}/${name}`
      mkdirSync(dir)
      dirs.push(dir)
      if (h.version === 1 && h.key.split(',').includes('cpuset')) {
        for (const f of ['cpuset.cpus', 'cpuset.mems']) writeFileSync(`${dir}/${f}`, readFileSync(`${h.own}/${f}`))
      }
    }
  } catch (err) {
    removeCgroups(dirs)
    throw err
  }
  return dirs
}

/** Kills whatever runs in them, then removes them (synchronously; retries while they drain). */
export function removeCgroups(dirs) {
  const stuck = []
  for (const dir of dirs) {
    for (let i = 0; i < 500; i++) {
      for (const p of procsOf(dir)) kill(p)
      if (tryRmdir(dir)) break
      nap(10)
    }
    if (existsSync(dir)) stuck.push(dir)
  }
  return stuck
}

const JOIN = `set -eu
n=$1; shift
for ((i = 0; i < n; i++)); do echo $$ > "$1"; shift; done
exec "$@"`

const IN_POD = `set -euo pipefail
token=$(cat)
exec </dev/null
mount -t tmpfs -o mode=755,size=64k tmpfs "$QK_SECRET_DIR"
printf '%s' "$token" > "$QK_SECRET_DIR/$QK_SECRET_NAME"
mount -o remount,ro "$QK_SECRET_DIR"
unset token QK_SECRET_DIR QK_SECRET_NAME
exec -a virt-launcher "$@"`

const live = new Set()
process.on('exit', () => { for (const p of live) p.destroy() })

/**
 * Starts the pod; resolves once the launcher runs. secretPath's directory must exist on the host
 * (it stays empty there). Returns { pid, cgroups, ns: { mnt, net, ... } (link text), destroy() }.
 */
export async function makePod({ uuid, name, token, secretPath, pause }) {
  const cut = secretPath.lastIndexOf('/')
  const cgroups = makeCgroups(`qk-bench-pod-${process.pid}-${uuid.slice(0, 8)}`)
  let child
  const pod = {
    pid: 0,
    cgroups,
    ns: {},
    destroy() {
      if (!live.has(pod)) return []
      live.delete(pod)
      if (child?.pid) kill(child.pid)
      return removeCgroups(cgroups)
    },
  }
  live.add(pod)
  try {
    child = spawn('bash', ['--norc', '--noprofile', '-c', JOIN, 'qk-pod', String(cgroups.length), ...cgroups.map((d) => `${d}/cgroup.procs`),
      'unshare', '--mount', '--propagation', 'private', '--net', '--ipc', '--uts', '--cgroup', '--',
      'bash', '--norc', '--noprofile', '-c', IN_POD, 'qk-pod', pause, '-kubevirt.vm.uuid', uuid, '-kubevirt.vm.name', name], {
      stdio: ['pipe', 'ignore', 'pipe'],
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', QK_SECRET_DIR: secretPath.slice(0, cut), QK_SECRET_NAME: secretPath.slice(cut + 1) },
    })
    let stderr = ''
    child.stderr.on('data', (d) => { stderr += d })
    child.stdin.on('error', () => {})
    child.stdin.end(token)
    const want = `virt-launcher\0-kubevirt.vm.uuid\0${uuid}\0`
    for (const end = Date.now() + 10_000; ;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`bench pod exited early: ${stderr.trim()}`)
      let cmdline = ''
      try { cmdline = readFileSync(`/proc/${child.pid}/cmdline`, 'latin1') } catch {}
      if (cmdline.startsWith(want)) break
      if (Date.now() > end) throw new Error(`bench pod: no launcher after 10 s: ${stderr.trim()}`)
      await new Promise((r) => setTimeout(r, 2))
    }
    child.unref()
    child.stderr.unref?.()
    pod.pid = child.pid
    for (const n of ['mnt', 'net', 'ipc', 'uts', 'cgroup']) pod.ns[n] = readlinkSync(`/proc/${pod.pid}/ns/${n}`)
    for (const n of Object.keys(pod.ns)) if (pod.ns[n] === readlinkSync(`/proc/self/ns/${n}`)) throw new Error(`bench pod shares our ${n} namespace`)
    return pod
  } catch (err) {
    pod.destroy()
    throw err
  }
}
