// End-to-end tests against a real libvirtd (test/e2e/): qemu-kube installed under a temp prefix
// as the domains' <emulator>, real podman pods running the launcher image (virt-launcher and
// QEMU inside, test/helpers/podman.ts), one host uid per VM (its DAC seclabel and the token's
// qemu_uid claim), tokens signed per start.
// Importing this file does nothing by itself (tap also runs test/helpers/*.ts as files).
//
//   const e = await setupE2e(t)       libvirt up (shared with the other e2e file), qemu-kube
//                                     installed, a key pair, a private replay state dir
//   const vm = e.vm('tag')            a fresh VM identity: unique libvirt name, uuid, host uid
//   const tok = await e.token(vm)     RS256, iat now, 60 s, unique jti, qemu_uid = vm.uid
//   const pod = await e.pod(vm, tok)  a podman pod running the launcher, removed at teardown
//   await e.start(vm, tok)            define + start (undefined at teardown); the VirshResult
import { execFileSync } from 'node:child_process'
import { createHash, randomUUID } from 'node:crypto'
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { SignJWT } from 'jose'
import type { Test } from 'tap'
import { installTemp, REPO, type Installed } from './install.ts'
import {
  defineAndStart, destroyAndUndefine, domainXml, startLibvirt, stopLibvirt, virsh, type VirshResult,
} from './libvirt.ts'
import { cleanupStale, makePodmanPod, type PodmanPod, type PodmanPodOptions } from './podman.ts'

export type Pod = PodmanPod
import { AUD, ISS, rsaKey, tempDir, writeKey, type KeyPair } from './tokens.ts'
import { TRANSPORT, useTransport, type RunningAgent, type Transport } from './transport.ts'

export const LAUNCHER = `${REPO}/dist/virt-launcher.cjs`
export const QEMU_USER = 'libvirt-qemu'
export const QEMU_GROUP = 'kvm'
export const LOG_DIR = '/var/log/libvirt/qemu'

export interface Vm {
  /** libvirt's domain name. */
  name: string
  /** libvirt's domain uuid, also KUBEVIRT_VM_UUID. */
  uuid: string
  /** KUBEVIRT_VM_NAME (the pod's -kubevirt.vm.name). */
  vmName: string
  /** The VM's host identity: seclabel +uid:+uid, the token's qemu_uid, the launcher's -qemu-uid. */
  uid: number
}

export interface E2e {
  inst: Installed
  key: KeyPair
  /** A key no config lists. */
  foreign: KeyPair
  config: Record<string, unknown>
  vm(tag: string): Vm
  token(vm: Vm, claims?: Record<string, unknown>, signer?: KeyPair): Promise<string>
  pod(vm: Vm, token: string, opts?: Partial<PodmanPodOptions>): Promise<Pod>
  /** Domain XML through qemu-kube: the <qemu:env> triple (KUBEVIRT_SECRET only when tok given). */
  xml(vm: Vm, tok: string | undefined): string
  start(vm: Vm, tok: string | undefined): Promise<VirshResult>
  /** The resident agent serving this install, when the run is the agent transport. */
  agent: RunningAgent | undefined
  transport: Transport
}

import { gidOf, uidOf } from './ids.ts'
export { gidOf, uidOf }

/**
 * Host uids for the e2e VMs: what KubeVirt's virt-handler would allocate, one per live VM.
 * Two e2e files run at once against one libvirtd, so each process takes its own block of 40.
 */
export const UID_FIRST = 20000
export const UID_LAST = 29999
let uidSeq = 0
export function allocateUid(): number {
  if (uidSeq >= 40) throw new Error('allocateUid: more than 40 VMs in one test process')
  return UID_FIRST + (process.pid % 249) * 40 + uidSeq++
}

