// The delivery artefacts: initcontainer/Dockerfile only uses what the repo (or an earlier stage)
// provides and agrees with deploy/; initcontainer/install-entrypoint.sh, run as the DaemonSet runs
// it, installs a tree made by initcontainer/make-stage.sh (the Dockerfile's build step) that
// actually runs, refuses unsafe targets before writing anything, and can run again.
// No container engine here: the entrypoint runs directly, a container's view (only CAP_CHOWN, a
// read-only root, the target a mount of its own) made with unshare and setpriv.
import t, { type Test } from 'tap'
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process'
import {
  chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync,
  symlinkSync, writeFileSync, renameSync,
} from 'node:fs'
import { dirname } from 'node:path'
import { parseConfig } from '../src/emulator/config.ts'
import { FIXTURES, REPO, toml } from './helpers/install.ts'
import { rsaKey, writeKey } from './helpers/tokens.ts'

// ---------------------------------------------------------------------------------------------
// The Dockerfile, read as BuildKit reads it: continuation lines joined, comments dropped.

interface Instr { op: string; flags: Record<string, string>; args: string[]; text: string }
interface Stage { name: string; instrs: Instr[] }

function parseDockerfile(text: string): Stage[] {
  const lines: string[] = []
  let cur = ''
  for (const raw of text.split('\n')) {
    if (/^\s*#/.test(raw)) continue
    if (raw.endsWith('\\')) {
      cur += `${raw.slice(0, -1)} `
      continue
    }
    cur += raw
    if (cur.trim()) lines.push(cur.trim())
    cur = ''
  }
  const stages: Stage[] = []
  for (const line of lines) {
    const [op = '', ...rest] = line.split(/\s+/)
    const body = line.slice(op.length).trim()
    const words = body.startsWith('[') ? JSON.parse(body) as string[] : rest
    const flags: Record<string, string> = {}
    while (words[0]?.startsWith('--')) {
      const [k = '', v = ''] = words.shift()!.slice(2).split('=')
      flags[k] = v
    }
    const instr = { op: op.toUpperCase(), flags, args: words, text: body }
    if (instr.op === 'FROM') stages.push({ name: words[2] ?? String(stages.length), instrs: [] })
    else if (stages.length) stages.at(-1)!.instrs.push(instr)
  }
  return stages
}

const dockerfile = parseDockerfile(readFileSync(`${REPO}/initcontainer/Dockerfile`, 'utf8'))
const ignored = readFileSync(`${REPO}/initcontainer/Dockerfile.dockerignore`, 'utf8').split('\n')
  .filter((l) => l.trim() && !l.startsWith('#'))
const isIgnored = (p: string) => ignored.some((pat) => pat.startsWith('*.') ? p.endsWith(pat.slice(1)) : p === pat || p.startsWith(`${pat}/`))

t.test('the Dockerfile only uses paths the repo or an earlier stage provides', async (t) => {
  const stages = dockerfile
  t.equal(stages.length, 2, 'a build stage and the final stage')
  for (const [i, stage] of stages.entries()) {
    const copied: string[] = []
    for (const ins of stage.instrs) {
      t.not(ins.op, 'ADD', 'COPY only (ADD could fetch URLs)')
      if (ins.op === 'COPY') {
        const sources = ins.args.slice(0, -1)
        const from = ins.flags['from']
        for (const src of sources) {
          t.notMatch(src, /[*?[]/, `${src}: no globs`)
          if (from === undefined) {
            t.ok(existsSync(`${REPO}/${src}`), `COPY ${src}: in the repo`)
            t.notOk(isIgnored(src), `COPY ${src}: not excluded by Dockerfile.dockerignore`)
            copied.push(src)
          } else {
            const j = stages.findIndex((s) => s.name === from)
            t.ok(j >= 0 && j < i, `COPY --from=${from}: an earlier stage`)
            const made = stages[j]?.instrs.filter((x) => x.op === 'RUN').some((x) => new RegExp(`(^|\\s)${src}(\\s|$)`).test(x.text))
            t.ok(made, `COPY --from=${from} ${src}: a RUN of that stage writes it`)
          }
        }
      }
      if (ins.op === 'RUN') {
        for (const m of ins.text.matchAll(/(?:^|\s)((?:initcontainer|scripts|native|src|test|etc)\/[\w./-]+)/g)) {
          const p = m[1]!
          t.ok(existsSync(`${REPO}/${p}`), `RUN uses ${p}: in the repo`)
          t.ok(copied.some((c) => p === c || p.startsWith(`${c}/`)), `RUN uses ${p}: copied into the stage first`)
        }
      }
    }
  }
  const final = stages.at(-1)!
  const entry = final.instrs.find((x) => x.op === 'ENTRYPOINT')!.args[0]
  t.ok(final.instrs.some((x) => x.op === 'COPY' && x.args.at(-1) === entry), `ENTRYPOINT ${entry} is copied into the final stage`)

  // The options make-stage.sh gives build.mjs are build.mjs's own.
  const buildLine = readFileSync(`${REPO}/initcontainer/make-stage.sh`, 'utf8').split('\n').find((l) => l.includes('scripts/build.mjs'))!
  const buildSrc = readFileSync(`${REPO}/scripts/build.mjs`, 'utf8')
  for (const [, opt] of buildLine.matchAll(/\s--([a-z][\w-]*)/g)) {
    t.match(buildSrc, new RegExp(`\\n\\s*'?${opt}'?: \\{ type:`), `build.mjs takes --${opt}`)
  }
})

t.test('deploy/ agrees with the Dockerfile\'s build args, and its config is valid', async (t) => {
  const arg = (name: string) => {
    const a = dockerfile.at(-1)!.instrs.find((x) => x.op === 'ARG' && x.args[0]!.startsWith(`${name}=`))
    return a!.args[0]!.split('=')[1]!
  }
  const [prefix, sysconfdir, group] = [arg('PREFIX'), arg('SYSCONFDIR'), arg('QEMU_GROUP')]
  t.same([prefix, sysconfdir, group], ['/var/lib/kubevirt/qemu-kube', '/etc/kubevirt', '107'])
  const ds = readFileSync(`${REPO}/deploy/daemonset.yaml`, 'utf8')
  t.match(ds, `path: ${prefix}\n`, 'the hostPath is the compiled-in PREFIX')
  t.match(ds, `path: ${sysconfdir}\n`, 'the hostPath is the compiled-in SYSCONFDIR')
  t.match(ds, new RegExp(`name: QEMU_GROUP.*\\n\\s+value: "${group}"`), 'QEMU_GROUP')
  t.match(ds, /add: \["CHOWN"\]/, 'only CAP_CHOWN')
  const qemuConf = readFileSync(`${REPO}/deploy/libvirt-qemu-conf.yaml`, 'utf8')
  for (const l of [`user = "+${group}"`, `group = "+${group}"`, 'cgroup_controllers = [ ]', 'namespaces = [ ]', 'security_driver = "none"']) {
    t.match(qemuConf, `\n    ${l}\n`, l)
  }
  const cm = readFileSync(`${REPO}/deploy/qemu-kube-configmap.yaml`, 'utf8')
  const conf = cm.split('qemu-kube.conf: |\n')[1]!.split('\n').map((l) => l.replace(/^ {4}/, '')).join('\n')
  const cfg = parseConfig(conf, 'deploy/qemu-kube-configmap.yaml')
  t.same(cfg.vm_uid_range, [20000, 29999], 'per-VM uids from the range')
  t.same(cfg.token_public_keys, [`${sysconfdir}/qemu-kube/token.pub`])
})

// ---------------------------------------------------------------------------------------------
// The entrypoint, for real. Root only.

if (process.getuid?.() !== 0) {
  t.test('needs root (chown, setuid bits, mounts)', { skip: `not root (uid ${process.getuid?.()})` }, () => {})
} else {
  t.test('install-entrypoint.sh, as root', rootTests)
}

async function rootTests(t: Test) {
  const GID = 107 // KubeVirt's qemu group, as a number: it need not exist here (NSS-free)
  const NOBODY = 65534
  const ARCH = process.arch
  // Under /var/tmp (root-owned and sticky, as the front accepts), the base itself 0755.
  const base = mkdtempSync('/var/tmp/qk-ic-')
  chmodSync(base, 0o755)
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  const dir = (p: string, mode = 0o755) => {
    mkdirSync(p, { recursive: true })
    chmodSync(p, mode)
    return p
  }
  // The stage is built for these paths, so the installed front runs right here.
  const prefix = `${base}/prefix`
  const etc = `${base}/etc`
  const stage = `${base}/stage`
  execFileSync('bash', [`${REPO}/initcontainer/make-stage.sh`, '--prefix', prefix, '--sysconfdir', etc, '--out', stage], { stdio: ['ignore', 'ignore', 'pipe'] })
  dir(prefix)
  dir(etc)

  // A ConfigMap volume as kubelet writes it: qemu-kube.conf -> ..data/qemu-kube.conf,
  // ..data -> ..<timestamp>/, swapped by a rename on update.
  const cm = dir(`${base}/configmap`, 0o777)
  let cmGen = 0
  const writeConfigMap = (lines: Record<string, unknown>) => {
    const ts = `..2026_11_25_00_00_0${cmGen++}`
    dir(`${cm}/${ts}`)
    writeFileSync(`${cm}/${ts}/qemu-kube.conf`, toml(lines))
    symlinkSync(ts, `${cm}/..data_tmp`)
    renameSync(`${cm}/..data_tmp`, `${cm}/..data`)
    if (!existsSync(`${cm}/qemu-kube.conf`)) symlinkSync('..data/qemu-kube.conf', `${cm}/qemu-kube.conf`)
    return toml(lines)
  }
  // The key volume (--keys): installed as etc/qemu-kube/token.pem, which the config names.
  const keys = dir(`${base}/keys`)
  writeKey(keys, 'token.pem', (await rsaKey()).pem)
  const pub = `${etc}/qemu-kube/token.pem`
  const config = {
    vm_uid_range: [NOBODY, NOBODY],
    token_public_keys: [pub],
    probe_qemu_binary: `${FIXTURES}/reporter`,
    state_dir: `${base}/state`,
  }
  const confText = writeConfigMap(config)

  const entrypoint = (args: string[], env: Record<string, string> = {}) => spawnSync('bash',
    [`${REPO}/initcontainer/install-entrypoint.sh`, '--stage', stage, ...args],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env['PATH']!, QEMU_GROUP: String(GID), QK_SYSCONFDIR: etc, ...env } })
  const install = (target = prefix, sysconf = etc, extra = ['--config', `${cm}/qemu-kube.conf`, '--keys', keys]) =>
    entrypoint(['--target', target, '--sysconf-target', sysconf, ...extra])
  const front = `${prefix}/bin/qemu-kube`
  const run = (args: string[], uid = 0, gid = 0): SpawnSyncReturns<string> =>
    spawnSync(front, args, { uid, gid, encoding: 'utf8', env: { PATH: '/usr/bin:/bin' }, cwd: '/' })

  /** Every file and directory under `root`: relative path -> [mode, uid, gid]. */
  const tree = (root: string) => {
    const out: Record<string, [string, number, number]> = {}
    const walk = (rel: string) => {
      for (const name of readdirSync(`${root}/${rel}`)) {
        const p = rel ? `${rel}/${name}` : name
        const st = lstatSync(`${root}/${p}`)
        out[p] = [st.mode.toString(8), st.uid, st.gid]
        if (st.isDirectory()) walk(p)
      }
    }
    walk('')
    return out
  }

  const layout = (t: Test) => {
    const got = tree(prefix)
    const want: Record<string, [string, number, number]> = {
      'bin/qemu-kube': ['104755', 0, GID],
      'libexec/qemu-kube/qemu-kube-enter': ['100755', 0, 0],
      'lib/qemu-kube/node': ['100755', 0, 0],
      'lib/qemu-kube/qemu-kube.cjs': ['100644', 0, 0],
      'lib/qemu-kube/qemu-kube.cjs.cache': ['100644', 0, 0],
      'lib/qemu-kube/qemu-kube-cli.cjs': ['100644', 0, 0],
      'lib/qemu-kube/node_modules/koffi/index.cjs': ['100644', 0, 0],
      [`lib/qemu-kube/node_modules/@koromix/koffi-linux-${ARCH}/linux_${ARCH}/koffi.node`]: ['100644', 0, 0],
    }
    for (const [p, v] of Object.entries(want)) t.same(got[p], v, `${p}: ${v[0]} ${v[1]}:${v[2]}`)
    for (const [p, [mode, uid, gid]] of Object.entries(got)) {
      if (mode.startsWith('40')) t.same([mode, uid, gid], ['40755', 0, 0], `${p}/: 0755 root:root`)
      else if (!(p in want)) t.same([mode, uid, gid], ['100644', 0, 0], `${p}: 0644 root:root`)
    }
    t.same(Object.keys(got).filter((p) => p.split('/').some((c) => c.startsWith('.'))), [], 'no temporary files left')
    t.equal(statSync(`${prefix}/lib/qemu-kube/node`).size, statSync(`${stage}/node`).size, 'the staged Node')
    const conf = lstatSync(`${etc}/qemu-kube.conf`)
    t.ok(conf.isFile(), 'the config is a regular file, not the ConfigMap\'s symlink')
    t.same([conf.mode.toString(8), conf.uid, conf.gid], ['100644', 0, 0], 'the config: 0644 root:root')
  }

  t.test('installs the staged tree: layout, modes, ownership', async (t) => {
    const r = install()
    t.equal(r.status, 0, r.stderr)
    t.match(r.stdout, `front root:${GID} 4755`)
    layout(t)
    t.equal(readFileSync(`${etc}/qemu-kube.conf`, 'utf8'), confText, 'the ConfigMap\'s config')
  })

  t.test('the image as the Dockerfile\'s final stage lays it out: the entrypoint\'s defaults work', async (t) => {
    const img = dir(`${base}/image`)
    for (const ins of dockerfile.at(-1)!.instrs.filter((x) => x.op === 'COPY')) {
      const [src, dest] = ins.args as [string, string]
      // COPY --from=build /rootfs /: make-runtime-root.sh's programs; here the host's serve.
      if (ins.flags['from'] !== undefined && src === '/rootfs') continue
      // COPY --from=build /out: the build stage's make-stage.sh --out, i.e. this test's stage.
      mkdirSync(dirname(`${img}${dest}`), { recursive: true })
      execFileSync('cp', ['-R', '--', ins.flags['from'] === undefined ? `${REPO}/${src}` : stage, `${img}${dest}`])
      if (ins.flags['chmod']) chmodSync(`${img}${dest}`, parseInt(ins.flags['chmod'], 8))
    }
    const entry = dockerfile.at(-1)!.instrs.find((x) => x.op === 'ENTRYPOINT')!.args[0]!
    const [target, sysconf] = [dir(`${base}/img-target`), dir(`${base}/img-etc`)]
    const r = spawnSync(`${img}${entry}`, ['--target', target, '--sysconf-target', sysconf],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env['PATH']!, QEMU_GROUP: String(GID) } })
    t.equal(r.status, 0, r.stderr)
    t.equal(statSync(`${target}/bin/qemu-kube`).mode.toString(8), '104755', 'the front, from the image\'s stage')
    t.equal(readFileSync(`${sysconf}/qemu-kube.conf`, 'utf8'), readFileSync(`${REPO}/etc/qemu-kube.conf`, 'utf8'),
      'no ConfigMap given: the image\'s default config')
  })

  t.test('the installed front runs', async (t) => {
    const help = run(['help'])
    t.equal(help.status, 0, help.stderr)
    t.match(help.stdout, /check-config/, 'operator command as root')
    const check = run(['check-config', '--output', 'json'])
    t.equal(check.status, 0, check.stderr)
    t.match(JSON.parse(check.stdout), { ok: true, config: `${etc}/qemu-kube.conf`, keys: [{ file: pub }] }, 'check-config reads the installed config')
    t.equal(run(['help'], NOBODY, GID).status, 0, 'a member of the qemu group may run it')
    t.equal(run(['help'], NOBODY, NOBODY).status, 0, 'and so may anyone (4755: each VM runs as its own uid, no group names them all)')
    const refused = run(['-name', 'guest=x', '-S'], NOBODY, GID)
    t.equal(refused.status, 77, 'a launch without a token is refused')
    t.match(JSON.parse(refused.stderr.trim().split('\n').at(-1)!), { outcome: 'refused', code: /^ERR_/ })
    const probe = run(['-S', '-no-user-config', '-nodefaults', '-nographic', '-machine', 'none,accel=kvm:tcg',
      '-qmp', 'unix:/tmp/qk-ic-probe.monitor,server=on,wait=off', '-pidfile', '/tmp/qk-ic-probe.pid', '-daemonize'], NOBODY, GID)
    t.equal(probe.status, 0, probe.stderr)
    t.equal(JSON.parse(probe.stdout).uid, NOBODY, 'the probe reaches the reporter through node, bundle and enter helper, as the caller')
  })

  t.test('idempotent: runs again, replacing each file; the ConfigMap is the source of truth', async (t) => {
    const before = statSync(front).ino
    const r = install()
    t.equal(r.status, 0, r.stderr)
    layout(t)
    t.not(statSync(front).ino, before, 'the front was replaced by a rename, not rewritten in place')
    const changed = writeConfigMap({ ...config, log_level: 'debug' })
    t.equal(install().status, 0)
    t.equal(readFileSync(`${etc}/qemu-kube.conf`, 'utf8'), changed, 'an updated ConfigMap replaces the config')
    t.equal(install(prefix, etc, []).status, 0)
    t.equal(readFileSync(`${etc}/qemu-kube.conf`, 'utf8'), changed, 'without --config the installed config is kept')
    t.equal(run(['check-config']).status, 0, 'still runs')
  })

  t.test('an invalid ConfigMap fails the init container before anything is written', async (t) => {
    const frontIno = statSync(front).ino
    const good = readFileSync(`${etc}/qemu-kube.conf`, 'utf8')
    const keyBefore = readFileSync(pub, 'utf8')
    writeConfigMap({ ...config, log_levle: 'debug' })
    writeFileSync(`${keys}/token.pem`, (await rsaKey()).pem.replace('PUBLIC KEY', 'PRIVATE KEY'))
    const r = install()
    t.equal(r.status, 78, 'exit 78')
    t.match(r.stderr, /^install-entrypoint: refusing the config, nothing installed: \{"ok":false,"code":"ERR_CONFIG_INVALID","message":".*qemu-kube\.conf:\d+: unknown key log_levle \(did you mean log_level\?\)"\}\n$/)
    t.equal(statSync(front).ino, frontIno, 'the front was not replaced')
    t.equal(readFileSync(`${etc}/qemu-kube.conf`, 'utf8'), good, 'the node keeps its config')
    writeConfigMap(config)
    const k = install()
    t.equal(k.status, 78, 'a private key in the key volume: exit 78')
    t.match(k.stderr, /"code":"ERR_KEY_INVALID","message":"key file .*token\.pem: holds private key material; give the public key only"/)
    t.equal(readFileSync(pub, 'utf8'), keyBefore, 'the node keeps its key')
    t.equal(statSync(front).ino, frontIno, 'and its front')
    writeKey(keys, 'token.pem', (await rsaKey()).pem)
    t.equal(install().status, 0, 'fixed: installs')
    t.not(readFileSync(pub, 'utf8'), keyBefore, 'the new key replaced the old')
  })

  t.test('--uninstall removes the tree and leaves no setuid file', async (t) => {
    const target = dir(`${base}/un-target`)
    const sysconf = dir(`${base}/un-etc`)
    t.equal(entrypoint(['--target', target, '--sysconf-target', sysconf]).status, 0)
    t.equal(statSync(`${target}/bin/qemu-kube`).mode.toString(8), '104755')
    const r = entrypoint(['--uninstall', '--target', target])
    t.equal(r.status, 0, r.stderr)
    t.match(r.stdout, `install-entrypoint: uninstalled; no setuid or setgid file under ${target}\n`)
    t.notOk(existsSync(target), 'the tree is gone, the emptied prefix too')
    t.ok(existsSync(`${sysconf}/qemu-kube.conf`), 'the config stays')
    const stray = dir(`${base}/un-stray`)
    writeFileSync(`${stray}/left`, '')
    chmodSync(`${stray}/left`, 0o4755)
    const s = entrypoint(['--uninstall', '--target', stray])
    t.equal(s.status, 70, 'a setuid file left: exit 70')
    t.match(s.stderr, `install-entrypoint: setuid/setgid files left under ${stray}: ${stray}/left\n`)
  })

  /** A refusal: the exit status, the message, and nothing written into the target or sysconfdir. */
  const refuses = (t: Test, status: number, message: RegExp, target: string, sysconf: string, extra?: string[], env?: Record<string, string>) => {
    const r = extra === undefined && env === undefined ? install(target, sysconf) : entrypoint(['--target', target, '--sysconf-target', sysconf, ...(extra ?? [])], env)
    t.equal(r.status, status, `exit ${status}`)
    t.match(r.stderr, message)
    for (const d of [target, sysconf]) if (existsSync(d)) t.same(readdirSync(d), [], `nothing written into ${d.slice(base.length + 1)}`)
  }

  t.test('refusals, before anything is written', async (t) => {
    const fresh = (name: string, mode = 0o755) => dir(`${base}/${name}`, mode)
    refuses(t, 78, /refusing: .*gw is writable by group or others \(mode 0775\)/, fresh('gw', 0o775), fresh('gw-etc'))
    const userOwned = fresh('user-owned')
    chownSync(userOwned, NOBODY, NOBODY)
    refuses(t, 78, /refusing: .*user-owned is owned by uid 65534, not root/, fresh('user-owned/target'), fresh('uo-etc'))
    const real = fresh('real')
    symlinkSync(real, `${base}/link`)
    refuses(t, 78, /refusing: .*link is a symlink/, `${base}/link`, fresh('link-etc'))
    refuses(t, 78, /refusing: .*link is a symlink/, fresh('real2'), `${base}/link`)
    refuses(t, 66, /no directory at .*missing/, `${base}/missing`, fresh('missing-etc'))
    refuses(t, 64, /must be a numeric gid, got: kvm/, fresh('named'), fresh('named-etc'), [], { QEMU_GROUP: 'kvm' })
    refuses(t, 66, /no config at/, fresh('nocm'), fresh('nocm-etc'), ['--config', `${base}/nonexistent.conf`])
  })

  /**
   * Runs the entrypoint as the DaemonSet's container would: its own mount namespace with the
   * target a mount of its own (tmpfs with `targetOpts`), the root filesystem read-only, and no
   * capability but CAP_CHOWN. `after` runs in the same namespace, with full root, and prints.
   */
  const asContainer = (o: { targetOpts: string; args?: string[]; seed?: boolean; after?: string }) => spawnSync('unshare',
    ['--mount', '--propagation', 'private', 'bash', '-euc', `
      mount -t tmpfs -o ${o.targetOpts} tmpfs "$1"; mount -t tmpfs -o mode=0755 tmpfs "$2"; mount -o remount,bind,ro /
      ${o.seed ? 'touch "$1/left-over"' : ''}
      rc=0; setpriv --bounding-set=-all,+chown -- bash "$3" --stage "$4" --target "$1" --sysconf-target "$2" "\${@:5}" || rc=$?
      echo "rc=$rc"; ${o.after ?? ''}`, 'sh', prefix, etc, `${REPO}/initcontainer/install-entrypoint.sh`, stage, ...(o.args ?? [])],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env['PATH']!, QEMU_GROUP: String(GID), QK_SYSCONFDIR: etc } })

  t.test('as in the DaemonSet: only CAP_CHOWN, read-only root, the target a volume of its own', async (t) => {
    const r = asContainer({ targetOpts: 'mode=0755', args: ['--config', `${cm}/qemu-kube.conf`, '--keys', keys],
      after: `stat -c '%a %u:%g' "$1/bin/qemu-kube"; "$1/bin/qemu-kube" check-config > /dev/null && echo check-config-ok` })
    t.match(r.stdout, `rc=0\n4755 0:${GID}\ncheck-config-ok\n`, r.stderr)
    const nosuid = asContainer({ targetOpts: 'mode=0755,nosuid' })
    t.match(nosuid.stdout, 'rc=78\n')
    t.match(nosuid.stderr, /refusing: .* is on a nosuid mount \(.*nosuid.*\); the front's setuid bit would be ignored/)
  })

  t.test('an emptyDir (0777): made 0755 only with --emptydir, only when empty and a mount point', async (t) => {
    const plain = asContainer({ targetOpts: 'mode=0777' })
    t.match(plain.stdout, 'rc=78\n')
    t.match(plain.stderr, /writable by group or others \(mode 0777\)/)
    const fresh = asContainer({ targetOpts: 'mode=0777', args: ['--emptydir'], after: `stat -c '%a %u:%g' "$1" "$1/bin/qemu-kube"` })
    t.match(fresh.stdout, `rc=0\n755 0:0\n4755 0:${GID}\n`, fresh.stderr)
    t.match(fresh.stdout, 'is a fresh emptyDir (0777, empty): making it 0755')
    const seeded = asContainer({ targetOpts: 'mode=0777', seed: true, args: ['--emptydir'] })
    t.match(seeded.stdout, 'rc=78\n', 'a non-empty one is not trusted')
    refuses(t, 78, /writable by group or others/, dir(`${base}/not-a-mount`, 0o777), dir(`${base}/nam-etc`), ['--emptydir'])
  })
}
