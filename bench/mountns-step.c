/*
 * Times the enter helper's mount-namespace step (native/mountns.c, --mnt=own) against a live
 * pod, without a timing option on the helper itself (it is reachable from a setuid binary):
 *
 *   mountns-step PID ITERATIONS UID CARRY-ROOT CARRY-DIR [DEVICES]     (root; make -C native bench)
 *
 * Each iteration forks a child that (1) clones CARRY-DIR on the host (qk_carry_open, owned by
 * UID) and probes the devices, (2) setns into PID's mount namespace, (3) runs qk_mountns_own:
 * unshare, slave, /dev, /proc, carry. (1) and (3) are timed apart; setns is not part of the step.
 * The procfs belongs to the bench's pid namespace (no pid setns): the cost is the same.
 * Prints p50/p90/max in microseconds for the host part, the namespace part and their sum.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "mountns.h"

_Noreturn void qk_fail(const char *code, const char *msg, const char *hint)
{
	fprintf(stderr, "%s: %s (%s)\n", code, msg, hint);
	_exit(71);
}

_Noreturn void qk_bail(const char *code, const char *step, const char *hint)
{
	fprintf(stderr, "%s: %s: %s (%s)\n", code, step, strerror(errno), hint);
	_exit(71);
}

static long long now_us(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		qk_bail("BENCH", "clock_gettime", "");
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

static void report(const char *what, long long *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp);
	printf("%-28s p50 %6lld us  p90 %6lld us  max %6lld us  (n=%d)\n", what, v[n / 2], v[n * 9 / 10], v[n - 1], n);
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s PID ITERATIONS UID CARRY-ROOT CARRY-DIR [kvm,tun,vhost-net]\n", argv[0]);
		return 64;
	}
	int iters = atoi(argv[2]);
	uid_t uid = (uid_t)atol(argv[3]);
	struct qk_devices dev;
	memset(&dev, 0, sizeof(dev));
	if (argc > 6) {
		char *save = argv[6], *e;
		while ((e = strsep(&save, ",")) != NULL && *e)
			if (qk_device_index(e) >= 0)
				dev.wanted |= 1u << qk_device_index(e);
	}
	char nspath[64];
	snprintf(nspath, sizeof(nspath), "/proc/%s/ns/mnt", argv[1]);
	long long *host = calloc((size_t)iters, sizeof(long long));
	long long *ns = calloc((size_t)iters, sizeof(long long));
	long long *sum = calloc((size_t)iters, sizeof(long long));
	if (iters <= 0 || host == NULL || ns == NULL || sum == NULL)
		qk_bail("BENCH", "calloc", "");

	for (int i = 0; i < iters; i++) {
		int pfd[2];
		if (pipe(pfd) != 0)
			qk_bail("BENCH", "pipe", "");
		pid_t c = fork();
		if (c < 0)
			qk_bail("BENCH", "fork", "");
		if (c == 0) {
			struct qk_carry carry = {argv[5], argv[4], -1};
			int mntns = open(nspath, O_RDONLY | O_CLOEXEC);
			if (mntns < 0)
				qk_bail("BENCH", nspath, "");
			long long t0 = now_us();
			qk_carry_open(&carry, 1, uid);
			qk_devices_probe(&dev);
			long long t1 = now_us();
			if (setns(mntns, CLONE_NEWNS) != 0)
				qk_bail("BENCH", "setns", "");
			long long t2 = now_us();
			struct qk_mountns m = {uid, uid, &dev, &carry, 1};
			qk_mountns_own(&m);
			long long t3 = now_us();
			long long out[2] = {t1 - t0, t3 - t2};
			if (write(pfd[1], out, sizeof(out)) != (ssize_t)sizeof(out))
				qk_bail("BENCH", "write", "");
			_exit(0);
		}
		close(pfd[1]);
		long long in[2];
		ssize_t got = read(pfd[0], in, sizeof(in));
		int st;
		if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || got != (ssize_t)sizeof(in)) {
			fprintf(stderr, "iteration %d failed\n", i);
			return 1;
		}
		close(pfd[0]);
		host[i] = in[0];
		ns[i] = in[1];
		sum[i] = in[0] + in[1];
	}
	report("host (clone + devices)", host, iters);
	report("namespace (unshare..carry)", ns, iters);
	report("mount-namespace step total", sum, iters);
	return 0;
}
