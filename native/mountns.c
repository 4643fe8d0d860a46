/*
 * QEMU's own mount namespace, derived from the pod's (what libvirt's namespaces=["mount"] does
 * on a host, done inside the pod). Runs as root, after setns into the pod and (with a pid
 * namespace) in the forked child, before the credentials are dropped.
 *
 * Order (each step needs the ones before it):
 *   1. unshare(CLONE_NEWNS): a copy of the pod's mount tree, ours alone
 *   2. make every mount a slave: the pod's later mounts still reach us, ours never reach the pod
 *   3. name the pod's /dev and /proc (no symlinks), once: an fd opened before unshare would name
 *      the pod's mount, which move_mount refuses as a target in our namespace
 *   4. /dev (devfs.c) before /proc: the /proc masks are binds of the new /dev/null
 *   5. a fresh procfs on /proc, hidepid=invisible, with runc's read-only and masked entries
 *   6. the carried host directories (carry.c), last: nothing mounted later can cover them
 *
 * Every mount is made with the new mount API and attached to a directory fd, never a path that
 * could be re-resolved (the pod's processes can rename and symlink in the pod's filesystem).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "mountns.h"

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

int qk_open_dir(int dirfd, const char *path, unsigned long long extra_resolve)
{
	struct open_how how;
	memset(&how, 0, sizeof(how));
	how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
	how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | extra_resolve;
	return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

int qk_fs_new(const char *fstype, const char *const *opts, unsigned attrs)
{
	char step[256];
	int fs = fsopen(fstype, FSOPEN_CLOEXEC);
	if (fs < 0) {
		snprintf(step, sizeof(step), "fsopen(%s)", fstype);
		qk_bail("MOUNT", step, "");
	}
	for (; opts && *opts; opts++) {
		char key[64];
		const char *eq = strchr(*opts, '=');
		size_t klen = eq ? (size_t)(eq - *opts) : strlen(*opts);
		snprintf(key, sizeof(key), "%.*s", (int)klen, *opts);
		int r = eq ? fsconfig(fs, FSCONFIG_SET_STRING, key, eq + 1, 0)
			   : fsconfig(fs, FSCONFIG_SET_FLAG, key, NULL, 0);
		if (r != 0) {
			snprintf(step, sizeof(step), "fsconfig(%s, %s)", fstype, *opts);
			qk_bail("MOUNT", step, "");
		}
	}
	if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) {
		snprintf(step, sizeof(step), "fsconfig(%s, create)", fstype);
		qk_bail("MOUNT", step, "");
	}
	int mnt = fsmount(fs, FSMOUNT_CLOEXEC, attrs);
	if (mnt < 0) {
		snprintf(step, sizeof(step), "fsmount(%s)", fstype);
		qk_bail("MOUNT", step, "");
	}
	close(fs);
	return mnt;
}

void qk_attach(int mnt, int target, const char *what)
{
	char step[512];
	if (move_mount(mnt, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0) {
		snprintf(step, sizeof(step), "move_mount onto %.400s", what);
		qk_bail("MOUNT", step, "");
	}
}

/* The pod's /dev or /proc: a real directory (symlinks not followed), else refuse. */
static int pod_dir(const char *path)
{
	int fd = qk_open_dir(AT_FDCWD, path, 0);
	if (fd < 0) {
		char msg[256];
		snprintf(msg, sizeof(msg), "the pod has no %s directory (symlinks are not followed): %s", path,
			 strerror(errno));
		qk_fail("MOUNT", msg, "the launcher image must contain /dev and /proc as directories");
	}
	return fd;
}

/*
 * What runc gives a container's /proc: these entries read-only (a bind of each onto itself,
 * then read-only) ...
 */
static const char *const PROC_RO[] = {"sys", "sysrq-trigger", "irq", "bus"};
/* ... and these masked by /dev/null. Entries this kernel lacks are skipped. */
static const char *const PROC_MASK[] = {"kcore", "keys", "timer_list"};

