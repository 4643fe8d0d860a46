import t from 'tap'
import { classify, isProbe } from '../../src/emulator/invocation.ts'

// Verbatim from ../shared/facts/libvirt-9.0-emulator-invocation.txt, section 1.
const PROBE = ['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none,accel=kvm:tcg',
  '-qmp', 'unix:/var/lib/libvirt/qemu/qmp-SWYIZ3/qmp.monitor,server=on,wait=off',
  '-pidfile', '/var/lib/libvirt/qemu/qmp-SWYIZ3/qmp.pid', '-daemonize']
const LAUNCH = ['-name', 'guest=probe1,debug-threads=on', '-S', '-machine', 'pc-i440fx-7.2', '-chardev', 'socket,id=charmonitor,fd=28,server=on,wait=off']
const ENV = { KUBEVIRT_VM_UUID: '1234-5678-1234-1234', KUBEVIRT_VM_NAME: 'testvm', KUBEVIRT_SECRET: 'a.b.c' }

t.test('libvirt\'s capability probe and the version queries are probes', async (t) => {
  t.equal(classify({}, PROBE).kind, 'probe')
  t.equal(classify({}, PROBE.map((a) => a.replace('kvm:tcg', 'tcg'))).kind, 'probe')
  for (const q of ['-help', '-version', '--version']) t.equal(classify({}, [q]).kind, 'probe', q)
})

t.test('anything else without a token is refused', async (t) => {
  t.throws(() => classify({}, LAUNCH), { code: 'ERR_ENV_MISSING' })
  t.throws(() => classify({}, []), { code: 'ERR_ENV_MISSING' })
  t.notOk(isProbe([...PROBE, '-device', 'virtio-net']), 'an extra option')
  t.notOk(isProbe([...PROBE, '-S']), 'a repeated option')
  t.notOk(isProbe(PROBE.map((a) => a.replace('none,', 'pc,'))), 'a real machine')
  t.notOk(isProbe(['-S', '-qmp', 'unix:/x,server=on,wait=off']), 'no -machine')
  t.notOk(isProbe(['-version', '-help']))
})

t.test('a probe-shaped argv with any KUBEVIRT_* variable is a launch', async (t) => {
  t.throws(() => classify({ KUBEVIRT_VM_UUID: 'x' }, PROBE), { code: 'ERR_ENV_MISSING', message: /KUBEVIRT_VM_NAME, KUBEVIRT_SECRET/ })
  const inv = classify(ENV, PROBE)
  t.equal(inv.kind, 'launch')
})

t.test('a launch needs all three variables, well-formed', async (t) => {
  const inv = classify(ENV, LAUNCH)
  t.same(inv, { kind: 'launch', vm: { uuid: ENV.KUBEVIRT_VM_UUID, name: 'testvm' }, token: 'a.b.c', argv: LAUNCH })
  t.throws(() => classify({ ...ENV, KUBEVIRT_SECRET: '' }, LAUNCH), { code: 'ERR_ENV_MISSING', message: /KUBEVIRT_SECRET/ })
  t.throws(() => classify({ ...ENV, KUBEVIRT_VM_NAME: 'a b' }, LAUNCH), { code: 'ERR_ENV_INVALID', message: /KUBEVIRT_VM_NAME/ })
  t.throws(() => classify({ ...ENV, KUBEVIRT_VM_UUID: '-rf' }, LAUNCH), { code: 'ERR_ENV_INVALID' })
  t.throws(() => classify({ ...ENV, KUBEVIRT_VM_UUID: 'x'.repeat(300) }, LAUNCH), { code: 'ERR_ENV_INVALID' })
})
