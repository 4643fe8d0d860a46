// Delivery for real: the installer image built from initcontainer/Dockerfile with podman (an
// offline base, scripts/delivery-base-image.mjs), and deploy/daemonset.yaml's pod template
// played as a Pod with hostPath volumes under a temp root: the init container validates the
// ConfigMap, installs the keys, the tree and the 4755 root:GROUP front; the agent container runs
// `qemu-kube agent` from that tree. An invalid ConfigMap fails the init container and leaves the
// node as it was. deploy/uninstall.yaml, played the same way, leaves no setuid file.
// Root and podman only; the podman store is test/helpers/podman.ts's.
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs'
import { cleanupStale } from '../helpers/podman.ts'
import { daemonSetAsPod, installerImage, LOCK, podman, PREFIX, removeCgroupDirs, ROOT, sh, SYSCONFDIR, writeConfigMapDir } from '../helpers/delivery.ts'
import { REPO } from '../helpers/install.ts'
import { rsaKey } from '../helpers/tokens.ts'

const PLACEHOLDER = 'registry.example.com/kubevirt/qemu-kube-installer:0.1.0'
const GID = '107'
const why = process.getuid?.() !== 0 ? `not root (uid ${process.getuid?.()})`
  : ['/usr/bin/podman', '/usr/sbin/runc', '/usr/bin/flock', '/usr/bin/mmdebstrap'].find((b) => !existsSync(b))
const unavailable = typeof why === 'string' && why.startsWith('/') ? `no ${why} (run scripts/setup.sh; mmdebstrap: apt-get install mmdebstrap)` : why

if (unavailable) t.test('delivery with podman', { skip: unavailable }, () => {})
else t.test('delivery with podman', { timeout: 900_000 }, play)

