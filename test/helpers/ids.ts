// Host user and group ids by name, for tests that run things as libvirt-qemu, nobody, kvm.
import { readFileSync } from 'node:fs'

const idIn = (file: string, name: string) => {
  const row = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith(`${name}:`))
  if (row === undefined) throw new Error(`no ${name} in ${file}`)
  return Number(row.split(':')[2])
}

export const uidOf = (name: string) => idIn('/etc/passwd', name)
export const gidOf = (name: string) => idIn('/etc/group', name)
