/*
 * The nsenter-like floor for the startup bench: what entering a pod and becoming QEMU costs with
 * no verification at all. Run as root:
 *
 *   startup-setns [-c DIR[:DIR...]] PID UID GID QEMU [ARG...]
 *
 * [-c: write "0" to each DIR/cgroup.procs first: the cgroup join as the front does it with the
 * agent's fds, so the row with -c is the floor a launch through the agent can be held to],
 * pidfd_open(PID), setns(pidfd, mnt|net|ipc|uts|cgroup), setgroups(0), setresgid, setresuid,
 * execve(QEMU) with a two-variable environment. Any failure: perror, exit 71.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static int join(char *dirs)
{
	for (char *dir = strtok(dirs, ":"); dir != NULL; dir = strtok(NULL, ":")) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "0", 1) != 1) {
			perror(path);
			return -1;
		}
		close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "-c") == 0) {
		if (join(argv[2]) != 0)
			return 71;
		argv += 2;
		argc -= 2;
	}
	if (argc < 5)
		return 64;
	pid_t pid = (pid_t)atoi(argv[1]);
	uid_t uid = (uid_t)atoi(argv[2]);
	gid_t gid = (gid_t)atoi(argv[3]);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0) {
		perror("pidfd_open");
		return 71;
	}
	if (setns(pidfd, CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP) != 0) {
		perror("setns");
		return 71;
	}
	if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
		perror("credentials");
		return 71;
	}
	char *env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
	execve(argv[4], argv + 4, env);
	perror("execve");
	return 71;
}
