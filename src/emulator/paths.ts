// Paths fixed when qemu-kube is built (scripts/build.mjs defines QK_BUILD), never taken from
// the caller's argv or environment. Unbundled runs (unit tests) see the defaults.
declare const QK_BUILD: { prefix: string; sysconfdir: string } | undefined

const build = typeof QK_BUILD === 'undefined' ? { prefix: '/var/lib/kubevirt/qemu-kube', sysconfdir: '/etc/kubevirt' } : QK_BUILD

export const PREFIX = build.prefix
export const CONFIG_PATH = `${build.sysconfdir}/qemu-kube.conf`
export const ENTER_PATH = `${build.prefix}/libexec/qemu-kube/qemu-kube-enter`
/** The resident verifier's socket (docs/CHAIN.md section 3): root-only, beside the config. */
export const AGENT_SOCKET = `${build.sysconfdir}/qemu-kube-agent/agent.sock`
/** Longest agent request (the front's argv and environment, framed). */
export const AGENT_MAX_REQUEST = 256 * 1024
