// qemu-kube installed for real (scripts/install.sh: setuid front, helper, bundle, koffi) under
// a temporary prefix and sysconfdir, with a config the test writes. Root only.
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { resolve } from 'node:path'
import type { Test } from 'tap'

export const REPO = resolve(import.meta.dirname, '../..')
export const FIXTURES = `${REPO}/dist/native/fixtures`

export interface Installed {
  prefix: string
  sysconfdir: string
  front: string
  configPath: string
  writeConfig(lines: Record<string, unknown>, mode?: number): void
}

/** TOML values for a config: strings quoted, arrays bracketed. */
export function toml(lines: Record<string, unknown>): string {
  return Object.entries(lines).map(([k, v]) => `${k} = ${JSON.stringify(v)}\n`).join('')
}

export function installTemp(t: Test, group: string): Installed {
  // Under /var/tmp: root-owned sticky ancestors are acceptable to the front, and the install
  // dir itself is made 0755 so the unprivileged caller can reach the front.
  const base = mkdtempSync('/var/tmp/qk-install-')
  chmodSync(base, 0o755)
  const prefix = `${base}/prefix`
  const sysconfdir = `${base}/etc`
  execFileSync('bash', [`${REPO}/scripts/install.sh`, '--prefix', prefix, '--sysconfdir', sysconfdir, '--group', group], { stdio: ['ignore', 'ignore', 'inherit'] })
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  const configPath = `${sysconfdir}/qemu-kube.conf`
  return {
    prefix,
    sysconfdir,
    front: `${prefix}/bin/qemu-kube`,
    configPath,
    writeConfig(lines, mode = 0o644) {
      writeFileSync(configPath, toml(lines))
      chmodSync(configPath, mode)
    },
  }
}
