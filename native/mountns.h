/*
 * The enter helper's own mount namespace for QEMU (--mnt=own), split by kernel concept:
 *   mountns.c  unshare + slave propagation, naming mount points without symlinks, the fresh
 *              procfs, and the order of the whole step (qk_mountns_own)
 *   devfs.c    QEMU's private /dev (a tmpfs with a fixed set of nodes)
 *   carry.c    host directories cloned before setns and placed after it
 *   podlink.c  the unix-socket link to the pod's launcher and the watcher that stops QEMU
 * Errors end the process through qk_fail/qk_bail (setns.c: one JSON line, exit 71).
 */
#ifndef QK_MOUNTNS_H
#define QK_MOUNTNS_H

#include <stddef.h>
#include <sys/types.h>

/* One JSON line on stderr, exit 71. qk_bail appends ": strerror(errno)" to step. */
_Noreturn void qk_fail(const char *code, const char *msg, const char *hint);
_Noreturn void qk_bail(const char *code, const char *step, const char *hint);

/* ---- devfs.c ---- */
enum { QK_DEV_KVM, QK_DEV_TUN, QK_DEV_VHOST_NET, QK_NDEV };

struct qk_devices {
	unsigned wanted;  /* bit i: --devices named QK_DEV i */
	unsigned present; /* bit i: it exists on the host as a character device */
	dev_t rdev[QK_NDEV];
};

/* Index of a --devices name ("kvm", "tun", "vhost-net"), or -1. */
int qk_device_index(const char *name);
/* Host side, before setns: which wanted devices exist, and their major:minor. */
void qk_devices_probe(struct qk_devices *d);
/* In QEMU's namespace: a tmpfs on the directory devdir, populated. Returns its mount fd. */
int qk_devfs_mount(int devdir, const struct qk_devices *d, uid_t uid, gid_t gid);

/* ---- carry.c ---- */
struct qk_carry {
	const char *path; /* absolute, normalised, strictly under root */
	const char *root; /* the --carry-roots entry it lives under */
	int clone;        /* open_tree(OPEN_TREE_CLONE) of the host directory, or -1 */
};

/* Host side, before setns: check each path (no symlinks, a directory owned by uid) and clone it. */
void qk_carry_open(struct qk_carry *c, size_t n, uid_t uid);
/* In QEMU's namespace: a tmpfs over each root used, the clones moved to their paths. */
void qk_carry_place(struct qk_carry *c, size_t n);

/* ---- mountns.c ---- */
struct qk_mountns {
	uid_t uid;
	gid_t gid;
	const struct qk_devices *devices;
	struct qk_carry *carry;
	size_t ncarry;
};

/* openat2(dirfd, path, O_PATH|O_DIRECTORY, RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|extra); -1 + errno. */
int qk_open_dir(int dirfd, const char *path, unsigned long long extra_resolve);
/* A new detached filesystem mount: fsopen/fsconfig/fsmount. opts: "key=value" or "flag" strings. */
int qk_fs_new(const char *fstype, const char *const *opts, unsigned attrs);
/* Irreversible for QEMU's view: mount the detached mount mnt on the directory fd target. */
void qk_attach(int mnt, int target, const char *what);
/* Steps c) to f): unshare, slave, /dev, /proc, carry. Must run as root, in the pod's mount ns. */
void qk_mountns_own(const struct qk_mountns *m);

/* ---- podlink.c ---- */
/*
 * As the unprivileged uid, right before exec: hand the launcher listening at path a pidfd of this
 * process, then fork the watcher that keeps the connection and stops this process (QEMU) when
 * the launcher sends "s", closes the link or exits (launcher_pidfd polls readable; -1: unknown).
 * stop_timeout_s: seconds between the watcher's SIGTERM and its SIGKILL.
 */
void qk_podlink(const char *path, int launcher_pidfd, unsigned stop_timeout_s);

#endif
