import t from 'tap'
import { parseArgs } from '../../src/launcher/args.ts'
import { domainFragment } from '../../src/launcher/domain-xml.ts'
import { carriesVm } from '../../src/emulator/target.ts'

t.test('Go flag forms', async (t) => {
  const want = { uuid: 'u-1', name: 'vm1', secretPath: '/var/run/kubevirt/qemu-kube/token', emulator: '/var/lib/kubevirt/qemu-kube/bin/qemu-kube' }
  t.same(parseArgs(['-kubevirt.vm.uuid', 'u-1', '-kubevirt.vm.name', 'vm1']), want)
  t.same(parseArgs(['--kubevirt.vm.uuid=u-1', '-kubevirt.vm.name=vm1']), want)
  t.same(parseArgs(['-kubevirt.vm.uuid', 'u-1', '-kubevirt.vm.name', 'vm1', '-secret-path', '/s', '--ready-file=/r']),
    { ...want, secretPath: '/s', readyFile: '/r' })
})

t.test('bad command lines are refused with ERR_USAGE', async (t) => {
  t.throws(() => parseArgs([]), { code: 'ERR_USAGE' })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'u']), { code: 'ERR_USAGE', message: /required/ })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'u', '-kubevirt.vm.name']), { code: 'ERR_USAGE', message: /needs a value/ })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'u', '-kubevirt.vm.name', 'n', '-bogus', 'x']), { code: 'ERR_USAGE', message: /unknown flag/ })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'a b', '-kubevirt.vm.name', 'n']), { code: 'ERR_USAGE' })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'u', '-kubevirt.vm.name', 'n', '-secret-path', 'rel']), { code: 'ERR_USAGE' })
})

t.test('what the launcher accepts, qemu-kube finds', async (t) => {
  for (const argv of [['-kubevirt.vm.uuid', 'u-1', '-kubevirt.vm.name', 'vm1'], ['--kubevirt.vm.uuid=u-1', '--kubevirt.vm.name=vm1']]) {
    parseArgs(argv)
    t.ok(carriesVm(['virt-launcher', '/x/virt-launcher.cjs', ...argv], 'u-1', 'vm1'))
  }
})

t.test('the domain XML fragment escapes values and can redact the token', async (t) => {
  const f = { emulator: '/e', uuid: 'u', name: 'n', token: "a'b<c" }
  t.match(domainFragment(f), /value='a&apos;b&lt;c'/)
  t.notMatch(domainFragment(f, true), /a&apos;b/)
  t.match(domainFragment(f, true), /KUBEVIRT_SECRET' value='\[redacted\]'/)
  t.match(domainFragment(f), /<emulator>\/e<\/emulator>/)
})
