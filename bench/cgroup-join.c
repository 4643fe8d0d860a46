/*
 * The cgroup join alone, for the startup bench: how long one write of a pid into cgroup.procs
 * takes when it is the first such write after a quiet spell ("cold") and right after another
 * ("warm"). Every cgroup.procs write takes the kernel's global cgroup_threadgroup_rwsem for
 * writing; a writer that finds its RCU-sync idle waits for a grace period first.
 *
 *   cgroup-join HOME DIR ROUNDS GAP_MS
 *
 * HOME is the cgroup a forked, sleeping child starts in (our own, in that hierarchy); DIR an
 * empty directory created for the test in the same hierarchy. Per round: mkdir DIR/a and DIR/b
 * (fresh cgroups), sleep GAP_MS, time the child into a (cold), into b (warm), back to HOME,
 * rmdir both. Prints "cold_ns warm_ns back_ns" per round.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long put(const char *dir, pid_t pid)
{
	char path[4096], b[32];
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	int n = snprintf(b, sizeof(b), "%d\n", pid);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		perror(path);
		return -1;
	}
	long long t = now();
	if (write(fd, b, (size_t)n) != n) {
		perror(path);
		t = -1;
	} else {
		t = now() - t;
	}
	close(fd);
	return t;
}

int main(int argc, char **argv)
{
	if (argc != 5)
		return 64;
	const char *home = argv[1], *dir = argv[2];
	int rounds = atoi(argv[3]), gap = atoi(argv[4]);
	char a[4096], b[4096];
	snprintf(a, sizeof(a), "%s/a", dir);
	snprintf(b, sizeof(b), "%s/b", dir);
	pid_t child = fork();
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;)
			pause();
	}
	int status = 0;
	for (int i = 0; i < rounds && status == 0; i++) {
		if (mkdir(a, 0755) != 0 || mkdir(b, 0755) != 0) {
			perror("mkdir");
			status = 71;
			break;
		}
		usleep((useconds_t)gap * 1000);
		long long cold = put(a, child), warm = cold < 0 ? -1 : put(b, child), back = put(home, child);
		if (cold < 0 || warm < 0 || back < 0)
			status = 71;
		else
			printf("%lld %lld %lld\n", cold, warm, back);
		if (rmdir(a) != 0 || rmdir(b) != 0) {
			perror("rmdir");
			status = 71;
		}
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	rmdir(a);
	rmdir(b);
	return status;
}
