import t from 'tap'
import { checkUidClaim, qemuUidClaim } from '../../src/launcher/uid-claim.ts'

// Unsigned: the launcher never verifies (it has no key), it only compares.
const jws = (payload: object) => `eyJhbGciOiJSUzI1NiJ9.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.c2ln`

t.test('reads the qemu_uid claim without verifying', async (t) => {
  t.equal(qemuUidClaim(jws({ qemu_uid: 20001 })), 20001)
  t.equal(qemuUidClaim(jws({ sub: 'u' })), undefined)
  t.equal(qemuUidClaim('not-a-jws'), undefined)
  t.equal(qemuUidClaim('a.!!!.c'), undefined)
  t.equal(qemuUidClaim(`a.${Buffer.from('[1]').toString('base64url')}.c`), undefined)
})

t.test('a matching or absent claim passes', async (t) => {
  t.doesNotThrow(() => checkUidClaim(jws({ qemu_uid: 20001 }), 20001))
  t.doesNotThrow(() => checkUidClaim(jws({}), 20001))
  t.doesNotThrow(() => checkUidClaim('opaque', 20001))
})

t.test('a different claim is refused with ERR_LAUNCHER_UID_MISMATCH', async (t) => {
  t.throws(() => checkUidClaim(jws({ qemu_uid: 20002 }), 20001),
    { code: 'ERR_LAUNCHER_UID_MISMATCH', message: 'the token\'s qemu_uid claim is 20002, -qemu-uid is 20001' })
  t.throws(() => checkUidClaim(jws({ qemu_uid: '20001' }), 20001),
    { code: 'ERR_LAUNCHER_UID_MISMATCH', message: 'the token\'s qemu_uid claim is a string, -qemu-uid is 20001' })
  t.throws(() => checkUidClaim(jws({ qemu_uid: null }), 20001),
    { code: 'ERR_LAUNCHER_UID_MISMATCH', message: 'the token\'s qemu_uid claim is null, -qemu-uid is 20001' })
  t.throws(() => checkUidClaim(jws({ qemu_uid: [20001] }), 20001),
    { code: 'ERR_LAUNCHER_UID_MISMATCH', message: 'the token\'s qemu_uid claim is an object, -qemu-uid is 20001' })
})
