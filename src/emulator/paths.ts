// Paths fixed when qemu-kube is built (scripts/build.mjs defines QK_BUILD), never taken from
// the caller's argv or environment. Unbundled runs (unit tests) see the defaults.
import { SHARED } from '../shared/constants.ts'

declare const QK_BUILD: { prefix: string; sysconfdir: string } | undefined

const build = typeof QK_BUILD === 'undefined' ? { prefix: SHARED.DEFAULT_PREFIX, sysconfdir: SHARED.DEFAULT_SYSCONFDIR } : QK_BUILD

export const PREFIX = build.prefix
export const CONFIG_PATH = `${build.sysconfdir}/qemu-kube.conf`
export const ENTER_PATH = `${build.prefix}/libexec/qemu-kube/qemu-kube-enter`
/** The resident verifier's socket (docs/CHAIN.md section 3): root-only, beside the config. */
export const AGENT_SOCKET = `${build.sysconfdir}/qemu-kube-agent/agent.sock`
/** Longest agent request (the front's argv and environment, framed). */
export const AGENT_MAX_REQUEST = SHARED.AGENT_MAX_REQUEST
