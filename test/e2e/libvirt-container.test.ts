// Issue 10 item 4, libvirt in a container: libvirtd in a privileged podman container (image
// staged from the host's Debian packages, scripts/libvirt-image.mjs), qemu-kube delivered into
// it through a shared volume (the emptyDir case) by the installer image (initcontainer/), host
// /proc bind-mounted at the configured proc_root (/host/proc), the agent on the host (installed
// by the same image onto the host's PREFIX; its socket directory shared into the container at
// SYSCONFDIR/qemu-kube-agent). `virsh` inside the container starts a VM whose pod is a real
// podman pod on the host:
//   (a) without hostPID, through the agent: path agent, QEMU in the pod's namespaces and cgroups;
//   (c) without hostPID, agent stopped: ERR_AGENT_UNAVAILABLE (69), no QEMU, the pod untouched;
//   (b) with hostPID, agent stopped: standalone serves.
// Root and podman only; podman's store is test/helpers/podman.ts's. ROOT's paths are compiled
// into the installer image, so this file holds the delivery tests' LOCK while it runs.
//
// What (a) and (c) found (measured 2026-12-02, kernel 6.18, podman 4.3.1, runc), at 5db1e42:
// - The host's procfs bind-mounted into a container whose pid namespace is a child of the host's
//   shows the container's processes under their host pids, so /host/proc/self EXISTS (the
//   reader's host pid, not the pid it knows itself by): a guard `!existsSync(proc_root/self)`
//   never fires, and standalone failed reading /host/proc/<own pid>/stat (ERR_OS, not
//   ERR_AGENT_UNAVAILABLE). main.ts now compares readlink(proc_root/self) with process.pid.
// - pidfd_send_signal(pidfd, 0) on a pidfd of a process outside the caller's pid namespace (the
//   pod's launcher, seen from the libvirt container) fails with EINVAL, while setns(pidfd,
//   mnt|net|ipc|uts|cgroup) on the same pidfd succeeds (checked with two unshare -p namespaces):
//   the front bailed with ERR_ENTER_PIDFD "--pidfd is not a pidfd". native/enter.c's
//   pidfd_alive() now falls back to poll() on EINVAL.
// With both, every check here passes; without either, (a) or (c) fails.
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { SignJWT } from 'jose'
import { cleanupStale, makePodmanPod, podmanUnavailable, type PodmanPod } from '../helpers/podman.ts'
import { installerImage, LOCK, podman, PREFIX, ROOT, SYSCONFDIR, writeConfigMapDir } from '../helpers/delivery.ts'
// Through libvirt-container.ts: this file runs once, its transports are its own subtests
// (scripts/test.mjs runs a file that names the e2e or transport helper once per transport).
import {
  allocateUid, cleanupStaleContainers, guestPids, HOST_PROC, installWith, libvirtdImage, libvirtdImageUnavailable, nsInode, qemuKubeLines, runLibvirtContainer, startAgent,
  status, until, type LibvirtContainer, type RunningAgent,
} from '../helpers/libvirt-container.ts'
import { domainXml, qemuConf } from '../helpers/libvirt.ts'
import { gidOf } from '../helpers/ids.ts'
import { AUD, ISS, rsaKey, type KeyPair } from '../helpers/tokens.ts'
import type { Installed } from '../helpers/install.ts'

const unavailable = podmanUnavailable() ?? libvirtdImageUnavailable()
if (unavailable) t.test('libvirt in a container', { skip: unavailable }, () => {})
else t.test('libvirt in a container', { timeout: 900_000 }, play)

const FRONT = `${PREFIX}/bin/qemu-kube`
const AGENT_DIR = `${SYSCONFDIR}/qemu-kube-agent`
const POD_NS = ['net', 'ipc', 'uts', 'cgroup'] as const

