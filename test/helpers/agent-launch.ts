// Many launches at once through the installed setuid front (issue 9's in-flight, concurrency and
// race tests): one install, a key, a state dir, VMs with their own host uids and podman pods,
// and a runner that starts the front as a VM's uid and collects what it printed.
// Importing this file does nothing by itself (tap also runs test/helpers/*.ts as files).
//
//   const h = await agentLaunchSetup(t, { uids: 8 })   install + config, reporter as host QEMU
//   const vm = h.vm('a')                                a VM with its own uid from the range
//   const tok = await h.token(vm)                       RS256, iat now, 60 s, unique jti
//   const pod = await h.pod(vm, tok)                    a podman pod (destroyed at teardown)
//   const tok2 = await h.fresh(vm, pod)                 a new token rotated into the pod (the kubelet's update)
//   const run = h.run(vm, tok)                          the front as vm.uid; resolves a Launch
import { spawn } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { SignJWT } from 'jose'
import type { Test } from 'tap'
import { FIXTURES, installTemp, type Installed } from './install.ts'
import { makePodmanPod, rotateToken, type PodmanPod } from './podman.ts'
import { AUD, ISS, rsaKey, tempDir, writeKey, type KeyPair } from './tokens.ts'

export { startAgent, type RunningAgent } from './transport.ts'

/** The install's group (the front is 4755: any caller may run it; the VM's uid and gid are its own). */
export const GROUP = 'nogroup'
/** libvirt's argv is not needed here: the reporter only reports. */
export const QEMU_ARGS = ['-S']

export interface AgentVm { uuid: string; name: string; uid: number }

export interface Launch {
  pid: number
  code: number | null
  stdout: string
  stderr: string
  /** The reporter's JSON (QEMU ran), or undefined. */
  report?: Record<string, any>
  /** The last JSON line on stderr: the decision line (or the refusal line). */
  decision?: Record<string, any>
}

export interface AgentLaunch {
  inst: Installed
  key: KeyPair
  stateDir: string
  config: Record<string, unknown>
  uidFirst: number
  vm(tag: string): AgentVm
  token(vm: AgentVm, jti?: string): Promise<string>
  pod(vm: AgentVm, tok: string): Promise<PodmanPod>
  /** Pods for every VM, `batch` podman runs at a time (each takes ~0.4 s and a core). */
  pods(vms: readonly AgentVm[], toks: readonly string[], batch?: number): Promise<PodmanPod[]>
  /**
   * A new token for the VM, rotated into its pod's Secret volume. Launch with one minted just
   * before: pods take seconds each under CI's load, and a token minted before them can be past
   * its 60 s exp by the time the fronts run (every launch then refused ERR_TOKEN_EXPIRED).
   */
  fresh(vm: AgentVm, pod: PodmanPod): Promise<string>
  run(vm: AgentVm, tok: string, front?: string): Promise<Launch> & { pid: number }
  /** Another install with the very config (same keys, same state_dir): a second front, its own agent socket path. */
  twin(): Installed
  /** The replay record of a jti (src/emulator/replay.ts recordPath: sha256 of the jti, hex). */
  recordOf(jti: string): string | null
}

/**
 * uids: how many per-VM uids vm_uid_range holds. Each test process takes its own block (another
 * file may run at once; the leases are per state dir, the pods' -qemu-uid per pod, but a block
 * keeps the logs readable).
 */
