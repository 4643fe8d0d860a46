// One logger: pino, JSON lines on stderr, written synchronously so nothing is lost when the
// process image is replaced by exec. libvirt copies our stderr into the domain log and quotes
// its tail in `virsh start` errors, so every line must stand on its own.
// Nothing we log holds the token: the decision and error objects are built from our own fields.
// The redact list is a second line of defence should a future field carry one by mistake.
import pino, { type Logger } from 'pino'

export type { Logger }

/** dest: 2 for the launch path (libvirt's log); the agent logs to 1 (its container's log). */
export function makeLogger(level: string = 'info', dest: 1 | 2 = 2): Logger {
  return pino(
    {
      name: 'qemu-kube',
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: ['token', 'secret', '*.token', '*.secret', 'KUBEVIRT_SECRET', '*.KUBEVIRT_SECRET'], censor: '[redacted]' },
    },
    pino.destination({ dest, sync: true }),
  )
}
