import t from 'tap'
import { DEFAULT_QEMU_LINK, parseArgs } from '../../src/launcher/args.ts'
import { carriesVm } from '../../src/emulator/target.ts'

const VM = ['-kubevirt.vm.uuid', 'u-1', '-kubevirt.vm.name', 'vm1', '-qemu-uid', '20001']
const refuses = (argv: string[], message: string) => t.throws(() => parseArgs(argv), { code: 'ERR_USAGE', message })

t.test('Go flag forms', async (t) => {
  const want = {
    uuid: 'u-1', name: 'vm1', secretPath: '/var/run/kubevirt/qemu-kube/token', emulator: '/var/lib/kubevirt/qemu-kube/bin/qemu-kube',
    qemuUid: 20001, qemuLink: DEFAULT_QEMU_LINK, qemuStopTimeout: 10,
  }
  t.strictSame(parseArgs(VM), want)
  t.strictSame(parseArgs(['--kubevirt.vm.uuid=u-1', '-kubevirt.vm.name=vm1', '--qemu-uid=20001']), want)
  t.strictSame(parseArgs([...VM, '-secret-path', '/s', '--ready-file=/r']), { ...want, secretPath: '/s', readyFile: '/r' })
})

t.test('bad command lines are refused with ERR_USAGE', async (t) => {
  t.throws(() => parseArgs([]), { code: 'ERR_USAGE' })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'u']), { code: 'ERR_USAGE', message: /required/ })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'u', '-kubevirt.vm.name']), { code: 'ERR_USAGE', message: /needs a value/ })
  t.throws(() => parseArgs([...VM, '-bogus', 'x']), { code: 'ERR_USAGE', message: /unknown flag/ })
  t.throws(() => parseArgs(['-kubevirt.vm.uuid', 'a b', '-kubevirt.vm.name', 'n', '-qemu-uid', '1']), { code: 'ERR_USAGE' })
  t.throws(() => parseArgs([...VM, '-secret-path', 'rel']), { code: 'ERR_USAGE' })
})

t.test('-qemu-uid: required, an integer from 1 to 4294967294', async (t) => {
  refuses(['-kubevirt.vm.uuid', 'u', '-kubevirt.vm.name', 'n'],
    '-qemu-uid is required: the domain XML fragment runs QEMU as the VM\'s own host uid')
  for (const bad of ['0', '-1', '4294967295', '99999999999', '1.5', '0x10', '012', ' 7', '', 'root']) {
    refuses([...VM, '-qemu-uid', bad], `-qemu-uid must be an integer from 1 to 4294967294, got ${JSON.stringify(bad)}`)
  }
  t.equal(parseArgs([...VM, '-qemu-uid', '1']).qemuUid, 1)
  t.equal(parseArgs([...VM, '-qemu-uid=4294967294']).qemuUid, 4294967294)
})

t.test('-qemu-link: an absolute path, or "" for off', async (t) => {
  t.equal(parseArgs([...VM, '-qemu-link', '/run/x.sock']).qemuLink, '/run/x.sock')
  t.equal(parseArgs([...VM, '-qemu-link', '']).qemuLink, null)
  t.equal(parseArgs([...VM, '-qemu-link=']).qemuLink, null)
  refuses([...VM, '-qemu-link', 'rel.sock'], '-qemu-link must be an absolute path or "" (off), got "rel.sock"')
  refuses([...VM, '-qemu-link', `/${'x'.repeat(107)}`], '-qemu-link must be at most 107 bytes long, is 108')
})

t.test('-qemu-stop-timeout: seconds from 0 to 3600', async (t) => {
  t.equal(parseArgs([...VM, '-qemu-stop-timeout', '0']).qemuStopTimeout, 0)
  t.equal(parseArgs([...VM, '-qemu-stop-timeout', '0.25']).qemuStopTimeout, 0.25)
  t.equal(parseArgs([...VM, '-qemu-stop-timeout', '3600']).qemuStopTimeout, 3600)
  for (const bad of ['3601', '-1', '1e3', 'soon', '']) {
    refuses([...VM, '-qemu-stop-timeout', bad], `-qemu-stop-timeout must be seconds from 0 to 3600, got ${JSON.stringify(bad)}`)
  }
})

t.test('what the launcher accepts, qemu-kube finds', async (t) => {
  for (const argv of [VM, ['--kubevirt.vm.uuid=u-1', '--kubevirt.vm.name=vm1', '-qemu-uid=5']]) {
    parseArgs(argv)
    t.ok(carriesVm(['virt-launcher', '/x/virt-launcher.cjs', ...argv], 'u-1', 'vm1'))
  }
})

t.test('-kubevirt.vm.*: the id pattern qemu-kube checks, said with what was given', async () => {
  refuses(['-kubevirt.vm.uuid', 'a b', '-kubevirt.vm.name', 'n', '-qemu-uid', '1'],
    '-kubevirt.vm.uuid expected ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$ (what qemu-kube accepts as KUBEVIRT_VM_UUID), got "a b"')
  refuses(['-kubevirt.vm.uuid', 'u', '-kubevirt.vm.name', '-x', '-qemu-uid', '1'],
    '-kubevirt.vm.name expected ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$ (what qemu-kube accepts as KUBEVIRT_VM_NAME), got "-x"')
})