export async function agentLaunchSetup(t: Test, opts: { uids: number; stateDir?: string }): Promise<AgentLaunch> {
  const key = await rsaKey()
  const pub = writeKey(tempDir(t, 'qk-al-keys-'), 'signing.pem', key.pem)
  const inst = installTemp(t, GROUP)
  const stateDir = opts.stateDir ?? `${tempDir(t, 'qk-al-state-')}/state`
  const uidFirst = 40000 + (process.pid % 200) * 64
  const config = {
    token_public_keys: [pub],
    vm_uid_range: [uidFirst, uidFirst + opts.uids - 1],
    pod_link_socket: '', // the launch ends in the reporter, nothing links to the launcher
    qemu_binary: `${FIXTURES}/reporter`,
    qemu_binary_from: 'host',
    probe_qemu_binary: `${FIXTURES}/reporter`,
    state_dir: stateDir,
  }
  inst.writeConfig(config)
  let vmSeq = 0
  let jtiSeq = 0
  const h: AgentLaunch = {
    inst, key, stateDir, config, uidFirst,
    vm(tag) {
      if (vmSeq >= opts.uids) throw new Error(`agentLaunchSetup: more than ${opts.uids} VMs`)
      return { uuid: randomUUID(), name: `al-${tag}`, uid: uidFirst + vmSeq++ }
    },
    async token(vm, jti = `al-${process.pid}-${jtiSeq++}-${randomUUID()}`) {
      const now = Math.floor(Date.now() / 1000)
      return new SignJWT({ iss: ISS, aud: AUD, sub: vm.uuid, vm_name: vm.name, qemu_uid: vm.uid, jti, iat: now, exp: now + 60 })
        .setProtectedHeader({ alg: 'RS256' }).sign(key.privateKey)
    },
    async pod(vm, tok) {
      const p = await makePodmanPod({ uuid: vm.uuid, name: vm.name, token: tok, qemuUid: vm.uid })
      t.teardown(() => p.destroy())
      return p
    },
    async pods(vms, toks, batch = 8) {
      const out: PodmanPod[] = []
      for (let i = 0; i < vms.length; i += batch) {
        out.push(...await Promise.all(vms.slice(i, i + batch).map((vm, j) => h.pod(vm, toks[i + j]!))))
      }
      return out
    },
    async fresh(vm, pod) {
      const tok = await h.token(vm)
      rotateToken(pod, tok)
      return tok
    },
    run: (vm, tok, front = inst.front) => runFront(front, vm, tok),
    twin() {
      const other = installTemp(t, GROUP)
      other.writeConfig(config)
      return other
    },
    recordOf(jti) {
      const path = `${stateDir}/${createHash('sha256').update(jti).digest('hex')}`
      return existsSync(path) ? readFileSync(path, 'latin1') : null
    },
  }
  return h
}

/** The front as libvirt runs it for this VM: its uid and gid (seclabel +UID:+UID), the <qemu:env> triple. */
export function runFront(front: string, vm: AgentVm, tok: string): Promise<Launch> & { pid: number } {
  const child = spawn(front, QEMU_ARGS, {
    uid: vm.uid, gid: vm.uid, stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: '/usr/bin:/bin', KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.name, KUBEVIRT_SECRET: tok },
  })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d) => (stdout += d))
  child.stderr!.on('data', (d) => (stderr += d))
  const done = new Promise<Launch>((res) => child.on('close', (code) => {
    const report = parse(stdout)
    const decision = parse(stderr.trim().split('\n').at(-1) ?? '')
    res({ pid: child.pid!, code, stdout, stderr, ...(report ? { report } : {}), ...(decision ? { decision } : {}) })
  }))
  return Object.assign(done, { pid: child.pid! })
}

/**
 * Where a process sleeps in the kernel (/proc/PID/wchan) and its current syscall number
 * (/proc/PID/syscall's first field), or null once it is gone.
 */
export function blockedIn(pid: number): { wchan: string; syscall: string } | null {
  try {
    return { wchan: readFileSync(`/proc/${pid}/wchan`, 'utf8'), syscall: readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0]! }
  } catch {
    return null
  }
}

function parse(s: string): Record<string, any> | undefined {
  try {
    const v = JSON.parse(s)
    return typeof v === 'object' && v !== null ? v : undefined
  } catch {
    return undefined
  }
}

/** The jti of a compact JWS (its payload, unverified: the test signed it). */
export const jtiOf = (tok: string): string => JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()).jti

/** The cgroup lines of the reporter's report against the pod's: the same cgroups (seen from inside as /). */
export const podCgroupView = (pod: PodmanPod) =>
  readFileSync(`/proc/${pod.pid}/cgroup`, 'utf8').trim().split('\n').map((l) => l.replace(/:\/.*$/, ':/'))

/** Checks that a report is QEMU in this pod: its net, ipc, uts, cgroup namespaces and cgroups; its uid. */
export function inPod(t: Test, r: Launch, pod: PodmanPod, vm: AgentVm, what: string): void {
  const rep = r.report!
  for (const ns of ['net', 'ipc', 'uts', 'cgroup'] as const) t.equal(String(rep.ns[ns]), String(pod.ns[ns]), `${what}: ${ns} namespace is its pod's`)
  t.same(rep.cgroup, podCgroupView(pod), `${what}: its cgroups are its pod's`)
  t.equal(rep.pid, r.pid, `${what}: the front's pid became QEMU`)
  t.equal(rep.uid, vm.uid, `${what}: QEMU runs as the VM's uid`)
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
