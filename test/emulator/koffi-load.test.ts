// Issue 8 item 8: the installed bundle runs as root and fell back to require('koffi') when the
// front-checked koffi.node did not load (a musl node, a broken file): koffi's JS and whatever
// node_modules/koffi the resolver finds above the prefix (/var/tmp/node_modules is anyone's) ran
// as root unchecked. The installed bundle must load only the checked file; dev runs keep the
// fallback.
import t from 'tap'
import { loadKoffi } from '../../src/emulator/koffi-load.ts'
import { PREFIX } from '../../src/emulator/paths.ts'

t.test('the installed bundle loads only the koffi.node the front checked: ERR_OS', async (t) => {
  const installed = `${PREFIX}/lib/qemu-kube`
  const checked = `${installed}/node_modules/@koromix/koffi-linux-${process.arch}/linux_${process.arch}/koffi.node`
  t.throws(() => loadKoffi(installed), {
    code: 'ERR_OS',
    message: `cannot load ${checked} (the koffi the front checked); the installed bundle loads no other copy`,
  })
})

t.test('a dev run (bundle or sources elsewhere) still finds koffi through the resolver', async (t) => {
  t.equal(typeof loadKoffi(`${import.meta.dirname}/nowhere`).load, 'function')
})
