// The verification pipeline: from one libvirt invocation to an Authorized launch, or a refusal.
// Read it top to bottom; each step is one file. The order is deliberate:
//   1. caller     cheapest, and a stranger learns nothing about pods from a refusal: a per-VM
//                 uid from vm_uid_range; and which libvirt directories the argv names (carry)
//   2. token      pure crypto on what the caller sent, bound to the VM and to the caller's uid;
//                 a forged token never makes root look into any pod's /proc or files
//   3. target     the launcher processes that claim this VM, by scanning /proc
//   4. pin        pidfd first, then stat and cmdline, then the pidfd again: every read is
//                 provably from that process (a failed read is put to the pin first)
//   5. secret     the same token inside each claimant's mount namespace: exactly one must hold it
//   6. cgroups    where the pod is accounted (re-pinned after the read)
//   7. uid lease  one live VM per uid, under a per-uid lock held across step 8
//   8. replay     record the jti last, so a refused launch never burns a valid token; then
//                 re-read the clock, so a launch frozen past its token's expiry is refused
//                 (step 2 already refused a token whose record exists)
// Steps 7 and 8 name the consumer, the process that becomes QEMU: this one standalone, the
// front when the agent serves (ctx.consumer). In the agent this runs once per request in one
// long-lived process, so a refusal after step 3 closes the target's pidfd here.
import { readFileSync } from 'node:fs'
import { checkCaller, qemuCredentials, type Caller, type Credentials } from './caller.ts'
import { carryPlan, type CarryPlan } from './carry.ts'
import { planJoins, type CgroupJoin } from './cgroup.ts'
import { checkPodQemu } from './pod-qemu.ts'
import type { Config, Namespace } from './config.ts'
import { QkError } from './errors.ts'
import type { Invocation, Vm } from './invocation.ts'
import { checkHostQemu } from './elf.ts'
import { loadKeys, type PublicKey } from './keys.ts'
import { readPinned, whilePinned, type PidfdOps, type Pinned } from './pin.ts'
import { checkNotReplayed, checkStateDir, recordOnce, type Consumer } from './replay.ts'
import { readPodSecret, secretMatches, type Openat2 } from './secret.ts'
import { findTarget } from './target.ts'
import { verifyToken } from './token.ts'
import { acquireUidLease, checkUidFree, leaseOps, LOCK_WAIT_MS, selfConsumer } from './uid-lease.ts'
import type { FileMeta } from './trusted-file.ts'

export interface VerifyContext {
  config: Config
  caller: Caller
  now: () => Date
  ops: PidfdOps & Openat2
  /** false for `explain`: look, but do not record the jti. */
  consume: boolean
  keyMeta?: FileMeta
  /** Who the replay record and uid lease name; default this process (standalone). */
  consumer?: Consumer
  /** Keys loaded ahead (the agent's, reloaded on SIGHUP); default: read token_public_keys now. */
  keys?: readonly PublicKey[]
  /** How long to wait for another launch's uid lock; the agent passes 0 (uid-lease.ts). */
  lockWaitMs?: number
  /** The launcher pids to consider (the agent's proc index); absent or undefined: a full /proc scan. */
  candidates?: () => Iterable<number> | undefined
}

declare const authorized: unique symbol

/** The only value the code that touches the kernel accepts; made here and nowhere else. */
export type Authorized = {
  readonly vm: Vm
  readonly caller: Caller
  readonly runAs: Credentials
  readonly target: Pinned
  readonly jti: string
  readonly exp: number
  readonly namespaces: readonly Namespace[]
  readonly cgroups: readonly CgroupJoin[]
  readonly carry: CarryPlan
  readonly qemu: { readonly path: string; readonly from: 'pod' | 'host'; readonly argv: readonly string[] }
} & { readonly [authorized]: true }

/** What was learned so far; the decision line reports it whether the launch is allowed or not. */
export interface Trail {
  vm?: Vm
  kid?: string
  jti?: string
  target?: { pid: number; startTime: string }
}

type Launch = Extract<Invocation, { kind: 'launch' }>

