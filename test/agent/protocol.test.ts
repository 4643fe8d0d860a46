// The qk-agent-1 framing (docs/CHAIN.md section 3): every refusal with its code and message,
// the limits, and requests split at every byte (the agent parses as bytes arrive).
import t from 'tap'
import { decodeReply, encodeReply, encodeRequest, RequestParser, type AgentRequest } from '../../src/emulator/agent-protocol.ts'
import { AGENT_MAX_REQUEST } from '../../src/emulator/paths.ts'
import { refusal } from '../helpers/refusal.ts'

const LAUNCH: AgentRequest = {
  op: 'launch',
  caller: { uid: 20001, gid: 20001, groups: [20001, 994] },
  fds: [0, 1, 2, 5, 28],
  env: { KUBEVIRT_VM_UUID: 'u-1', KUBEVIRT_VM_NAME: 'vm', KUBEVIRT_SECRET: 'a.b.c' },
  argv: ['-name', 'guest=vm', '', 'x=y=z'],
}

const frame = (...records: string[]) => Buffer.from(records.map((r) => `${r}\0`).join(''), 'latin1')
const parse = (buf: Buffer) => {
  const p = new RequestParser()
  const r = p.push(buf)
  return r ?? p.finish()
}
const malformed = (what: string) => ({ code: 'ERR_AGENT_REQUEST_MALFORMED', message: `the request is not qk-agent-1 framing: ${what}` })

t.test('a launch request round-trips, whole or split at any byte', async (t) => {
  const buf = encodeRequest(LAUNCH)
  t.same(parse(buf), LAUNCH)
  for (let cut = 1; cut < buf.length; cut++) {
    const p = new RequestParser()
    t.equal(p.push(buf.subarray(0, cut)), undefined)
    const r = p.push(buf.subarray(cut))
    if (!t.same(r, LAUNCH, `split at ${cut}`)) break
  }
  t.same(parse(frame('qk-agent-1', 'op=launch', 'uid=0', 'gid=0', 'groups=', 'fds=', 'end')),
    { op: 'launch', caller: { uid: 0, gid: 0, groups: [] }, fds: [], env: {}, argv: [] }, 'no env, no args, empty lists')
  t.same(parse(frame('qk-agent-1', 'op=status', 'vm=testvm', 'end')), { op: 'status', vm: 'testvm' })
  t.same(parse(frame('qk-agent-1', 'op=status', 'end')), { op: 'status' })
  t.same(parse(frame('qk-agent-1', 'op=metrics', 'end')), { op: 'metrics' })
})

t.test('every bad record is refused with ERR_AGENT_REQUEST_MALFORMED, at the first one', async (t) => {
  const base = ['qk-agent-1', 'op=launch', 'uid=1', 'gid=1', 'groups=', 'fds=0']
  const cases: [string[], string][] = [
    [['qk-agent-2'], 'expected the magic record qk-agent-1, got "qk-agent-2"'],
    [['GET / HTTP/1.1'], 'expected the magic record qk-agent-1, got "GET / HTTP/1.1"'],
    [['qk-agent-1', 'op=shell'], 'unknown op "shell"'],
    [['qk-agent-1', 'uid=1'], 'expected the op record, got key "uid"'],
    [['qk-agent-1', 'op=launch', 'gid=1'], 'expected the uid record, got key "gid"'],
    [['qk-agent-1', 'op=launch', 'uid=-1'], 'uid takes decimal numbers, got "-1"'],
    [['qk-agent-1', 'op=launch', 'uid=01'], 'uid takes decimal numbers, got "01"'],
    [['qk-agent-1', 'op=launch', 'uid=4294967296'], 'uid takes decimal numbers, got "4294967296"'],
    [['qk-agent-1', 'op=launch', 'uid=1', 'gid=1', 'groups=1,,2'], 'groups takes decimal numbers, got ""'],
    [['qk-agent-1', 'op=launch', 'uid=1', 'gid=1', 'groups=', 'fds=a'], 'fds takes decimal numbers, got "a"'],
    [[...base, 'env=PATH=/tmp'], 'env must be one of KUBEVIRT_VM_UUID, KUBEVIRT_VM_NAME, KUBEVIRT_SECRET=VALUE, got "PATH"'],
    [[...base, 'env=KUBEVIRT_SECRET'], 'env must be one of KUBEVIRT_VM_UUID, KUBEVIRT_VM_NAME, KUBEVIRT_SECRET=VALUE, got "KUBEVIRT_SECRET without ="'],
    [[...base, 'env=KUBEVIRT_SECRET.eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln'], 'env must be one of KUBEVIRT_VM_UUID, KUBEVIRT_VM_NAME, KUBEVIRT_SECRET=VALUE, got "KUBEVIRT_SECRET without ="'],
    [[...base, 'env=KUBEVIRT_SECRETX=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln'], 'env must be one of KUBEVIRT_VM_UUID, KUBEVIRT_VM_NAME, KUBEVIRT_SECRET=VALUE, got "KUBEVIRT_SECRETX"'],
    [[...base, 'env=KUBEVIRT_SECRET=a', 'env=KUBEVIRT_SECRET=b'], 'env KUBEVIRT_SECRET given twice'],
    [[...base, 'arg=-S', 'env=KUBEVIRT_SECRET=a'], 'expected the arg record, got key "env"'],
    [[...base, 'nonsense'], 'expected KEY=VALUE, got "nonsense"'],
    [[...base, '=x'], 'expected KEY=VALUE, got "=x"'],
    [['qk-agent-1', 'op=launch', 'uid=1', 'end'], 'end record before the gid record'],
    [['qk-agent-1', 'end'], 'end record before the op record'],
    [['qk-agent-1', 'op=metrics', 'vm=x'], 'expected the end record, got key "vm"'],
    [['qk-agent-1', 'op=status', 'vm='], 'vm must not be empty'],
    [['qk-agent-1', 'op=metrics', 'end', 'end'], 'bytes after the end record (one request per connection)'],
  ]
  for (const [records, what] of cases) t.same(refusal(() => parse(frame(...records))), malformed(what), what)
  t.same(refusal(() => parse(Buffer.concat([frame(...base), Buffer.from([0x61, 0x72, 0x67, 0x3d, 0xff, 0])]))), malformed('a record that is not valid UTF-8'))
  const p = new RequestParser()
  p.push(frame('qk-agent-1', 'op=metrics', 'end'))
  t.same(refusal(() => p.push(Buffer.from('x'))), malformed('bytes after the end record (one request per connection)'), 'a later chunk too')
})

