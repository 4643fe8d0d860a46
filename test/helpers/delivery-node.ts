// A node as the DaemonSet leaves it, for tests that then use what it installed (issue 10 item 2's
// VM start): the installer image built (test/helpers/delivery.ts), deploy/daemonset.yaml's
// template played as a Pod with the given ConfigMaps, and its agent container run with the
// host's pid namespace (podman 4.3's kube play ignores hostPID; test/delivery/daemonset.test.ts
// asserts that). Everything is undone at teardown, in reverse order.
// Importing this file does nothing by itself (tap also runs test/helpers/*.ts as files).
//
//   const n = await deliveryNode(t, { config, keys: { 'token.pub': pem } })
//   n.front                         PREFIX/bin/qemu-kube, 4755 root:107, as the init container left it
//   await n.startAgent()            the manifest's agent command, --pid host; resolves when its socket is there
//   await n.stopAgent()             podman stop (SIGTERM): the agent drains and removes its socket
import { spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import type { Test } from 'tap'
import { cleanupStale, REPO } from './podman.ts'
import {
  daemonSetAsPod, installerImage, LOCK, podman, PREFIX, removeCgroupDirs, ROOT, SYSCONFDIR, writeConfigMapDir, type InstallerImage,
} from './delivery.ts'

// The e2e helpers a test on this node uses, re-exported: a test file naming helpers/e2e.ts is
// run once per transport by scripts/test.mjs, and one on this node covers both paths itself.
export {
  allocateUid, forgetCapabilities, logSince, logSize, LOG_DIR, monitorStatus, nsInode, qemuKubeLines, removeStaleDomains, status, UID_FIRST, UID_LAST,
} from './e2e.ts'

const PLACEHOLDER = 'registry.example.com/kubevirt/qemu-kube-installer:0.1.0'
export const FRONT = `${PREFIX}/bin/qemu-kube`
export const AGENT_SOCKET = `${SYSCONFDIR}/qemu-kube-agent/agent.sock`

export interface DeliveryNode {
  img: InstallerImage
  front: string
  pod: string
  /** kube play's wall time: the init container's install included (kube play waits for it). */
  playSeconds: number
  startAgent(): Promise<{ seconds: number }>
  stopAgent(): Promise<{ code: number; seconds: number }>
  agentLogs(): Promise<string>
}

/** Holds LOCK (ROOT's paths are compiled into the image) until the test ends, however it ends. */
export function holdDeliveryLock(t: Test): Promise<void> {
  mkdirSync('/run/qemu-kube-test', { recursive: true, mode: 0o700 })
  return new Promise((res, rej) => {
    // The holder reads its stdin until EOF, so the lock goes with this process at the latest.
    const p: ChildProcess = spawn('flock', [LOCK, 'sh', '-c', 'echo locked; exec cat > /dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] })
    p.stdout!.once('data', () => res())
    p.once('error', rej)
    t.teardown(() => { p.stdin?.end() })
  })
}

/** The DaemonSet played on this machine: config and keys shipped as the two ConfigMaps. */
export async function deliveryNode(t: Test, o: { config: string; keys: Record<string, string> }): Promise<DeliveryNode> {
  await holdDeliveryLock(t)
  await cleanupStale()
  const img = await installerImage()
  rmSync(ROOT, { recursive: true, force: true })
  mkdirSync(ROOT, { mode: 0o755 })
  chmodSync(ROOT, 0o755)
  const vol = `${ROOT}/volumes`
  mkdirSync(vol, { mode: 0o755 })
  const pod = `qkd-${process.pid}-node`
  const agent = `${pod}-agent-hostpid`
  const ids: string[] = []
  const idOf = async (kind: 'pod' | 'container', name: string) => {
    const id = (await podman([kind, 'inspect', '--format', '{{.Id}}', name])).stdout.trim()
    if (/^[0-9a-f]{64}$/.test(id)) ids.push(kind === 'pod' ? id : `libpod-${id}`)
  }
  t.teardown(async () => {
    await idOf('container', agent)
    await idOf('pod', pod)
    await podman(['rm', '-f', '-t', '10', agent])
    await podman(['pod', 'rm', '-f', '-t', '0', pod])
    await removeCgroupDirs(ids)
    rmSync(ROOT, { recursive: true, force: true })
  })

  writeConfigMapDir(`${vol}/config`, { 'qemu-kube.conf': o.config }, 0)
  writeConfigMapDir(`${vol}/keys`, o.keys, 0)
  const yaml = daemonSetAsPod(readFileSync(`${REPO}/deploy/daemonset.yaml`, 'utf8'), {
    name: pod, images: { [PLACEHOLDER]: img.image },
    // The node's mount namespace: this process's (PID 1 here refuses setns even to root).
    nodePaths: { '/var/lib/kubevirt/qemu-kube': PREFIX, '/etc/kubevirt': SYSCONFDIR, '/var/lib/kubevirt': ROOT, '"--target=1"': `"--target=${process.pid}"` },
    configMaps: { 'qemu-kube-config': `${vol}/config`, 'qemu-kube-token-keys': `${vol}/keys` },
  })
  writeFileSync(`${vol}/${pod}.yaml`, yaml)
  const played = await podman(['kube', 'play', '--network', 'none', `${vol}/${pod}.yaml`], 120_000)
  if (played.code !== 0) throw new Error(`kube play: exit ${played.code}: ${played.stderr.trim()}`)
  // The played agent container has the pod's own pid namespace: it goes, and the manifest's
  // command runs again with the host's (what hostPID gives on a node).
  await podman(['rm', '-f', '-t', '0', `${pod}-agent`])
  const command = JSON.parse(/- name: agent\n(?:.*\n)*? +command: (\[.*\])\n/.exec(yaml)![1]!) as string[]

  return {
    img, front: FRONT, pod, playSeconds: played.seconds,
    async startAgent() {
      const t0 = Date.now()
      await podman(['rm', '-f', '-t', '0', agent])
      const ran = await podman(['run', '-d', '--name', agent, '--pid', 'host', '--privileged', '--network', 'none', '--entrypoint', command[0]!, img.image, ...command.slice(1)])
      if (ran.code !== 0) throw new Error(`podman run agent: ${ran.stderr.trim()}`)
      for (const end = Date.now() + 30_000; !existsSync(AGENT_SOCKET);) {
        if (Date.now() > end) throw new Error(`the agent made no socket in 30 s: ${(await podman(['logs', agent])).stderr}`)
        await new Promise((r) => setTimeout(r, 100))
      }
      return { seconds: (Date.now() - t0) / 1000 }
    },
    async stopAgent() {
      const r = await podman(['stop', '-t', '10', agent])
      const code = Number((await podman(['inspect', '--format', '{{.State.ExitCode}}', agent])).stdout.trim())
      return { code: r.code === 0 ? code : -1, seconds: r.seconds }
    },
    async agentLogs() {
      const r = await podman(['logs', agent])
      return r.stdout + r.stderr
    },
  }
}
