// What `qemu-kube version` reports: the paths compiled in and the source revision, from
// scripts/build.mjs's QK_BUILD define (git describe at build time). Unbundled runs (tests)
// see the defaults and revision "unbundled".
import { SHARED } from '../shared/constants.ts'
import { CONFIG_PATH, PREFIX } from './paths.ts'

declare const QK_BUILD: { prefix: string; sysconfdir: string; revision?: string; version?: string } | undefined

export interface VersionInfo {
  version: string
  revision: string
  prefix: string
  sysconfdir: string
  config: string
}

export function versionInfo(): VersionInfo {
  const build = typeof QK_BUILD === 'undefined' ? undefined : QK_BUILD
  return {
    version: build?.version ?? 'unbundled',
    revision: build?.revision ?? 'unbundled',
    prefix: PREFIX,
    sysconfdir: build?.sysconfdir ?? SHARED.DEFAULT_SYSCONFDIR,
    config: CONFIG_PATH,
  }
}
