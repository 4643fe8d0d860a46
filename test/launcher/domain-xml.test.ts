import t from 'tap'
import { domainFragment } from '../../src/launcher/domain-xml.ts'

const f = { emulator: '/e', uuid: 'u', name: 'n', token: "a'b<c", qemuUid: 20001 }

t.test('the fragment, exactly', async (t) => {
  t.equal(domainFragment(f), `<!-- qemu-kube: where each piece goes in the domain XML:
     <emulator>          child of <devices>
     <seclabel>          child of <domain> (not <devices>): QEMU runs as this VM's own uid:gid
     <qemu:commandline>  child of <domain>; declare xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' on <domain> -->
<emulator>/e</emulator>
<seclabel type='static' model='dac' relabel='yes'><label>+20001:+20001</label></seclabel>
<qemu:commandline>
  <qemu:env name='KUBEVIRT_VM_UUID' value='u'/>
  <qemu:env name='KUBEVIRT_VM_NAME' value='n'/>
  <qemu:env name='KUBEVIRT_SECRET' value='a&apos;b&lt;c'/>
</qemu:commandline>
`)
})

t.test('the redacted fragment carries no token, and the same label', async (t) => {
  t.notMatch(domainFragment(f, true), /a&apos;b/)
  t.match(domainFragment(f, true), /KUBEVIRT_SECRET' value='\[redacted\]'/)
  t.match(domainFragment(f, true), /<label>\+20001:\+20001<\/label>/)
})

t.test('escapes every value', async (t) => {
  t.match(domainFragment({ ...f, emulator: '/a&b<' }), /<emulator>\/a&amp;b&lt;<\/emulator>/)
  t.match(domainFragment({ ...f, name: `x"y` }), /value='x&quot;y'/)
})
