// Offline images here are tagged by a hash of what they are built from; a new build leaves the
// older tags of its name behind. Removed unless a container still uses one (then left for next
// time). `run(args, opts)` is the caller's podman (with its private store).
export function removeOtherTags(run, name, keep) {
  for (const old of run(['images', '--format', '{{.Repository}}:{{.Tag}}', name]).split('\n').filter(Boolean)) {
    if (old === keep) continue
    try {
      run(['rmi', old], { stdio: 'ignore' })
    } catch {
      // in use
    }
  }
}