export async function authorise(inv: Launch, ctx: VerifyContext, trail: Trail): Promise<Authorized> {
  const cfg = ctx.config
  trail.vm = inv.vm

  checkCaller(ctx.caller, cfg)
  const runAs = qemuCredentials(ctx.caller, cfg)
  // A host QEMU must be static, or the pod's own loader would run as QEMU (elf.ts says why).
  if (cfg.qemu_binary_from === 'host') checkHostQemu(cfg.qemu_binary)
  const carry = carryPlan(inv.argv, cfg.libvirt_domain_roots)

  const token = await verifyToken(inv.token, { ...inv.vm, uid: ctx.caller.uid }, policyOf(cfg, ctx), ctx.now())
  trail.kid = token.kid
  trail.jti = token.jti
  // A used token stops here: it never makes root scan /proc or open a pod's files. Step 7 asks
  // again under O_EXCL; this early answer is only the cheap one.
  const consumer = ctx.consumer ?? (ctx.consume ? selfConsumer(cfg.proc_root) : undefined)
  checkNotReplayed(cfg.state_dir, token.jti, consumer)

  // Steps 3 to 5 in one stage: each claimant is pinned before it is read, and counts only if
  // its mount namespace holds this token, so a stranger calling itself virt-launcher cannot
  // block the start (target.ts says in which order).
  const holdsToken = (p: Pinned) => {
    const podCopy = whilePinned(p, ctx.ops, () => readPodSecret(cfg.proc_root, p.pid, cfg.pod_secret_path, ctx.ops, { fsTypes: cfg.pod_secret_fs_types }))
    if (!secretMatches(podCopy, inv.token)) {
      throw new QkError('ERR_SECRET_MISMATCH', `the token at ${cfg.pod_secret_path} in pid ${p.pid}'s root differs from KUBEVIRT_SECRET`,
        { pid: p.pid })
    }
  }
  const target = findTarget({ procRoot: cfg.proc_root, launcherName: cfg.launcher_name, ...inv.vm }, ctx.ops, holdsToken, ctx.candidates?.())
  trail.target = { pid: target.pid, startTime: target.startTime }
  try {
    return finish(inv, ctx, target, token, runAs, carry, consumer)
  } catch (e) {
    ctx.ops.close(target.pidfd)
    throw e
  }
}

/** Steps 6 to 8, with the target pinned. */
function finish(inv: Launch, ctx: VerifyContext, target: Pinned, token: { jti: string; exp: number }, runAs: Credentials,
  carry: CarryPlan, consumer: Consumer | undefined): Authorized {
  const cfg = ctx.config
  const cgroups = planJoins(readPinned(target, 'cgroup', ctx.ops), readFileSync(`${cfg.proc_root}/self/mountinfo`, 'utf8'), cfg.cgroup_root)
  // The pod's image must hold the QEMU the helper will exec there (pod-qemu.ts says why now).
  if (cfg.qemu_binary_from === 'pod' && cfg.namespaces.includes('mnt')) {
    whilePinned(target, ctx.ops, () => checkPodQemu(cfg.proc_root, target.pid, cfg.qemu_binary, ctx.ops))
  }

  // The clock is read again after the record exists (replay.ts says why).
  if (ctx.consume && consumer !== undefined) {
    const lease = acquireUidLease(cfg.state_dir, runAs.uid, inv.vm, consumer, leaseOps(cfg.proc_root), ctx.lockWaitMs ?? LOCK_WAIT_MS)
    try {
      recordOnce(cfg.state_dir, token, ctx.now, cfg.token_clock_tolerance, consumer)
      lease.commit(target)
    } finally {
      lease.release()
    }
  } else {
    // `explain` makes nothing, but predicts what the launch would refuse about the state dir.
    checkStateDir(cfg.state_dir)
    checkUidFree(cfg.state_dir, runAs.uid, inv.vm.uuid, leaseOps(cfg.proc_root))
  }

  return {
    vm: inv.vm,
    caller: ctx.caller,
    runAs,
    target,
    jti: token.jti,
    exp: token.exp,
    namespaces: cfg.namespaces,
    cgroups,
    carry,
    qemu: { path: cfg.qemu_binary, from: cfg.qemu_binary_from, argv: inv.argv },
  } as unknown as Authorized
}

function policyOf(cfg: Config, ctx: Pick<VerifyContext, 'keyMeta' | 'keys'>) {
  return {
    issuer: cfg.token_issuer,
    audience: cfg.token_audience,
    algorithms: cfg.token_algorithms,
    maxLifetime: cfg.token_max_lifetime,
    clockTolerance: cfg.token_clock_tolerance,
    keys: ctx.keys ?? loadKeys(cfg.token_public_keys, ctx.keyMeta),
  }
}
