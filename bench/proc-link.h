/*
 * For launches against a synthetic /proc (bench/proc-tree.mjs): qemu-kube reads its own entry,
 * PROC_ROOT/<own pid>/stat (the uid lease), so the timers put `DIR/<pid> -> /proc/<pid>` in the
 * tree for the launched pid while it runs. A fake entry holding that pid is moved aside
 * (DIR/.aside-<pid>) meanwhile, so the tree has one fake process fewer for that launch.
 */
#include <stdio.h>
#include <unistd.h>

static void proc_link(const char *dir, int pid)
{
	char link[4096], aside[4096], target[64];
	snprintf(link, sizeof(link), "%s/%d", dir, pid);
	snprintf(aside, sizeof(aside), "%s/.aside-%d", dir, pid);
	snprintf(target, sizeof(target), "/proc/%d", pid);
	rename(link, aside); /* ENOENT when no fake entry has the pid */
	if (symlink(target, link) != 0)
		perror("proc_link");
}

static void proc_unlink(const char *dir, int pid)
{
	char link[4096], aside[4096];
	snprintf(link, sizeof(link), "%s/%d", dir, pid);
	snprintf(aside, sizeof(aside), "%s/.aside-%d", dir, pid);
	unlink(link);
	rename(aside, link);
}
