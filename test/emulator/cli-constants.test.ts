// One source for what C and TypeScript share (src/shared/constants.ts): the checked-in
// native/qk-constants.h must be exactly what scripts/build.mjs renders from it, and the TS
// carries the same values.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { QkError } from '../../src/emulator/errors.ts'
import { schema } from '../../src/emulator/config.ts'
import { MAX_TOKEN_LENGTH } from '../../src/emulator/token.ts'
import { DEFAULT_QEMU_LINK } from '../../src/launcher/args.ts'
import { SHARED } from '../../src/shared/constants.ts'
// @ts-expect-error: a plain .mjs build script, no type declarations
import { loadShared, renderHeader } from '../../scripts/constants-header.mjs'

const REPO = resolve(import.meta.dirname, '../..')

t.test('native/qk-constants.h is current (run node scripts/build.mjs)', async (t) => {
  const shared = await loadShared(REPO)
  t.same(shared, SHARED)
  t.equal(readFileSync(`${REPO}/native/qk-constants.h`, 'utf8'), renderHeader(shared))
})

t.test('the header says each value once, as C', async (t) => {
  const h = renderHeader(SHARED) as string
  t.match(h, /^#define QK_MAX_TOKEN_BYTES 16384$/m)
  t.match(h, /^#define QK_HINT_CONFIG_UNSAFE "the config and every directory above it/m)
  t.match(h, /^#define QK_KEPT_ENV \{"KUBEVIRT_VM_UUID", "KUBEVIRT_VM_NAME", "KUBEVIRT_SECRET"\}$/m)
  t.throws(() => renderHeader({ BAD: 'a "quoted" value' }), /not a plain C string/)
})

t.test('the TypeScript takes its values from the same source', async (t) => {
  t.equal(MAX_TOKEN_LENGTH, SHARED.MAX_TOKEN_BYTES)
  t.equal(new QkError('ERR_CONFIG_UNSAFE', '').hint, SHARED.HINT_CONFIG_UNSAFE)
  t.equal(new QkError('ERR_USAGE', '').hint, SHARED.HINT_USAGE)
  const d = schema.parse({})
  t.same([d.pod_secret_path, d.pod_link_socket, d.state_dir], [SHARED.DEFAULT_POD_SECRET_PATH, SHARED.DEFAULT_QEMU_LINK, SHARED.DEFAULT_STATE_DIR])
  t.equal(DEFAULT_QEMU_LINK, SHARED.DEFAULT_QEMU_LINK)
})
