// Who the agent serves: a root peer, pinned by SO_PEERPIDFD, whose start time is read after the
// pidfd was taken and counts only while that pidfd's process lives (agent.ts who()).
import t from 'tap'
import { who } from '../../src/emulator/agent.ts'
import type { SocketOps } from '../../src/emulator/agent-socket.ts'
import { fakeProc } from '../helpers/fakeproc.ts'
import { refusal } from '../helpers/refusal.ts'

const net = (cred: { pid: number; uid: number; gid: number }, pidfd = 90): SocketOps => ({
  peerCred: () => cred,
  peerPidfd: () => pidfd,
  sendWithFds: () => -1,
})

t.test('a root peer is named by its pid and start time, with its pidfd', async (t) => {
  const proc = fakeProc(t, [{ pid: 700, argv: ['qemu-kube'], startTime: '4242' }])
  t.same(who(3, net({ pid: 700, uid: 0, gid: 0 }), proc, () => true), { pid: 700, pidfd: 90, front: { pid: 700, startTime: '4242' } })
})

t.test('a peer that is not root is refused: ERR_AGENT_PEER_NOT_ROOT', async (t) => {
  const proc = fakeProc(t, [{ pid: 700, argv: ['x'] }])
  t.same(refusal(() => who(3, net({ pid: 700, uid: 65534, gid: 65534 }), proc, () => true)), {
    code: 'ERR_AGENT_PEER_NOT_ROOT', message: 'the agent serves root peers only (the setuid front), got SO_PEERCRED uid 65534 pid 700',
  })
})

t.test('no SO_PEERPIDFD (before Linux 6.5): pidfd_open pins the peer instead; any other failure, or a peer that died (its start time could be a successor\'s): ERR_OS', async (t) => {
  const proc = fakeProc(t, [{ pid: 700, argv: ['x'] }])
  const opened: number[] = []
  t.same(who(3, net({ pid: 700, uid: 0, gid: 0 }, -92), proc, () => true, (pid) => { opened.push(pid); return 91 }),
    { pid: 700, pidfd: 91, front: { pid: 700, startTime: '1700' } })
  t.same(opened, [700], 'pidfd_open of the SO_PEERCRED pid, once')
  t.same(refusal(() => who(3, net({ pid: 700, uid: 0, gid: 0 }, -92), proc, () => true, () => -3)), {
    code: 'ERR_OS', message: 'cannot pin the peer (pid 700): errno 3',
  })
  t.same(refusal(() => who(3, net({ pid: 700, uid: 0, gid: 0 }, -9), proc, () => true)), {
    code: 'ERR_OS', message: 'cannot pin the peer (pid 700): errno 9',
  })
  t.same(refusal(() => who(3, net({ pid: 700, uid: 0, gid: 0 }), proc, () => false)), {
    code: 'ERR_OS', message: 'the peer (pid 700) exited before its request was read',
  })
  t.same(refusal(() => who(3, net({ pid: 701, uid: 0, gid: 0 }), proc, () => true)), {
    code: 'ERR_OS', message: 'the peer (pid 701) exited before its request was read',
  })
})
