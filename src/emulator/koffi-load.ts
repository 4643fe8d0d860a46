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
// Anywhere else (a dev clone's dist/, a musl libc) the glibc build is absent or fails to load,
// and koffi's own loader runs as before.
import { createRequire } from 'node:module'

export function loadKoffi(): typeof import('koffi') {
  const arch = process.arch
  const checked = `${import.meta.dirname}/node_modules/@koromix/koffi-linux-${arch}/linux_${arch}/koffi.node`
  try {
    const native = { exports: {} as typeof import('koffi') }
    process.dlopen(native, checked)
    return native.exports
  } catch {
    return createRequire(import.meta.url)('koffi') as typeof import('koffi')
  }
}
