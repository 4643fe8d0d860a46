/*
 * QEMU's private /dev: a small tmpfs holding only what a container's /dev holds (runc's default
 * set) plus the devices QEMU was given with --devices, made from the host's major:minor and
 * owned by QEMU's uid (this /dev is QEMU's alone, so QEMU needs no kvm group). Nothing of the
 * pod's /dev (or the host's) is visible below it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "mountns.h"

static const struct {
	const char *name; /* in --devices */
	const char *host; /* on the host */
	const char *dir;  /* in QEMU's /dev: directory (or NULL) ... */
	const char *node; /* ... and node name */
} DEV[QK_NDEV] = {
	[QK_DEV_KVM] = {"kvm", "/dev/kvm", NULL, "kvm"},
	[QK_DEV_TUN] = {"tun", "/dev/net/tun", "net", "tun"},
	[QK_DEV_VHOST_NET] = {"vhost-net", "/dev/vhost-net", NULL, "vhost-net"},
};

/* The nodes every /dev has, 0666 root:root. */
static const struct {
	const char *name;
	unsigned major, minor;
} BASE[] = {
	{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
};

static const struct {
	const char *name, *target;
} LINKS[] = {
	{"ptmx", "pts/ptmx"},
	{"fd", "/proc/self/fd"},
	{"stdin", "/proc/self/fd/0"},
	{"stdout", "/proc/self/fd/1"},
	{"stderr", "/proc/self/fd/2"},
};

int qk_device_index(const char *name)
{
	for (int i = 0; i < QK_NDEV; i++)
		if (strcmp(name, DEV[i].name) == 0)
			return i;
	return -1;
}

void qk_devices_probe(struct qk_devices *d)
{
	d->present = 0;
	for (int i = 0; i < QK_NDEV; i++) {
		struct stat st;
		if (!(d->wanted & (1u << i)))
			continue;
		if (fstatat(AT_FDCWD, DEV[i].host, &st, AT_SYMLINK_NOFOLLOW) != 0) {
			if (errno == ENOENT)
				continue; /* the host lacks it: QEMU does without (e.g. TCG for kvm) */
			qk_bail("MOUNT", DEV[i].host, "");
		}
		if (!S_ISCHR(st.st_mode)) {
			char msg[128];
			snprintf(msg, sizeof(msg), "%s on the host is not a character device", DEV[i].host);
			qk_fail("MOUNT", msg, "");
		}
		d->present |= 1u << i;
		d->rdev[i] = st.st_rdev;
	}
}

static void node(int dir, const char *name, mode_t mode, dev_t rdev)
{
	if (mknodat(dir, name, S_IFCHR | mode, rdev) != 0) {
		char step[128];
		snprintf(step, sizeof(step), "mknod /dev/%s", name);
		qk_bail("MOUNT", step, "");
	}
}

/* A directory of our tmpfs, as an fd; nobody else can reach this tmpfs yet. */
static int subdir(int dev, const char *name, mode_t mode)
{
	char step[128];
	snprintf(step, sizeof(step), "mkdir /dev/%s", name);
	if (mkdirat(dev, name, mode) != 0)
		qk_bail("MOUNT", step, "");
	int fd = qk_open_dir(dev, name, RESOLVE_NO_XDEV | RESOLVE_BENEATH);
	if (fd < 0)
		qk_bail("MOUNT", step, "");
	return fd;
}

int qk_devfs_mount(int devdir, const struct qk_devices *d, uid_t uid, gid_t gid)
{
	static const char *const dev_opts[] = {"mode=0755", "size=64k", "nr_inodes=64", NULL};
	static const char *const pts_opts[] = {"newinstance", "ptmxmode=0666", "mode=0620", NULL};
	static const char *const shm_opts[] = {"mode=1777", "size=64m", NULL};

	int dev = qk_fs_new("tmpfs", dev_opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
	/* Irreversible for QEMU: the pod's /dev is covered from here on. */
	qk_attach(dev, devdir, "/dev");

	for (size_t i = 0; i < sizeof(BASE) / sizeof(BASE[0]); i++)
		node(dev, BASE[i].name, 0666, makedev(BASE[i].major, BASE[i].minor));
	for (size_t i = 0; i < sizeof(LINKS) / sizeof(LINKS[0]); i++)
		if (symlinkat(LINKS[i].target, dev, LINKS[i].name) != 0)
			qk_bail("MOUNT", "symlink in /dev", "");

	/* Our own devpts instance: QEMU's ptys are not the pod's, and the pod's are not QEMU's. */
	int pts = subdir(dev, "pts", 0755);
	int ptsfs = qk_fs_new("devpts", pts_opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
	qk_attach(ptsfs, pts, "/dev/pts");
	close(ptsfs);
	close(pts);

	int shm = subdir(dev, "shm", 01777);
	int shmfs = qk_fs_new("tmpfs", shm_opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
	qk_attach(shmfs, shm, "/dev/shm");
	close(shmfs);
	close(shm);

	int net = -1;
	for (int i = 0; i < QK_NDEV; i++) {
		if (!(d->wanted & d->present & (1u << i)))
			continue;
		int dir = dev;
		if (DEV[i].dir != NULL) {
			if (net < 0)
				net = subdir(dev, DEV[i].dir, 0755);
			dir = net;
		}
		node(dir, DEV[i].node, 0600, d->rdev[i]);
		if (fchownat(dir, DEV[i].node, uid, gid, AT_SYMLINK_NOFOLLOW) != 0)
			qk_bail("MOUNT", "chown of a --devices node", "");
	}
	if (net >= 0)
		close(net);
	return dev;
}
