import t, { type Test } from 'tap'
import { writeFileSync } from 'node:fs'
import { checkCaller, lookupUser, qemuCredentials } from '../../src/emulator/caller.ts'
import { schema } from '../../src/emulator/config.ts'
import { tempDir } from '../helpers/tokens.ts'

function files(t: Test) {
  const dir = tempDir(t)
  writeFileSync(`${dir}/passwd`, 'root:x:0:0::/root:/bin/sh\nlibvirt-qemu:x:64055:994::/var/lib/libvirt:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n')
  writeFileSync(`${dir}/group`, 'root:x:0:\nkvm:x:994:libvirt-qemu\nlibvirt:x:995:alice,libvirt-qemu\nalice:x:1000:\n')
  return { passwd: `${dir}/passwd`, group: `${dir}/group` }
}

const cfg = (over: object = {}) => schema.parse(over)

t.test('callers are allowed by user name, uid or group', async (t) => {
  const f = files(t)
  const qemu = { uid: 64055, gid: 994, groups: [995] }
  t.doesNotThrow(() => checkCaller(qemu, cfg(), f))
  t.doesNotThrow(() => checkCaller(qemu, cfg({ allowed_users: [64055] }), f))
  t.doesNotThrow(() => checkCaller({ uid: 1000, gid: 1000, groups: [995] }, cfg({ allowed_users: [], allowed_groups: ['libvirt'] }), f))
})

t.test('anyone else: ERR_CALLER_NOT_ALLOWED', async (t) => {
  const f = files(t)
  t.throws(() => checkCaller({ uid: 1000, gid: 1000, groups: [] }, cfg(), f), { code: 'ERR_CALLER_NOT_ALLOWED', message: /got uid 1000 gid 1000/ })
  t.throws(() => checkCaller({ uid: 0, gid: 0, groups: [] }, cfg(), f), { code: 'ERR_CALLER_NOT_ALLOWED' })
  t.throws(() => checkCaller({ uid: 1, gid: 1, groups: [] }, cfg({ allowed_users: ['nosuch'] }), f), { code: 'ERR_CONFIG_INVALID', message: /no such user "nosuch"/ })
})

t.test('QEMU runs as the caller unless configured', async (t) => {
  const f = files(t)
  const caller = { uid: 64055, gid: 994, groups: [995] }
  t.same(qemuCredentials(caller, cfg(), f), caller)
  t.same(qemuCredentials(caller, cfg({ qemu_user: 'alice', qemu_group: 'kvm' }), f), { uid: 1000, gid: 994, groups: [994] })
  t.same(lookupUser('libvirt-qemu', f), { uid: 64055, gid: 994, groups: [994, 995] })
  t.throws(() => lookupUser('nobody-here', f), { code: 'ERR_USAGE' })
})
