// Parsers for the /proc files we read. Every byte here comes from processes we do not trust
// (argv and comm are theirs to choose), so parse by position and never by pattern.

export interface StatFacts {
  state: string
  /** Field 22, clock ticks since boot: with the pid, it names one process for all time. */
  startTime: string
}

/** /proc/PID/stat: `pid (comm) state ...`; comm may hold spaces and ')' so cut at the last ')'. */
export function parseStat(text: string): StatFacts | undefined {
  const close = text.lastIndexOf(')')
  if (close < 0) return undefined
  const fields = text.slice(close + 2).split(' ')
  // fields[0] is field 3 (state), so field N is fields[N - 3].
  const state = fields[0]
  const startTime = fields[19]
  if (state === undefined || startTime === undefined || !/^\d+$/.test(startTime)) return undefined
  return { state, startTime }
}

/** /proc/PID/cmdline: NUL-separated, usually NUL-terminated. */
export function splitCmdline(text: string): string[] {
  const args = text.split('\0')
  if (args.at(-1) === '') args.pop()
  return args
}