export async function setupE2e(t: Test, tag: string, extraConfig: Record<string, unknown> = {}): Promise<E2e> {
  if (!existsSync(LAUNCHER)) throw new Error(`no ${LAUNCHER}: run npm run build`)
  await cleanupStale()
  await startLibvirt()
  t.teardown(() => stopLibvirt())
  await removeStaleDomains()
  const key = await rsaKey()
  const foreign = await rsaKey()
  const pub = writeKey(tempDir(t, 'qk-e2e-keys-'), 'signing.pem', key.pem)
  const inst = installTemp(t, QEMU_GROUP)
  t.teardown(() => forgetCapabilities(inst.front))
  const config = { token_public_keys: [pub], state_dir: `${tempDir(t, 'qk-e2e-state-')}/state`, vm_uid_range: [UID_FIRST, UID_LAST], ...extraConfig }
  inst.writeConfig(config)
  // Every e2e file is one suite over both transports (scripts/test.mjs runs it once per each).
  const agent = await useTransport(t, inst)
  let seq = 0
  const e: E2e = {
    inst,
    agent,
    transport: TRANSPORT,
    key,
    foreign,
    config,
    vm: (what) => ({ name: `qke2e-${tag}-${process.pid}-${what}`, uuid: randomUUID(), vmName: `vm-${what}`, uid: allocateUid() }),
    async token(vm, claims = {}, signer = key) {
      const now = Math.floor(Date.now() / 1000)
      return new SignJWT({ iss: ISS, aud: AUD, sub: vm.uuid, vm_name: vm.vmName, qemu_uid: vm.uid, jti: `e2e-${tag}-${process.pid}-${seq++}-${randomUUID()}`, iat: now, exp: now + 60, ...claims })
        .setProtectedHeader({ alg: 'RS256' }).sign(signer.privateKey)
    },
    async pod(vm, tok, opts = {}) {
      const p = await makePodmanPod({ uuid: vm.uuid, name: vm.vmName, token: tok, qemuUid: vm.uid, extraArgs: ['-emulator', inst.front], ...opts })
      t.teardown(() => p.destroy())
      return p
    },
    xml(vm, tok) {
      const env: Record<string, string> = { KUBEVIRT_VM_UUID: vm.uuid, KUBEVIRT_VM_NAME: vm.vmName }
      if (tok !== undefined) env.KUBEVIRT_SECRET = tok
      return domainXml({ name: vm.name, uuid: vm.uuid, emulator: inst.front, env, seclabelUid: vm.uid })
    },
    async start(vm, tok) {
      if ((await virsh(['domstate', vm.name])).code === 0) throw new Error(`known state: domain ${vm.name} already exists`)
      t.teardown(async () => {
        await destroyAndUndefine(vm.name)
        rmSync(`${LOG_DIR}/${vm.name}.log`, { force: true }) // libvirt logged the token there
      })
      return defineAndStart(e.xml(vm, tok))
    },
  }
  return e
}

/**
 * Known state: destroys and undefines the domains that e2e runs and storms which died without
 * their teardown left behind (named qke2e-TAG-PID-... or qk-storm-PID-..., PID no longer alive).
 */
export async function removeStaleDomains(): Promise<string[]> {
  const r = await virsh(['list', '--all', '--name'])
  const stale = r.stdout.split('\n').map((l) => l.trim()).filter((name) => {
    const pid = /^(?:qke2e-[a-z0-9]+|qk-storm)-(\d+)-/.exec(name)?.[1]
    if (pid === undefined) return false
    try {
      process.kill(Number(pid), 0)
      return false
    } catch {
      return true
    }
  })
  for (const name of stale) {
    await destroyAndUndefine(name)
    rmSync(`${LOG_DIR}/${name}.log`, { force: true })
  }
  return stale
}

const CAPS_CACHE = '/var/cache/libvirt/qemu/capabilities'

/**
 * Removes libvirt's on-disk capability cache entry for an emulator path (named by the sha256 of
 * the path), and the entries of earlier runs' temporary installs that no longer exist.
 */
export function forgetCapabilities(emulator: string): void {
  rmSync(`${CAPS_CACHE}/${createHash('sha256').update(emulator).digest('hex')}.xml`, { force: true })
  let names: string[] = []
  try {
    names = readdirSync(CAPS_CACHE)
  } catch {
    return
  }
  for (const f of names) {
    try {
      const path = /<emulator>([^<]+)<\/emulator>/.exec(readFileSync(`${CAPS_CACHE}/${f}`, 'utf8').slice(0, 4096))?.[1]
      if (path && /^\/var\/tmp\/qk-[^/]+\/prefix\/bin\/qemu-kube$/.test(path) && !existsSync(path)) rmSync(`${CAPS_CACHE}/${f}`, { force: true })
    } catch {
      // raced with libvirt or another test: leave it
    }
  }
}

// ---------------------------------------------------------------------------------------------
// what the kernel says about a process

