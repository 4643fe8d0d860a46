// Pods for the bench sections (root only), through the helpers the tests use, bundled here with
// esbuild (they are TypeScript):
//   helper.makePodmanPod   test/helpers/podman.ts: a REAL pod (podman + runc, the launcher
//                          image's virt-launcher, a Kubernetes-style Secret volume, the pod link)
//   makeUnsharePod         test/helpers/pod.ts: the stand-in pod (the pause fixture as
//                          "virt-launcher" in its own mnt/net/ipc/uts/cgroup namespaces and fresh
//                          cgroups; nothing listens, so a config for it sets pod_link_socket = "")
//   hierarchies            every cgroup hierarchy this process is in: { key, version, mountPoint }
import { bundleHelpers } from './lib.mjs'

export const helper = await bundleHelpers('pod-helpers',
  "export * from './test/helpers/podman.ts'\nexport { hierarchies, makePod as makeUnsharePod } from './test/helpers/pod.ts'\n")
export const { hierarchies, makeUnsharePod } = helper