static int proc_has(int proc, const char *name)
{
	struct stat st;
	if (fstatat(proc, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return 1;
	if (errno != ENOENT) {
		char step[128];
		snprintf(step, sizeof(step), "fstatat(/proc/%s)", name);
		qk_bail("MOUNT", step, "");
	}
	return 0;
}

/*
 * A fresh procfs. hidepid=invisible: QEMU runs under a per-VM uid and sees exactly its own
 * processes; it also gives QEMU a /proc/self in the host pid namespace, where the pod's /proc
 * (the pod's pid namespace) has none for it. Not subset=pid: measured, QEMU 7.2 opens
 * /proc/filesystems at start-up (and glibc and QEMU's accelerators read /proc/sys, /proc/meminfo,
 * /proc/cpuinfo on other paths), which subset=pid removes; the read-only binds below cover the
 * writable part of what stays.
 */
static void procfs_mount(int procdir, int dev)
{
	static const char *const opts[] = {"hidepid=invisible", NULL};
	int proc = qk_fs_new("proc", opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
	/* Irreversible for QEMU: the pod's /proc is covered from here on. */
	qk_attach(proc, procdir, "/proc");

	for (size_t i = 0; i < sizeof(PROC_RO) / sizeof(PROC_RO[0]); i++) {
		const char *name = PROC_RO[i];
		char step[128];
		if (!proc_has(proc, name))
			continue;
		snprintf(step, sizeof(step), "read-only bind of /proc/%s", name);
		int b = open_tree(proc, name, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW);
		if (b < 0)
			qk_bail("MOUNT", step, "");
		struct mount_attr attr;
		memset(&attr, 0, sizeof(attr));
		attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
		if (mount_setattr(b, "", AT_EMPTY_PATH, &attr, sizeof(attr)) != 0)
			qk_bail("MOUNT", step, "");
		/* Irreversible for QEMU: /proc/NAME is read-only. */
		if (move_mount(b, "", proc, name, MOVE_MOUNT_F_EMPTY_PATH) != 0)
			qk_bail("MOUNT", step, "");
		close(b);
	}
	for (size_t i = 0; i < sizeof(PROC_MASK) / sizeof(PROC_MASK[0]); i++) {
		const char *name = PROC_MASK[i];
		char step[128];
		if (!proc_has(proc, name))
			continue;
		snprintf(step, sizeof(step), "mask /proc/%s with /dev/null", name);
		int b = open_tree(dev, "null", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW);
		if (b < 0)
			qk_bail("MOUNT", step, "");
		/* Irreversible for QEMU: /proc/NAME reads as /dev/null. */
		if (move_mount(b, "", proc, name, MOVE_MOUNT_F_EMPTY_PATH) != 0)
			qk_bail("MOUNT", step, "");
		close(b);
	}
	close(proc);
}

void qk_mountns_own(const struct qk_mountns *m)
{
	/* 1. Irreversible: QEMU's mount namespace, a copy of the pod's; the pod keeps its own. */
	if (unshare(CLONE_NEWNS) != 0)
		qk_bail("MOUNT", "unshare(CLONE_NEWNS)", "");
	/* 2. Irreversible, before any mount: slaves receive the pod's mounts and send nothing back,
	 * so the pod's processes never see /dev, /proc or the carried directories of QEMU. */
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0)
		qk_bail("MOUNT", "mount(/, MS_REC|MS_SLAVE)", "");

	/* 3. Resolved once, in our namespace, before anything is mounted on them. */
	int devdir = pod_dir("/dev");
	int procdir = pod_dir("/proc");

	/* Node names, directories and tmpfs roots below carry explicit modes; the caller's umask
	 * must not change them (it is restored for QEMU afterwards). */
	mode_t saved = umask(0);

	/* 4., 5., 6. */
	int dev = qk_devfs_mount(devdir, m->devices, m->uid, m->gid);
	procfs_mount(procdir, dev);
	qk_carry_place(m->carry, m->ncarry);

	umask(saved);
	close(dev);
	close(devdir);
	close(procdir);
}
