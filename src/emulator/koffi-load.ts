// koffi for the launch path, loaded the short way (used by sys.ts).
//
// require('koffi') costs ~4 ms per VM start before any FFI call: package "exports" resolution,
// ~20 KB of loader JavaScript, and an ELF parse of the node binary to choose glibc or musl. The
// native module itself dlopens in ~0.8 ms. Measured on the installed chain (bench/startup.mjs
// set-up, 50 alternating runs): probe 42.4 -> 36.1 ms, launch 63.0 -> 56.4 ms p50.
// It also narrows what root runs to the one koffi file the setuid front checks (QK_KOFFI_NODE in
// native/Makefile: node_modules/@koromix/koffi-linux-ARCH/linux_ARCH/koffi.node beside the
// bundle); koffi's JS files are not checked by the front. koffi's JS wrapper only adds
// deprecated aliases, which sys.ts does not use.
// The installed bundle (PREFIX/lib/qemu-kube, the one the setuid front execs as root) loads
// that file or nothing: koffi's own loader would run JavaScript the front never checked, and
// resolve node_modules/koffi in every directory up to / (/var/tmp/node_modules is anyone's).
// Anywhere else (a dev clone's dist/ or src/, run as the developer) koffi's own loader runs.
import { createRequire } from 'node:module'
import { QkError } from './errors.ts'
import { PREFIX } from './paths.ts'

/** `here`: the directory of the running bundle; a parameter only so tests can name the installed one. */
export function loadKoffi(here: string = import.meta.dirname): typeof import('koffi') {
  const arch = process.arch
  const checked = `${here}/node_modules/@koromix/koffi-linux-${arch}/linux_${arch}/koffi.node`
  try {
    const native = { exports: {} as typeof import('koffi') }
    process.dlopen(native, checked)
    return native.exports
  } catch {
    if (here === `${PREFIX}/lib/qemu-kube`) {
      throw new QkError('ERR_OS', `cannot load ${checked} (the koffi the front checked); the installed bundle loads no other copy`, { path: checked })
    }
    return createRequire(import.meta.url)('koffi') as typeof import('koffi')
  }
}
