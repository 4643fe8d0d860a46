import t from 'tap'
import { allCodes, asQkError, QkError } from '../../src/emulator/errors.ts'
import { schema } from '../../src/emulator/config.ts'

// Names in hints that are not config keys: token claims the operator may need to look at.
const CLAIMS = new Set(['qemu_uid', 'vm_name'])

t.test('every code has a sysexits status and a hint', async (t) => {
  for (const code of allCodes) {
    const e = new QkError(code, 'x')
    t.ok([64, 65, 66, 69, 70, 71, 73, 76, 77, 78].includes(e.exitCode), `${code} -> ${e.exitCode}`)
    t.ok(e.hint.length > 10, `${code} has a hint`)
  }
  t.equal(new QkError('ERR_TOKEN_EXPIRED', 'x').exitCode, 77)
  t.equal(new QkError('ERR_CONFIG_UNSAFE', 'x').exitCode, 78)
  t.equal(new QkError('ERR_USAGE', 'x').exitCode, 64)
  t.equal(new QkError('ERR_OS', 'x').exitCode, 71)
})

t.test('foreign errors become ERR_INTERNAL without their message', async (t) => {
  const e = asQkError(new TypeError('eyJhbGciOi.secret-bits'))
  t.equal(e.code, 'ERR_INTERNAL')
  t.notMatch(e.message, /secret-bits/)
})

// Issue 8 item 10: a hint longer than 10 characters passed, even one sending the operator to a
// key that does not exist (allowed_callers). Every snake_case name a hint gives must be a key
// of the config schema (or a token claim named as such).
t.test('every config key a hint names exists', async (t) => {
  const keys = new Set(Object.keys(schema.shape))
  for (const code of allCodes) {
    const hint = new QkError(code, 'x').hint
    for (const name of hint.match(/\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b/g) ?? []) {
      t.ok(keys.has(name) || CLAIMS.has(name), `${code}: hint names ${name}, ${keys.has(name) ? 'a config key' : CLAIMS.has(name) ? 'a token claim' : 'which is no config key'}`)
    }
  }
})
