/*
 * Carrying libvirt's per-domain host directories into QEMU's mount namespace.
 *
 * Host side (before setns, as root): each --carry path is walked from "/" without following any
 * symlink and must be a directory owned by --uid. libvirt chowns a domain's directories to the
 * domain's DAC uid, so ownership by QEMU's uid proves that uid could already read it: root
 * cloning it for that uid gains the caller nothing. The clone (open_tree OPEN_TREE_CLONE) is a
 * detached mount that survives setns.
 *
 * Pod side (in QEMU's namespace, as root): a tmpfs over each root used hides whatever the pod
 * has there (for QEMU only; the namespace is a slave), the path below the root is created in
 * that tmpfs, and the clone is moved onto it. Every step is fd-relative: no path is resolved in
 * the pod's filesystem twice.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include "mountns.h"

static const char HINT_HOST[] =
	"a --carry path must be a real directory (no symlinks) owned by QEMU's uid; libvirt chowns a domain's directories to it";

void qk_carry_open(struct qk_carry *c, size_t n, uid_t uid)
{
	char msg[PATH_MAX + 256];
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		int fd = qk_open_dir(AT_FDCWD, c[i].path, 0);
		if (fd < 0) {
			snprintf(msg, sizeof(msg), "--carry %s: %s", c[i].path,
				 errno == ELOOP ? "a symlink in the path (symlinks are never followed)" : strerror(errno));
			qk_fail("CARRY", msg, HINT_HOST);
		}
		if (fstat(fd, &st) != 0)
			qk_bail("CARRY", "fstat(--carry)", "");
		if (!S_ISDIR(st.st_mode) || st.st_uid != uid) {
			snprintf(msg, sizeof(msg), "--carry %s: owned by uid %u, expected the directory of --uid %u",
				 c[i].path, (unsigned)st.st_uid, (unsigned)uid);
			qk_fail("CARRY", msg, HINT_HOST);
		}
		/* A detached copy of the directory and everything mounted below it. */
		c[i].clone = open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE);
		if (c[i].clone < 0) {
			snprintf(msg, sizeof(msg), "open_tree(--carry %s)", c[i].path);
			qk_bail("CARRY", msg, "");
		}
		/* QEMU needs files there, never set-id programs or device nodes. */
		struct mount_attr attr;
		memset(&attr, 0, sizeof(attr));
		attr.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
		if (mount_setattr(c[i].clone, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof(attr)) != 0)
			qk_bail("CARRY", "mount_setattr(--carry clone, nosuid|nodev)", "");
		close(fd);
	}
}

/* mkdir -p rel below dir, one component at a time, never leaving dir's mount (our tmpfs). */
static int make_path(int dir, const char *rel, const char *full)
{
	char comp[NAME_MAX + 1], step[PATH_MAX + 64];
	int cur = dup(dir);
	if (cur < 0)
		qk_bail("CARRY", "dup", "");
	while (*rel) {
		size_t len = strcspn(rel, "/");
		snprintf(comp, sizeof(comp), "%.*s", (int)len, rel);
		rel += len + (rel[len] == '/');
		if (mkdirat(cur, comp, 0755) != 0 && errno != EEXIST) {
			snprintf(step, sizeof(step), "mkdir below the carry root for %s", full);
			qk_bail("CARRY", step, "");
		}
		int next = qk_open_dir(cur, comp, RESOLVE_NO_XDEV | RESOLVE_BENEATH);
		if (next < 0) {
			snprintf(step, sizeof(step), "open below the carry root for %s", full);
			qk_bail("CARRY", step, "");
		}
		close(cur);
		cur = next;
	}
	return cur;
}

void qk_carry_place(struct qk_carry *c, size_t n)
{
	static const char *const opts[] = {"mode=0755", "size=64k", NULL};
	char msg[PATH_MAX + 256];
	for (size_t i = 0; i < n; i++) {
		size_t j;
		for (j = 0; j < i && strcmp(c[j].root, c[i].root) != 0; j++)
			;
		if (j < i)
			continue; /* this root was handled with an earlier path */

		int rootdir = qk_open_dir(AT_FDCWD, c[i].root, 0);
		if (rootdir < 0) {
			snprintf(msg, sizeof(msg), "carry root %s is not a directory in the pod (symlinks are not followed): %s",
				 c[i].root, strerror(errno));
			qk_fail("CARRY", msg, "the launcher image must contain that directory");
		}
		int tmp = qk_fs_new("tmpfs", opts, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
		/* Irreversible for QEMU: the pod's files under this root are hidden from QEMU. */
		qk_attach(tmp, rootdir, c[i].root);
		for (size_t k = i; k < n; k++) {
			if (strcmp(c[k].root, c[i].root) != 0)
				continue;
			int target = make_path(tmp, c[k].path + strlen(c[k].root) + 1, c[k].path);
			/* Irreversible for QEMU: the host directory appears at its host path. */
			qk_attach(c[k].clone, target, c[k].path);
			close(target);
			close(c[k].clone);
			c[k].clone = -1;
		}
		close(tmp);
		close(rootdir);
	}
}