export const nsInode = (pid: number, ns: string) => Number(/\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/${ns}`))![1])

export function status(pid: number): Record<string, string> {
  return Object.fromEntries(readFileSync(`/proc/${pid}/status`, 'utf8').trim().split('\n').map((l) => {
    const i = l.indexOf(':')
    return [l.slice(0, i), l.slice(i + 1).trim()]
  }))
}

export function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1)
  } catch {
    return []
  }
}

const isQemuLike = (argv: readonly string[]) => /(^|\/)(qemu-system-[^/]*|reporter)$/.test(argv[0] ?? '')

/**
 * Every process that is, or could be, this VM's QEMU: a qemu-system (or reporter) whose argv
 * names the guest, or any qemu-system process sitting in one of the given mount namespaces or
 * cgroup directories (the pod's). Zombies count too.
 */
export function qemuProcesses(vm: Vm, pods: readonly Pod[] = []): number[] {
  const mnts = new Set(pods.map((p) => p.ns.mnt))
  const inPodCgroups = new Set(pods.flatMap((p) => {
    const dir = p.cgroups.v2 ?? Object.values(p.cgroups.v1)[0]
    try {
      return readFileSync(`${dir}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number)
    } catch {
      return []
    }
  }))
  const launchers = new Set(pods.map((p) => p.pid))
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
    if (launchers.has(pid) || pid === process.pid) return false
    const argv = cmdline(pid)
    if (argv.some((a) => a.includes(`guest=${vm.name},`) || a === `guest=${vm.name}`)) return true
    if (inPodCgroups.has(pid)) return true // anything but the launcher in the pod's cgroups
    if (!isQemuLike(argv)) return false
    try {
      return mnts.has(nsInode(pid, 'mnt'))
    } catch {
      return false
    }
  })
}

// ---------------------------------------------------------------------------------------------
// the domain log: libvirt's lines (which carry the env, token included) and qemu-kube's JSON lines

export function logSize(name: string): number {
  try {
    return statSync(`${LOG_DIR}/${name}.log`).size
  } catch {
    return 0
  }
}

export function logSince(name: string, offset: number): string {
  try {
    return readFileSync(`${LOG_DIR}/${name}.log`).subarray(offset).toString('utf8')
  } catch {
    return ''
  }
}

/** The lines of a text that are qemu-kube's (pino JSON with name "qemu-kube"), parsed. */
export function qemuKubeLines(text: string): Record<string, any>[] {
  return text.split('\n').flatMap((line) => {
    const i = line.indexOf('{"level"')
    if (i < 0) return []
    try {
      const o = JSON.parse(line.slice(i))
      return o?.name === 'qemu-kube' ? [o] : []
    } catch {
      return []
    }
  })
}

/** Waits until fn() is true (polling), or throws after ms. */
export async function until(what: string, fn: () => boolean, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; !fn();) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

export { virsh }

/** The domain's run state as QEMU reports it over libvirt's monitor (query-status), or undefined. */
export async function monitorStatus(name: string): Promise<string | undefined> {
  const r = await virsh(['qemu-monitor-command', name, '{"execute":"query-status"}'])
  try {
    return JSON.parse(r.stdout).return?.status
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// the probe recorder: a stand-in probe QEMU that writes down who it ran as, then execs QEMU

const RECORDER_C = String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
static void copy(int out, const char *tag, const char *path) {
  char buf[8192]; int in = open(path, O_RDONLY | O_CLOEXEC); ssize_t n;
  dprintf(out, "== %s\n", tag);
  if (in < 0) return;
  while ((n = read(in, buf, sizeof buf)) > 0) if (write(out, buf, (size_t)n) < 0) break;
  close(in);
}
int main(int argc, char **argv) {
  (void)argc;
  char path[512], ns[128];
  snprintf(path, sizeof path, "%s/%d", RECORD_DIR, (int)getpid());
  int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out >= 0) {
    copy(out, "status", "/proc/self/status");
    ssize_t n = readlink("/proc/self/ns/mnt", ns, sizeof ns - 1);
    dprintf(out, "== mnt\n%.*s\n", n > 0 ? (int)n : 0, ns);
    close(out);
  }
  execv(REAL_QEMU, argv);
  return 127;
}
`

/**
 * Builds the recorder into the install prefix (root-owned, like every binary qemu-kube trusts)
 * and returns its path and the directory it records into (owned by the qemu user, who runs it).
 */
export function probeRecorder(t: Test, inst: Installed): { binary: string; recordDir: string } {
  const recordDir = tempDir(t, 'qk-e2e-probe-')
  chmodSync(recordDir, 0o755)
  mkdirSync(`${recordDir}/records`, { mode: 0o700 })
  chownSync(`${recordDir}/records`, uidOf(QEMU_USER), gidOf(QEMU_GROUP))
  const src = `${recordDir}/recorder.c`
  writeFileSync(src, RECORDER_C)
  const binary = `${inst.prefix}/libexec/qemu-kube/probe-recorder`
  execFileSync('gcc', ['-O2', '-Wall', '-Werror', `-DRECORD_DIR="${recordDir}/records"`, '-DREAL_QEMU="/usr/bin/qemu-system-x86_64"', '-o', binary, src])
  chmodSync(binary, 0o755)
  rmSync(src)
  return { binary, recordDir: `${recordDir}/records` }
}
