// The part of the libvirt domain XML that routes a VM through qemu-kube: the emulator, the VM's
// own host identity, and the three <qemu:env> entries qemu-kube reads. The token is the only
// secret in it; `redacted` is what the launcher prints to its log.
//
// The <seclabel> is libvirt's per-domain DAC label. With security_driver = "none" libvirt 9.0
// still honours it (measured): the emulator runs as N:N with groups [N], and the domain's
// directory and master key are chowned to N. gid = uid, not the shared kvm group, because a
// group shared by all QEMUs could enter every other domain's directory.

export interface Fragment {
  emulator: string
  uuid: string
  name: string
  token: string
  qemuUid: number
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;')

export function domainFragment(f: Fragment, redacted = false): string {
  const token = redacted ? '[redacted]' : f.token
  return [
    `<!-- qemu-kube: where each piece goes in the domain XML:`,
    `     <emulator>          child of <devices>`,
    `     <seclabel>          child of <domain> (not <devices>): QEMU runs as this VM's own uid:gid`,
    `     <qemu:commandline>  child of <domain>; declare xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' on <domain> -->`,
    `<emulator>${esc(f.emulator)}</emulator>`,
    `<seclabel type='static' model='dac' relabel='yes'><label>+${f.qemuUid}:+${f.qemuUid}</label></seclabel>`,
    '<qemu:commandline>',
    `  <qemu:env name='KUBEVIRT_VM_UUID' value='${esc(f.uuid)}'/>`,
    `  <qemu:env name='KUBEVIRT_VM_NAME' value='${esc(f.name)}'/>`,
    `  <qemu:env name='KUBEVIRT_SECRET' value='${esc(token)}'/>`,
    '</qemu:commandline>',
    '',
  ].join('\n')
}