/** Holds LOCK (ROOT's paths are compiled into the installer image) until this process ends. */
function holdLock(): Promise<ChildProcess> {
  mkdirSync('/run/qemu-kube-test', { recursive: true, mode: 0o700 })
  return new Promise((res, rej) => {
    const p = spawn('flock', [LOCK, 'sh', '-c', 'echo locked; exec cat > /dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] })
    p.stdout!.once('data', () => res(p))
    p.once('error', rej)
  })
}

interface Vm { name: string; uuid: string; vmName: string; uid: number }

async function play(t: Test) {
  const lock = await holdLock()
  t.teardown(() => { lock.stdin?.end() })
  await cleanupStale()
  const stale = await cleanupStaleContainers()
  if (stale.length > 0) t.comment(`removed the leftovers of dead runs: ${stale.join(', ')}`)
  const inst = await installerImage()
  const lvImg = await libvirtdImage()
  t.comment(`installer ${inst.image} (${inst.seconds.toFixed(1)} s); libvirtd ${lvImg.image}: ${lvImg.packages} packages, `
    + `${(lvImg.bytes / 1e6).toFixed(0)} MB, ${lvImg.built ? 'staged' : 'cached'} in ${lvImg.seconds.toFixed(1)} s`)

  // The node: ROOT/qemu-kube and ROOT/etc are the host's PREFIX and SYSCONFDIR (the agent's);
  // ROOT/ctr-etc is bound at SYSCONFDIR inside the libvirt container.
  rmSync(ROOT, { recursive: true, force: true })
  for (const d of [ROOT, PREFIX, SYSCONFDIR, `${ROOT}/ctr-etc`, `${ROOT}/volumes`]) {
    mkdirSync(d, { mode: 0o755 })
    chmodSync(d, 0o755)
  }
  // The mount point of the agent's socket directory inside the read-only ctr-etc bind.
  mkdirSync(`${ROOT}/ctr-etc/qemu-kube-agent`, { mode: 0o700 })
  // The emptyDir: a podman named volume. podman mounts those nosuid by default (the installer
  // refuses such a target: the front's setuid bit would be ignored), a kubelet emptyDir is not.
  const volume = `qkt-${process.pid}-prefix`
  const containers: LibvirtContainer[] = []
  t.teardown(async () => {
    for (const c of containers) await c.remove()
    await podman(['volume', 'rm', '-f', volume])
    rmSync(ROOT, { recursive: true, force: true })
  })

  const key = await rsaKey()
  const keysDir = `${ROOT}/volumes/keys`
  writeConfigMapDir(keysDir, { 'token.pub': key.pem }, 0)
  const common = [`token_public_keys = [ "${SYSCONFDIR}/qemu-kube/token.pub" ]`, 'vm_uid_range = [ 20000, 29999 ]']
  const hostCfg = `${ROOT}/volumes/host-config`
  writeConfigMapDir(hostCfg, { 'qemu-kube.conf': [...common, `state_dir = "${ROOT}/state"`, ''].join('\n') }, 0)
  // The container's: the host's /proc where the container sees it; the cgroup tree of the host
  // is bound at /sys/fs/cgroup by the hostPID container (standalone joins the pod's cgroups itself).
  const ctrCfg = `${ROOT}/volumes/ctr-config`
  writeConfigMapDir(ctrCfg, { 'qemu-kube.conf': [...common, `proc_root = "${HOST_PROC}"`, 'state_dir = "/run/qemu-kube-state"', ''].join('\n') }, 0)
  writeFileSync(`${ROOT}/qemu.conf`, qemuConf('kvm'), { mode: 0o644 })
  const kvm = String(gidOf('kvm'))
  const installArgs = ['--target', '/target', '--sysconf-target', '/target-etc', '--config', '/config/qemu-kube.conf', '--keys', '/keys', '--group', kvm]

  await t.test('the installer image installs the host tree (the agent\'s) and, into an emptyDir-like volume, the container\'s', async (t) => {
    const host = await installWith(inst.image, {
      name: `qkt-${process.pid}-install-host`, args: installArgs,
      binds: [`${PREFIX}:/target`, `${SYSCONFDIR}:/target-etc`, `${hostCfg}:/config:ro`, `${keysDir}:/keys:ro`],
    })
    t.equal(host.code, 0, `host install: ${host.stderr}`)
    t.equal((await podman(['volume', 'create', volume])).code, 0, 'podman volume create')
    // As the kubelet makes an emptyDir: 0777 (podman's volume is 0755).
    const mountpoint = (await podman(['volume', 'inspect', '--format', '{{.Mountpoint}}', volume])).stdout.trim()
    chmodSync(mountpoint, 0o777)
    const vol = await installWith(inst.image, {
      name: `qkt-${process.pid}-install-vol`, args: [...installArgs, '--emptydir'],
      binds: [`${volume}:/target:suid`, `${ROOT}/ctr-etc:/target-etc`, `${ctrCfg}:/config:ro`, `${keysDir}:/keys:ro`],
    })
    t.equal(vol.code, 0, `volume install: ${vol.stderr}`)
    t.match(vol.stdout, /install-entrypoint: config ok/, 'the container\'s config passed the validator')
    t.match(vol.stdout, '/target is a fresh emptyDir (0777, empty): making it 0755', 'the emptyDir case')
    t.equal((statSync(mountpoint).mode & 0o7777).toString(8), '755', 'the volume is 0755 now')
    const front = statSync(`${mountpoint}/bin/qemu-kube`)
    t.same([(front.mode & 0o7777).toString(8), front.uid, front.gid], ['4755', 0, Number(kvm)], 'the front in the volume: 4755 root:kvm')
  })
  if (!existsSync(FRONT)) return

  const hostInst = { front: FRONT, sysconfdir: SYSCONFDIR } as Installed
  let agent: RunningAgent | undefined = await startAgent(t, hostInst)
  t.teardown(async () => { await agent?.stop() })

  // Order matters: the nested socket directory after the sysconfdir it sits in.
  const binds = [`${ROOT}/qemu.conf:/etc/libvirt/qemu.conf:ro`, `${volume}:${PREFIX}:suid`, `${ROOT}/ctr-etc:${SYSCONFDIR}:ro`, `${AGENT_DIR}:${AGENT_DIR}`]
  const lv = await runLibvirtContainer({ name: `qkt-${process.pid}-libvirtd`, image: lvImg.image, binds })
  containers.push(lv)

  let seq = 0
  const vm = (tag: string): Vm => ({ name: `qklc-${process.pid}-${tag}`, uuid: randomUUID(), vmName: `vm-${tag}`, uid: allocateUid() })
  const token = (v: Vm, signer: KeyPair = key) => {
    const now = Math.floor(Date.now() / 1000)
    return new SignJWT({ iss: ISS, aud: AUD, sub: v.uuid, vm_name: v.vmName, qemu_uid: v.uid, jti: `lc-${process.pid}-${seq++}`, iat: now, exp: now + 60 })
      .setProtectedHeader({ alg: 'RS256' }).sign(signer.privateKey)
  }
  const pod = async (t: Test, v: Vm, tok: string): Promise<PodmanPod> => {
    const p = await makePodmanPod({ uuid: v.uuid, name: v.vmName, token: tok, qemuUid: v.uid, extraArgs: ['-emulator', FRONT] })
    t.teardown(() => p.destroy())
    return p
  }
  const start = async (t: Test, c: LibvirtContainer, v: Vm, tok: string) => {
    const xml = domainXml({ name: v.name, uuid: v.uuid, emulator: FRONT, seclabelUid: v.uid,
      env: { KUBEVIRT_VM_UUID: v.uuid, KUBEVIRT_VM_NAME: v.vmName, KUBEVIRT_SECRET: tok } })
    const def = await c.sh('umask 077; cat > /tmp/domain.xml && virsh -c qemu:///system define /tmp/domain.xml; r=$?; rm -f /tmp/domain.xml; exit $r', [], xml)
    if (def.code !== 0) throw new Error(`virsh define in ${c.name}: ${def.stderr}`)
    t.teardown(async () => {
      await c.virsh(['destroy', v.name])
      await c.virsh(['undefine', v.name])
    })
    return c.virsh(['start', v.name])
  }
  const inPod = (t: Test, v: Vm, p: PodmanPod, c: LibvirtContainer): number | undefined => {
    const pids = guestPids(v.name, { qemu: true })
    t.equal(pids.length, 1, `one QEMU on the host runs guest ${v.name}`)
    const pid = pids[0]
    if (pid === undefined) return undefined
    t.match(readlinkSync(`/proc/${pid}/exe`), /\/qemu-system-x86_64$/, 'it is QEMU (exec in place)')
    for (const ns of POD_NS) t.equal(nsInode(pid, ns), p.ns[ns], `${ns} namespace is the pod's`)
    t.not(nsInode(pid, 'mnt'), nsInode(c.libvirtdPid, 'mnt'), 'not the libvirt container\'s mount namespace')
    t.not(nsInode(pid, 'mnt'), nsInode(process.pid, 'mnt'), 'nor the host\'s')
    t.equal(readFileSync(`/proc/${pid}/cgroup`, 'utf8'), readFileSync(`/proc/${p.pid}/cgroup`, 'utf8'), 'cgroups are the pod\'s, in every hierarchy')
    const st = status(pid)
    t.equal(st.Uid, `${v.uid}\t${v.uid}\t${v.uid}\t${v.uid}`, `runs as the VM's uid ${v.uid}`)
    for (const k of ['CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) t.equal(BigInt(`0x${st[k]}`), 0n, `${k} is empty`)
    return pid
  }

  await t.test('(a) no hostPID, the agent serves: virsh start in the container puts QEMU into the host pod', async (t) => {
    t.not(nsInode(lv.libvirtdPid, 'pid'), nsInode(process.pid, 'pid'), 'libvirtd has its own pid namespace (no hostPID)')
    // The host's procfs shows the container's processes under their host pids: its self exists
    // but is not the pid the process knows itself by (so standalone cannot pin or lease itself).
    const self = await lv.sh(`echo $$ $(readlink ${HOST_PROC}/self)`)
    const [own, host] = self.stdout.trim().split(' ').map(Number)
    t.ok(own! > 0 && host! > 0 && own !== host, `in the container, ${HOST_PROC}/self is the host pid (${host}), not the process's own (${own})`)
    const v = vm('a')
    const tok = await token(v)
    const p = await pod(t, v, tok)
    const r = await start(t, lv, v, tok)
    t.equal(r.code, 0, `virsh start: ${r.stderr}`)
    const log = await lv.domainLog(v.name)
    if (r.code !== 0) t.comment(log.split('\n').filter((l) => !l.includes('KUBEVIRT_SECRET')).slice(-12).join('\n'))
    const lines = qemuKubeLines(log)
    t.equal(lines.length, 1, 'one qemu-kube line in the domain log (inside the container)')
    const d = lines[0] ?? {}
    t.equal(d.outcome, 'authorised')
    t.equal(d.path, 'agent', 'decision path: agent')
    t.equal(d.target?.pid, p.pid, 'the decision names the pod\'s launcher by its host pid')
    t.equal(d.runAs?.uid, v.uid)
    const pid = inPod(t, v, p, lv)
    if (pid !== undefined) {
      t.equal(nsInode(pid, 'pid'), nsInode(lv.libvirtdPid, 'pid'), 'QEMU stays in libvirt\'s pid namespace (pid is not in namespaces)')
      const tracked = Number((await lv.sh(`cat /run/libvirt/qemu/${v.name}.pid`)).stdout.trim())
      t.equal(tracked, Number(status(pid).NSpid!.split(/\s+/).at(-1)), 'the pid libvirt tracks (its own pid namespace\'s) is QEMU')
      t.equal(d.pid, pid, 'the decision names the front by its host pid (SO_PEERCRED, translated by the kernel)')
    }
    t.ok(agent!.log().includes(v.uuid), 'the host agent logged the launch')
    const destroy = await lv.virsh(['destroy', v.name])
    t.equal(destroy.code, 0, destroy.stderr)
    await until('QEMU gone', () => guestPids(v.name).length === 0)
  })

  await t.test('(c) no hostPID, the agent stopped: ERR_AGENT_UNAVAILABLE, nothing starts', async (t) => {
    await agent!.stop()
    agent = undefined
    t.notOk(existsSync(`${AGENT_DIR}/agent.sock`), 'the stopped agent removed its socket')
    const v = vm('c')
    const tok = await token(v)
    const p = await pod(t, v, tok)
    const r = await start(t, lv, v, tok)
    t.not(r.code, 0, 'virsh start fails')
    const log = await lv.domainLog(v.name)
    t.comment(qemuKubeLines(log).map((l) => JSON.stringify(l)).join('\n'))
    const lines = qemuKubeLines(log)
    t.equal(lines.length, 1, 'one qemu-kube line in the domain log')
    const d = lines[0] ?? {}
    t.equal(d.outcome, 'refused')
    // CHAIN.md section 3: where standalone cannot work it refuses with ERR_AGENT_UNAVAILABLE,
    // whose message names the socket and AGENT.
    t.equal(d.code, 'ERR_AGENT_UNAVAILABLE', 'refused as ERR_AGENT_UNAVAILABLE')
    t.equal(d.path, 'standalone')
    t.equal(d.agent, 'absent')
    const m = /^\/host\/proc\/self is pid (\d+), not this process \(pid (\d+)\), so standalone cannot serve this launch; the agent at (\S+) did not \(AGENT=absent\)$/.exec(d.reason ?? '')
    t.ok(m, `the message names proc_root/self's pid, its own, the socket and AGENT: ${d.reason}`)
    t.equal(m?.[3], `${AGENT_DIR}/agent.sock`, 'the socket the front looked for')
    t.equal(Number(m?.[2]), d.pid, 'its own pid is the one it logs (the container\'s pid namespace)')
    t.not(m?.[1], m?.[2], 'proc_root/self names another pid')
    t.match(r.stderr, /ERR_AGENT_UNAVAILABLE/, 'virsh start quotes the refusal')
    t.same(guestPids(v.name), [], 'no QEMU for the guest')
    t.ok(existsSync(`/proc/${p.pid}`), 'the pod lives on')
  })

  await t.test('(b) hostPID, the agent stopped: standalone serves', async (t) => {
    await lv.remove()
    const b = await runLibvirtContainer({ name: `qkt-${process.pid}-libvirtd-hostpid`, image: lvImg.image, hostPid: true,
      binds: [...binds, '/sys/fs/cgroup:/sys/fs/cgroup'] })
    containers.push(b)
    t.equal(nsInode(b.libvirtdPid, 'pid'), nsInode(process.pid, 'pid'), 'libvirtd in the host pid namespace')
    const v = vm('b')
    const tok = await token(v)
    const p = await pod(t, v, tok)
    const r = await start(t, b, v, tok)
    t.equal(r.code, 0, `virsh start: ${r.stderr}`)
    const d = qemuKubeLines(await b.domainLog(v.name))[0] ?? {}
    t.equal(d.outcome, 'authorised')
    t.equal(d.path, 'standalone', 'decision path: standalone')
    t.equal(d.agent, 'absent')
    t.equal(d.target?.pid, p.pid)
    const pid = inPod(t, v, p, b)
    t.equal(Number((await b.sh(`cat /run/libvirt/qemu/${v.name}.pid`)).stdout.trim()), pid, 'the pid libvirt tracks is QEMU (one pid namespace: the host\'s)')
    t.equal(d.pid, pid, 'qemu-kube ran as that very pid')
    const destroy = await b.virsh(['destroy', v.name])
    t.equal(destroy.code, 0, destroy.stderr)
    await until('QEMU gone', () => guestPids(v.name).length === 0)
  })
}
