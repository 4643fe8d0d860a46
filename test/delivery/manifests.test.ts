// deploy/ as shipped: the ConfigMaps pass the init container's gate, the checksum annotation is
// current (and a stale one is caught), the DaemonSet runs the agent as docs/CHAIN.md section 3
// needs, and the uninstall DaemonSet uses the same image. Plus the gate itself
// (initcontainer/validate-config.ts) on hostile inputs: each refusal's exact code and message.
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { validate } from '../../initcontainer/validate-config.ts'
import { QkError } from '../../src/emulator/errors.ts'
import { REPO } from '../helpers/install.ts'
import { rsaKey } from '../helpers/tokens.ts'

/** The data key of a ConfigMap manifest, as the kubelet writes the file. */
function configMapData(file: string, key: string): string {
  const text = readFileSync(`${REPO}/deploy/${file}`, 'utf8')
  const lines = text.split(`\n  ${key}: |\n`)[1]!.split('\n')
  const body: string[] = []
  for (const l of lines) {
    if (l !== '' && !l.startsWith('    ')) break
    body.push(l.slice(4))
  }
  return `${body.join('\n').replace(/\n+$/, '')}\n`
}

const tmp = mkdtempSync(`${tmpdir()}/qk-manifests-`)
t.teardown(() => rmSync(tmp, { recursive: true, force: true }))

const refusal = (fn: () => unknown) => {
  try {
    fn()
  } catch (err) {
    if (err instanceof QkError) return { code: err.code, message: err.message }
    throw err
  }
  return null
}

t.test('the shipped ConfigMaps pass the gate the init container runs', async (t) => {
  const cm = `${tmp}/cm`
  const keys = `${tmp}/keys`
  mkdirSync(cm)
  mkdirSync(keys)
  writeFileSync(`${cm}/qemu-kube.conf`, configMapData('qemu-kube-configmap.yaml', 'qemu-kube.conf'))
  writeFileSync(`${keys}/token.pub`, configMapData('qemu-kube-keys.yaml', 'token.pub'))
  const r = validate({ config: `${cm}/qemu-kube.conf`, sysconfdir: '/etc/kubevirt', sysconfTarget: `${tmp}/no-node`, keys })
  t.same(r.keys, [{ file: '/etc/kubevirt/qemu-kube/token.pub', from: 'shipped', kids: ['token'] }], 'token_public_keys names the shipped key')
})

t.test('the config-checksum annotation is current; a ConfigMap edit makes it stale', async (t) => {
  const ok = spawnSync('bash', [`${REPO}/deploy/config-checksum.sh`, '--check'], { encoding: 'utf8' })
  t.equal(ok.status, 0, ok.stderr)
  const copy = `${tmp}/deploy`
  cpSync(`${REPO}/deploy`, copy, { recursive: true })
  writeFileSync(`${copy}/qemu-kube-configmap.yaml`, `${readFileSync(`${copy}/qemu-kube-configmap.yaml`, 'utf8')}    log_level = "debug"\n`)
  const stale = spawnSync('bash', [`${copy}/config-checksum.sh`, '--check'], { encoding: 'utf8' })
  t.equal(stale.status, 1, 'stale: exit 1')
  t.match(stale.stderr, /^config-checksum\.sh: stale; want sha256:[0-9a-f]{32} \(run deploy\/config-checksum\.sh\)\n$/)
  const fix = spawnSync('bash', [`${copy}/config-checksum.sh`], { encoding: 'utf8' })
  t.equal(fix.status, 0)
  t.equal(spawnSync('bash', [`${copy}/config-checksum.sh`, '--check']).status, 0, 'rewritten: current')
  t.not(readFileSync(`${copy}/daemonset.yaml`, 'utf8'), readFileSync(`${REPO}/deploy/daemonset.yaml`, 'utf8'), 'the pod template changed (a rollout)')
})