t.test('EOF before end is ERR_AGENT_REQUEST_TRUNCATED', async (t) => {
  const p = new RequestParser()
  p.push(frame('qk-agent-1', 'op=launch', 'uid=1'))
  p.push(Buffer.from('gid=1'))
  t.same(refusal(() => p.finish()), { code: 'ERR_AGENT_REQUEST_TRUNCATED', message: "expected the request's end record before EOF, got EOF after 32 bytes" })
  t.same(refusal(() => new RequestParser().finish()), { code: 'ERR_AGENT_REQUEST_TRUNCATED', message: "expected the request's end record before EOF, got EOF after 0 bytes" })
})

t.test('over AGENT_MAX_REQUEST is ERR_AGENT_REQUEST_TOO_BIG, also when it arrives in small pieces; exactly the limit is fine', async (t) => {
  const head = frame('qk-agent-1', 'op=launch', 'uid=1', 'gid=1', 'groups=', 'fds=')
  const tail = frame('end')
  const argLen = AGENT_MAX_REQUEST - head.length - tail.length - 'arg=\0'.length
  const exact = Buffer.concat([head, frame(`arg=${'a'.repeat(argLen)}`), tail])
  t.equal(exact.length, AGENT_MAX_REQUEST)
  t.equal((parse(exact) as { argv: string[] }).argv[0]!.length, argLen)
  const big = { code: 'ERR_AGENT_REQUEST_TOO_BIG', message: `expected a request of at most ${AGENT_MAX_REQUEST} bytes, got more than that` }
  t.same(refusal(() => parse(Buffer.concat([exact.subarray(0, -1), Buffer.from('x\0')]))), big)
  const p = new RequestParser()
  p.push(head)
  let r
  for (let i = 0; i < 1000 && r === undefined; i++) r = refusal(() => p.push(Buffer.alloc(4096, 0x61)))
  t.same(r, big, 'an endless record is cut at the limit, never buffered past it')
})

t.test('replies: the records of each outcome, in order, and nothing after end', async (t) => {
  const decision = { outcome: 'authorised', code: 'OK', path: 'agent', note: 'a\nb' }
  const a = encodeReply({ outcome: 'authorised', decision, cgroups: 2, env: ['PATH=/bin', 'LC_ALL=C'], enter: ['--pid=5', '--', '/q', '-S'] })
  t.equal(a.toString('latin1'), 'qk-agent-1\0outcome=authorised\0decision={"outcome":"authorised","code":"OK","path":"agent","note":"a\\nb"}\0cgroups=2\0'
    + 'env=PATH=/bin\0env=LC_ALL=C\0enter=--pid=5\0enter=--\0enter=/q\0enter=-S\0end\0')
  t.notOk(/[\x01-\x1f]/.test(a.toString('latin1')), 'the decision holds no byte below 0x20')
  t.equal(encodeReply({ outcome: 'refused', exit: 77, decision: { code: 'ERR_X' } }).toString('latin1'),
    'qk-agent-1\0outcome=refused\0exit=77\0decision={"code":"ERR_X"}\0end\0')
  t.equal(encodeReply({ outcome: 'probe', decision: {}, env: [], enter: ['--'] }).toString('latin1'), 'qk-agent-1\0outcome=probe\0decision={}\0enter=--\0end\0')
  t.equal(encodeReply({ outcome: 'ok', body: 'x 1\n' }).toString('latin1'), 'qk-agent-1\0outcome=ok\0body=x 1\n\0end\0')
  t.same(decodeReply(encodeReply({ outcome: 'ok', body: 'b' })), { outcome: ['ok'], body: ['b'] })
  t.throws(() => encodeReply({ outcome: 'probe', decision: {}, env: ['A=\0'], enter: [] }), { code: 'ERR_INTERNAL' })
})
