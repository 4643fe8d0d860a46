// The e2e helpers (test/helpers/e2e.ts) for files that force the agent themselves: imported from
// here, a test file does not name helpers/e2e.ts, so scripts/test.mjs runs it once (not once per
// transport: it starts its own agent, and the standalone run would only repeat the agent's).
// Importing this file does nothing by itself (tap also runs test/helpers/*.ts as files).
export { setupE2e, qemuProcesses, type E2e, type Pod, type Vm } from './e2e.ts'
export { domainPid, requireLibvirt } from './libvirt.ts'
export { startAgent, type RunningAgent } from './transport.ts'
