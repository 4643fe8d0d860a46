import t from 'tap'
import { allCodes, asQkError, QkError } from '../../src/emulator/errors.ts'

t.test('every code has a sysexits status and a hint', async (t) => {
  for (const code of allCodes) {
    const e = new QkError(code, 'x')
    t.ok([64, 70, 71, 77, 78].includes(e.exitCode), `${code} -> ${e.exitCode}`)
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
