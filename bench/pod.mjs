// A real pod for the bench sections (root only), through the one pod helper the tests use
// (test/helpers/podman.ts: podman + runc, the launcher image, a Kubernetes-style Secret volume).
// The helper is TypeScript, so it is bundled here with esbuild (as bench/storm.mjs bundles its
// helpers) and re-exported in the shape bench/startup.mjs uses.
import { build } from 'esbuild'
import { dirname } from 'node:path'
import { pathToFileURL } from 'node:url'
import { buildDirectory, ROOT } from './lib.mjs'

const outfile = `${buildDirectory()}/podman-helper.mjs`
await build({
  stdin: {
    contents: "export * from './test/helpers/podman.ts'\nexport { hierarchies } from './test/helpers/pod.ts'\n",
    resolveDir: ROOT,
    loader: 'ts',
    sourcefile: 'bench-pod.ts',
  },
  outfile,
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  // Both helpers find the repository from their own directory.
  define: { 'import.meta.dirname': JSON.stringify(`${ROOT}/test/helpers`) },
  logLevel: 'warning',
})
const h = await import(pathToFileURL(outfile).href)

/** Every cgroup hierarchy this process is in: { key, version, mountPoint }. */
export const hierarchies = h.hierarchies
export const helper = h

/**
 * Starts a pod whose launcher (the real virt-launcher from the launcher image) carries the VM's
 * uuid and name, with the token at secretPath in the pod only. `pause` is no longer the launcher;
 * its directory (the bench's build dir: the stand-in QEMU, the C floor) is bound read-only into
 * the pod, with /usr/bin/readlink, because the startup rows exec those inside the pod's mount
 * namespace (the image has neither). The pod shares the host's pid namespace (`--pid host`), as
 * the earlier unshare pods did: the floor row checks where it landed by reading /proc/self/ns
 * inside the pod, and a pod's own /proc has no /proc/self for a host-pid process (docs/PODS.md).
 * Returns { pid, cgroups (directories), ns: { mnt, net, ipc, uts, cgroup } (link text), pod,
 * destroy() -> the cgroup directories left }.
 */
export async function makePod({ uuid, name, token, secretPath, pause, qemuUid }) {
  await h.cleanupStale()
  const volumes = ['/usr/bin/readlink:/usr/bin/readlink:ro', ...(pause ? [`${dirname(pause)}:${dirname(pause)}:ro`] : [])]
  const pod = await h.makePodmanPod({ uuid, name, token, secretPath, volumes, hostPid: true, ...(qemuUid === undefined ? {} : { qemuUid }) })
  const ns = Object.fromEntries(['mnt', 'net', 'ipc', 'uts', 'cgroup'].map((n) => [n, `${n}:[${pod.ns[n]}]`]))
  return {
    pid: pod.pid,
    cgroups: [...Object.values(pod.cgroups.v1), ...(pod.cgroups.v2 ? [pod.cgroups.v2] : [])],
    ns,
    pod,
    destroy: () => pod.removeSync(),
  }
}
