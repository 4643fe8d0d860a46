import t from 'tap'
import { carryPlan } from '../../src/emulator/carry.ts'

const ROOTS = ['/var/lib/libvirt/qemu', '/run/libvirt/qemu']
const refusal = (argv: string[]) => {
  try {
    carryPlan(argv, ROOTS)
  } catch (e) {
    return { code: (e as { code: string }).code, message: (e as Error).message }
  }
  return undefined
}

t.test('libvirt 9.0\'s launch argv: the domain directory of its master key is carried, nothing else', async (t) => {
  const argv = ['-name', 'guest=vm1,debug-threads=on', '-S', '-object',
    '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-3-vm1/master-key.aes"}',
    '-chardev', 'socket,id=charmonitor,fd=28,server=on,wait=off',
    '-chardev', 'socket,id=charchannel0,path=/var/lib/libvirt/qemu/channel/target/domain-3-vm1/org.qemu.guest_agent.0,server=on,wait=off']
  t.same(carryPlan(argv, ROOTS), {
    dirs: ['/var/lib/libvirt/qemu/channel/target/domain-3-vm1', '/var/lib/libvirt/qemu/domain-3-vm1'],
    roots: ['/var/lib/libvirt/qemu'],
  })
})

t.test('an argv naming no libvirt file carries nothing; other host paths are not ours to judge', async (t) => {
  t.same(carryPlan(['-m', '64', '-drive', 'file=/var/lib/images/x.qcow2', '-x', '/srv/var/lib/libvirt/qemu/domain-1-a/k', '/var/lib/libvirt/qemu-other/y'], ROOTS),
    { dirs: [], roots: [] })
})

t.test('paths under a libvirt root but outside a domain-N-NAME directory are refused', async (t) => {
  t.same(refusal(['-drive', 'file=/var/lib/libvirt/qemu/nvram/vm1_VARS.fd']), {
    code: 'ERR_CARRY_OUTSIDE',
    message: 'QEMU\'s argv names "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd", which is not inside a domain-N-NAME directory under /var/lib/libvirt/qemu',
  })
  t.same(refusal(['-x', 'path=/var/lib/libvirt/qemu']), { code: 'ERR_CARRY_OUTSIDE', message: 'QEMU\'s argv names /var/lib/libvirt/qemu itself; only domain-N-NAME directories under it are carried' })
  t.equal(refusal(['file=/var/lib/libvirt/qemu/domain-3-vm1/../domain-4-vm2/master-key.aes'])?.code, 'ERR_CARRY_OUTSIDE', '.. out of the domain dir')
  t.equal(refusal(['file=/run/libvirt/qemu/swtpm/3-vm1-swtpm.sock'])?.code, 'ERR_CARRY_OUTSIDE', 'shared run dirs')
  t.equal(refusal(['file=/var/lib/libvirt/qemu/domain-3-vm1,,x/k'])?.code, 'ERR_CARRY_OUTSIDE', 'QEMU\'s escaped comma')
  t.equal(refusal(['file=/var/lib/libvirt/qemu/domain-3-vm1/a\\b'])?.code, 'ERR_CARRY_OUTSIDE', 'a backslash')
})

t.test('a directory named by two argv elements is carried once; /run roots too', async (t) => {
  t.same(carryPlan(['file=/run/libvirt/qemu/domain-9-x/a', 'path=/run/libvirt/qemu/domain-9-x/b', '"/run/libvirt/qemu/domain-9-x"'], ROOTS),
    { dirs: ['/run/libvirt/qemu/domain-9-x'], roots: ['/run/libvirt/qemu'] })
})