t.test('the DaemonSet: agent container as the resident verifier needs, keys beside the config', async (t) => {
  const ds = readFileSync(`${REPO}/deploy/daemonset.yaml`, 'utf8')
  t.match(ds, /\n {6}hostPID: true\n/, 'hostPID (the agent enters PID 1\'s mount namespace)')
  t.match(ds, /- name: agent\n.*\n.*\n {10}command: \["nsenter", "--target=1", "--mount", "--", "\/var\/lib\/kubevirt\/qemu-kube\/bin\/qemu-kube", "agent"\]\n {10}securityContext:\n {12}runAsUser: 0\n {12}privileged: true\n/)
  t.match(ds, /"--config", "\/config\/qemu-kube\.conf", "--keys", "\/keys"\]/)
  t.match(ds, /- name: keys\n {10}configMap:\n {12}name: qemu-kube-token-keys\n/)
  const images = [...ds.matchAll(/image: (\S+)/g)].map((m) => m[1])
  t.same(new Set(images).size, 1, 'one image for install and agent')
  const un = readFileSync(`${REPO}/deploy/uninstall.yaml`, 'utf8')
  t.match(un, /args: \["--uninstall", "--target", "\/node\/kubevirt\/qemu-kube"\]/)
  t.same([...new Set([...un.matchAll(/image: (\S+)/g)].map((m) => m[1]))], [images[0]], 'the uninstall uses the same image')
})

t.test('the gate refuses, with the front\'s codes and messages', async (t) => {
  const key = (await rsaKey()).pem
  const cm = `${tmp}/gate`
  const keys = `${cm}/keys`
  const node = `${cm}/node-etc`
  mkdirSync(keys, { recursive: true })
  mkdirSync(`${node}/qemu-kube`, { recursive: true })
  writeFileSync(`${keys}/a.pub`, key)
  writeFileSync(`${keys}/..data`, 'not a key: dotfiles are the volume\'s own')
  const conf = (extra: string) => {
    writeFileSync(`${cm}/c.conf`, `vm_uid_range = [ 20000, 29999 ]\n${extra}`)
    return { config: `${cm}/c.conf`, sysconfdir: '/etc/kubevirt', sysconfTarget: node, keys }
  }
  t.same(validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub" ]\n')).keys,
    [{ file: '/etc/kubevirt/qemu-kube/a.pub', from: 'shipped', kids: ['a'] }])
  t.same(refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub" ]\nlog_levle = "info"\n'))),
    { code: 'ERR_CONFIG_INVALID', message: `${cm}/c.conf:3: unknown key log_levle (did you mean log_level?)` }, 'an unknown key (a newer binary\'s)')
  t.same(refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub"\n'))),
    { code: 'ERR_CONFIG_SYNTAX', message: refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub"\n')))!.message }, 'syntax')
  t.match(refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub"\n')))!.message, new RegExp(`^${cm}/c\\.conf:\\d+(:\\d+)?: `))
  t.same(refusal(() => validate(conf('token_public_keys = [ "/srv/keys/a.pub" ]\n'))),
    { code: 'ERR_KEY_INVALID', message: 'token_public_keys: expected a file under /etc/kubevirt (the sysconfdir this init container installs), got /srv/keys/a.pub' })
  t.same(refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/b.pub" ]\n'))),
    { code: 'ERR_KEY_INVALID', message: 'token_public_keys: /etc/kubevirt/qemu-kube/b.pub is neither shipped in the key volume (/etc/kubevirt/qemu-kube/a.pub) nor on the node' })
  writeFileSync(`${node}/qemu-kube/b.pub`, key)
  t.same(validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/b.pub" ]\n')).keys,
    [{ file: '/etc/kubevirt/qemu-kube/b.pub', from: 'node', kids: ['b'] }], 'a key already on the node')
  writeFileSync(`${keys}/c.pub`, 'hello')
  t.same(refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub" ]\n'))),
    { code: 'ERR_KEY_INVALID', message: refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub" ]\n')))!.message })
  t.match(refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub" ]\n')))!.message, new RegExp(`^key file ${keys}/c\\.pub: `), 'every shipped key is checked, used or not')
  rmSync(`${keys}/c.pub`)
  writeFileSync(`${keys}/d.pub`, key.replace('PUBLIC KEY', 'PRIVATE KEY'))
  t.same(refusal(() => validate(conf('token_public_keys = [ "/etc/kubevirt/qemu-kube/a.pub" ]\n'))),
    { code: 'ERR_KEY_INVALID', message: `key file ${keys}/d.pub: holds private key material; give the public key only` })
})
