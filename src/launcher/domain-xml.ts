// The part of the libvirt domain XML that routes a VM through qemu-kube: the emulator, and the
// three <qemu:env> entries it reads. The token is the only secret in it; `redacted` is what the
// launcher prints to its log.

export interface Fragment {
  emulator: string
  uuid: string
  name: string
  token: string
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;')

export function domainFragment(f: Fragment, redacted = false): string {
  const token = redacted ? '[redacted]' : f.token
  return [
    `<!-- qemu-kube: put <emulator> under <devices>, and declare xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' on <domain> -->`,
    `<emulator>${esc(f.emulator)}</emulator>`,
    '<qemu:commandline>',
    `  <qemu:env name='KUBEVIRT_VM_UUID' value='${esc(f.uuid)}'/>`,
    `  <qemu:env name='KUBEVIRT_VM_NAME' value='${esc(f.name)}'/>`,
    `  <qemu:env name='KUBEVIRT_SECRET' value='${esc(token)}'/>`,
    '</qemu:commandline>',
    '',
  ].join('\n')
}
