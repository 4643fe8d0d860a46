import t from 'tap'
import { checkCaller, qemuCredentials } from '../../src/emulator/caller.ts'
import { schema } from '../../src/emulator/config.ts'

const cfg = (over: object = {}) => schema.parse(over)

t.test('a launch comes from a per-VM uid in vm_uid_range, with gid = uid', async (t) => {
  t.doesNotThrow(() => checkCaller({ uid: 20000, gid: 20000, groups: [20000] }, cfg()))
  t.doesNotThrow(() => checkCaller({ uid: 29999, gid: 29999, groups: [] }, cfg()))
  t.doesNotThrow(() => checkCaller({ uid: 107, gid: 107, groups: [] }, cfg({ vm_uid_range: [107, 107] })))
})

t.test('callers outside the range, or with another gid, are refused with expected vs got', async (t) => {
  t.throws(() => checkCaller({ uid: 19999, gid: 19999, groups: [] }, cfg()),
    { code: 'ERR_CALLER_NOT_ALLOWED', message: 'expected a caller uid in vm_uid_range [20000, 29999], got uid 19999 gid 19999' })
  t.throws(() => checkCaller({ uid: 0, gid: 0, groups: [] }, cfg()), { code: 'ERR_CALLER_NOT_ALLOWED', message: /got uid 0 gid 0$/ })
  t.throws(() => checkCaller({ uid: 20001, gid: 995, groups: [995] }, cfg()),
    { code: 'ERR_CALLER_NOT_ALLOWED', message: 'expected the VM\'s gid to equal its uid 20001 (seclabel +UID:+UID), got gid 995' })
})

t.test('QEMU keeps the caller\'s uid and gid and exactly the configured groups, never the host groups it carried', async (t) => {
  const caller = { uid: 20001, gid: 20001, groups: [0, 994, 995, 20001] }
  t.same(qemuCredentials(caller, cfg()), { uid: 20001, gid: 20001, groups: [20001] })
  t.same(qemuCredentials(caller, cfg({ qemu_groups: [36, 20001] })), { uid: 20001, gid: 20001, groups: [20001, 36] })
})

t.test('uid 0 and group 0 cannot be configured', async (t) => {
  t.throws(() => schema.parse({ vm_uid_range: [0, 10] }))
  t.throws(() => schema.parse({ qemu_groups: [0] }))
  t.throws(() => schema.parse({ vm_uid_range: [30, 10] }))
})
