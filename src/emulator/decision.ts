// The decision record: one per invocation, the same fields whether it is written as the log's
// `decision` line (emulator) or printed by `qemu-kube explain`. Built field by field from our
// own values, so no token, key or foreign error text can reach it.
import type { QkError } from './errors.ts'
import type { Authorized, Trail } from './verify.ts'

export type Decision = Record<string, unknown> & { outcome: 'authorised' | 'probe' | 'refused'; code: string }

export function authorisedRecord(a: Authorized): Decision {
  return {
    outcome: 'authorised',
    code: 'OK',
    vm: a.vm,
    caller: { uid: a.caller.uid, gid: a.caller.gid },
    runAs: { uid: a.runAs.uid, gid: a.runAs.gid, groups: a.runAs.groups },
    target: { pid: a.target.pid, startTime: a.target.startTime },
    jti: a.jti,
    namespaces: a.namespaces,
    cgroups: a.cgroups.map((c) => c.dir),
    carry: a.carry.dirs,
    qemu: { path: a.qemu.path, from: a.qemu.from },
  }
}

export function probeRecord(uid: number, binary: string): Decision {
  return { outcome: 'probe', code: 'OK', caller: { uid }, qemu: { path: binary, from: 'host' } }
}

export function refusedRecord(err: QkError, trail: Trail): Decision {
  return { outcome: 'refused', code: err.code, reason: err.message, hint: err.hint, ...trail, ...err.details }
}
