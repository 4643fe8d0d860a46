// The agent's commands, registered on the operator CLI (cli.ts calls addAgentCommands):
//   agent          the resident verifier itself (agent.ts), foreground, JSON log on stdout
//   status [vm]    what the agent knows of each live VM (a client of its socket)
//   metrics        its Prometheus metrics (a client of its socket)
// The agent is the only one here that needs root's state; the clients need root only to reach
// the socket.
import { Option, type Command } from 'commander'
import { runAgent } from './agent.ts'
import { askAgent } from './agent-client.ts'
import { QkError } from './errors.ts'
import { collectStatus } from './status/collect.ts'
import { entriesFromJson, formatStatus, STATUS_FORMATS, type StatusFormat } from './status/format.ts'
import { createMetrics } from './status/metrics.ts'
import { writeMetricsTextfile } from './status/textfile.ts'

export function addAgentCommands(program: Command): void {
  program.command('agent')
    .description('run the resident verifier: answer the setuid front on its root-only socket (foreground; SIGTERM drains, SIGHUP reloads)')
    .action(async () => {
      const metrics = createMetrics()
      const code = await runAgent({
        ops: {
          status: async (req, state) => formatStatus(collectStatus(state.config, req.op === 'status' ? req.vm : undefined), 'json'),
          metrics: async () => metrics.metricsText(),
        },
        observe: (d, seconds) => metrics.observeDecision({ outcome: d.outcome, code: d.code, path: 'agent' }, seconds),
      })
      if (code !== 0) throw new QkError('ERR_INTERNAL', `the agent stopped with status ${code}`)
    })

  program.command('status')
    .description('list the live VMs the agent sees (uid lease, QEMU, launcher, cgroup usage)')
    .argument('[vm]', 'only this VM (uuid or name)')
    .addOption(new Option('--output <format>', 'human table or CRI-style JSON').choices(STATUS_FORMATS).default('human'))
    .action(async (vm: string | undefined, o: { output: StatusFormat }) => {
      const body = await askAgent(vm === undefined ? { op: 'status' } : { op: 'status', vm })
      process.stdout.write(o.output === 'json' ? body : formatStatus(entriesFromJson(body), 'human'))
    })

  program.command('metrics')
    .description('print the agent\'s Prometheus metrics (or write them as a node-exporter textfile)')
    .option('--textfile <path>', 'write them atomically to this NAME.prom file instead (node-exporter\'s textfile collector)')
    .action(async (o: { textfile?: string }) => {
      const text = await askAgent({ op: 'metrics' })
      if (o.textfile === undefined) process.stdout.write(text)
      else writeMetricsTextfile(o.textfile, text)
    })
}