/** Holds LOCK (ROOT's paths are compiled into the image) until the returned process is killed. */
function holdLock(): Promise<ChildProcess> {
  mkdirSync('/run/qemu-kube-test', { recursive: true, mode: 0o700 })
  return new Promise((res, rej) => {
    // Released when this process ends, however it ends: the holder reads its stdin until EOF.
    const p = spawn('flock', [LOCK, 'sh', '-c', 'echo locked; exec cat > /dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] })
    p.stdout!.once('data', () => res(p))
    p.once('error', rej)
  })
}

async function play(t: Test) {
  const lock = await holdLock()
  t.teardown(() => {
    lock.stdin?.end()
  })
  await cleanupStale()
  const img = await installerImage()
  t.comment(`installer image ${img.image}: ${(img.bytes / 1e6).toFixed(0)} MB, built in ${img.seconds.toFixed(1)} s `
    + `(base ${img.base} ${img.baseBuilt ? 'built' : 'cached'}, ${img.baseSeconds.toFixed(1)} s)`)
  t.ok(img.bytes < 150e6, `the final image is small (${img.bytes} bytes): one Node, no base image`)

  rmSync(ROOT, { recursive: true, force: true })
  mkdirSync(ROOT, { mode: 0o755 })
  chmodSync(ROOT, 0o755)
  const vol = `${ROOT}/volumes`
  mkdirSync(vol, { mode: 0o755 })
  const pods = new Set<string>()
  const agents = new Set<string>()
  const removedIds: string[] = []
  const ids = async (kind: 'pod' | 'container', names: Iterable<string>) => {
    const out: string[] = []
    for (const n of names) {
      const id = (await podman([kind, 'inspect', '--format', '{{.Id}}', n])).stdout.trim()
      if (/^[0-9a-f]{64}$/.test(id)) out.push(kind === 'pod' ? id : `libpod-${id}`)
    }
    return out
  }
  t.teardown(async () => {
    const dirs = [...await ids('container', agents), ...await ids('pod', pods)]
    for (const a of agents) await podman(['rm', '-f', '-t', '10', a])
    for (const p of pods) await podman(['pod', 'rm', '-f', '-t', '0', p])
    await removeCgroupDirs([...dirs, ...removedIds])
    rmSync(ROOT, { recursive: true, force: true })
  })

  const configDir = `${vol}/config`
  const keysDir = `${vol}/keys`
  const config = [
    'vm_uid_range = [ 65534, 65534 ]',
    `token_public_keys = [ "${SYSCONFDIR}/qemu-kube/token.pub" ]`,
    `state_dir = "${ROOT}/state"`,
    '',
  ].join('\n')
  writeConfigMapDir(configDir, { 'qemu-kube.conf': config }, 0)
  const key = (await rsaKey()).pem
  writeConfigMapDir(keysDir, { 'token.pub': key }, 0)

  const manifest = (file: string, name: string) => {
    const yaml = daemonSetAsPod(readFileSync(`${REPO}/deploy/${file}`, 'utf8'), {
      name, images: { [PLACEHOLDER]: img.image },
      // The node's mount namespace is PID 1's on a node; here PID 1 (the VM's init) refuses
      // setns even to root (EACCES, measured), and the "node" is this process's namespace.
      nodePaths: { '/var/lib/kubevirt/qemu-kube': PREFIX, '/etc/kubevirt': SYSCONFDIR, '/var/lib/kubevirt': ROOT, '"--target=1"': `"--target=${process.pid}"` },
      configMaps: file === 'daemonset.yaml' ? { 'qemu-kube-config': configDir, 'qemu-kube-token-keys': keysDir } : {},
    })
    const path = `${vol}/${name}.yaml`
    writeFileSync(path, yaml)
    pods.add(name)
    return path
  }
  const kubePlay = (path: string) => podman(['kube', 'play', '--network', 'none', path], 120_000)
  const logs = async (ctr: string) => {
    const r = await podman(['logs', ctr])
    return r.stdout + r.stderr
  }
  const state = async (ctr: string) => (await podman(['inspect', '--format', '{{.State.Status}} {{.State.ExitCode}}', ctr])).stdout.trim()
  const waitFor = async (what: string, cond: () => boolean | Promise<boolean>, ms = 20_000) => {
    for (const end = Date.now() + ms; Date.now() < end;) {
      if (await cond()) return true
      await new Promise((r) => setTimeout(r, 100))
    }
    t.fail(`timed out: ${what}`)
    return false
  }

  const pod = `qkd-${process.pid}-install`
  const played = await kubePlay(manifest('daemonset.yaml', pod))
  t.equal(played.code, 0, played.stderr)
  t.comment(`DaemonSet pod played in ${played.seconds.toFixed(1)} s`)
  const front = `${PREFIX}/bin/qemu-kube`

  // The succeeded init container is removed by podman with its log: its effects are the test.
  t.test('the init container validated the ConfigMap and installed keys, tree and config', async (t) => {
    const st = statSync(front)
    t.same([st.mode.toString(8), st.uid, st.gid], ['104755', 0, Number(GID)], 'the front: 4755 root:107')
    const conf = lstatSync(`${SYSCONFDIR}/qemu-kube.conf`)
    t.ok(conf.isFile(), 'the config is a file, not the volume\'s symlink')
    t.equal(readFileSync(`${SYSCONFDIR}/qemu-kube.conf`, 'utf8'), config)
    const k = statSync(`${SYSCONFDIR}/qemu-kube/token.pub`)
    t.same([k.mode.toString(8), k.uid, k.gid], ['100644', 0, 0], 'the key: root 0644 beside the config')
    t.equal(readFileSync(`${SYSCONFDIR}/qemu-kube/token.pub`, 'utf8'), key)
  })

  t.test('the agent container runs qemu-kube agent from the installed tree', async (t) => {
    const sock = `${SYSCONFDIR}/qemu-kube-agent/agent.sock`
    // podman 4.3's kube play ignores hostPID (PidMode "private", measured): the manifest's agent
    // container, as played, cannot see the node's pids. It is run again as the manifest says
    // (its image, command, privileged) with the host's pid namespace, which is what hostPID gives.
    t.equal((await podman(['inspect', '--format', '{{.HostConfig.PidMode}}', `${pod}-agent`])).stdout.trim(), 'private', 'kube play ignored hostPID')
    await podman(['rm', '-f', '-t', '0', `${pod}-agent`])
    const yaml = readFileSync(`${vol}/${pod}.yaml`, 'utf8')
    const command = JSON.parse(/- name: agent\n(?:.*\n)*? +command: (\[.*\])\n/.exec(yaml)![1]!) as string[]
    const agent = `${pod}-agent-hostpid`
    agents.add(agent)
    const ran = await podman(['run', '-d', '--name', agent, '--pid', 'host', '--privileged', '--network', 'none', '--entrypoint', command[0]!, img.image, ...command.slice(1)])
    t.equal(ran.code, 0, ran.stderr)
    if (!await waitFor('the agent socket', () => existsSync(sock))) {
      t.comment(`agent: ${await state(agent)}: ${await logs(agent)}`)
      return
    }
    t.ok(lstatSync(sock).isSocket(), 'its socket, where the fronts look')
    t.equal(statSync(`${SYSCONFDIR}/qemu-kube-agent`).mode.toString(8), '40700', 'its directory 0700')
    t.match(await state(agent), /^running /)
    const status = await sh(front, ['status', '--output', 'json'])
    t.equal(status.code, 0, `qemu-kube status through the agent: ${status.stderr}`)
  })

  t.test('an invalid ConfigMap fails the init container; the node keeps what it has', async (t) => {
    removedIds.push(...await ids('container', agents), ...await ids('pod', [pod]))
    for (const a of agents) await podman(['rm', '-f', '-t', '10', a])
    agents.clear()
    await podman(['pod', 'rm', '-f', '-t', '10', pod])
    const ino = statSync(front).ino
    writeConfigMapDir(configDir, { 'qemu-kube.conf': `${config}log_levle = "debug"\n` }, 1)
    const bad = `qkd-${process.pid}-bad`
    const r = await kubePlay(manifest('daemonset.yaml', bad))
    t.equal(r.code, 125, 'kube play fails')
    t.match(r.stderr, /Error: init container [0-9a-f]{64} exited with code 78\n/, 'the init container exits 78')
    t.match(await logs(`${bad}-install`), /install-entrypoint: refusing the config, nothing installed: \{"ok":false,"code":"ERR_CONFIG_INVALID","message":"[^"]*qemu-kube\.conf:4: unknown key log_levle \(did you mean log_level\?\)"\}/)
    t.equal(statSync(front).ino, ino, 'the front was not replaced')
    t.equal(readFileSync(`${SYSCONFDIR}/qemu-kube.conf`, 'utf8'), config, 'the config was not replaced')
    removedIds.push(...await ids('pod', [bad]))
    await podman(['pod', 'rm', '-f', '-t', '0', bad])
  })

  t.test('deploy/uninstall.yaml leaves no setuid file', async (t) => {
    const un = `qkd-${process.pid}-uninstall`
    const r = await kubePlay(manifest('uninstall.yaml', un))
    t.equal(r.code, 0, r.stderr)
    // Its init container succeeded (kube play waits for it), so podman removed it and its log.
    t.match(await state(`${un}-done`), /^running /, 'the pod reached its done container')
    t.notOk(existsSync(PREFIX), 'the prefix is gone')
    const left = await sh('find', [ROOT, '-xdev', '-perm', '/6000'])
    t.equal(left.stdout, '', 'no setuid or setgid file under the temp root')
    t.ok(existsSync(`${SYSCONFDIR}/qemu-kube.conf`), 'the config stays')
  })
}
