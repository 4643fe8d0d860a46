/*
 * Phase timer for the startup bench: runs one exec chain like the bench's timer, but as its
 * ptrace tracer, stopping only at each execve (PTRACE_O_TRACEEXEC, no syscall stops), and reads
 * the chain's stderr on a second thread, so it reports on one CLOCK_MONOTONIC axis:
 *
 *   E <ns> <exe>            each successful execve (new image loaded, before its first instruction)
 *   L <ns> <line>           each stderr line, when it arrived (e.g. the bundle's decision line)
 *   W <ns> <dur_ns> <main|thread> <path>
 *                           -w only: each write(2)/writev/pwrite to a file named cgroup.procs,
 *                           its start and duration, and whether the main thread made it
 *   F <ns>                  the stand-in QEMU's first instruction (it writes CLOCK_MONOTONIC to fd 1)
 *   X <wait status>
 *
 * <ns> counts from just before the first execve. Run as root (a root tracer keeps setuid);
 * -u UID runs PROGRAM as uid = gid = UID with no supplementary groups (a per-VM caller).
 * -l DIR: a synthetic /proc for the launched pid, see proc-link.h.
 * -w (x86_64 only) installs a seccomp filter that sends write-family calls to the tracer (and
 * traces every thread): slower, so the bench uses it in separate runs from the phases.
 *
 *   startup-phases [-w] [-u UID] [-l DIR] [-e NAME=VALUE]... -- PROGRAM [ARG...]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "proc-link.h"

static long long now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

#define MAX_EVENTS 128
static struct {
	char kind;
	long long at, dur;
	int main_thread;
	char text[8192];
} ev[MAX_EVENTS];
static int nev;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long long t0;

static void add(char kind, long long at, long long dur, int main_thread, const char *text, size_t len)
{
	pthread_mutex_lock(&lock);
	if (nev < MAX_EVENTS) {
		if (len >= sizeof(ev[0].text))
			len = sizeof(ev[0].text) - 1;
		ev[nev].kind = kind;
		ev[nev].at = at;
		ev[nev].dur = dur;
		ev[nev].main_thread = main_thread;
		memcpy(ev[nev].text, text, len);
		ev[nev].text[len] = 0;
		nev++;
	}
	pthread_mutex_unlock(&lock);
}

static void *read_stderr(void *arg)
{
	int fd = *(int *)arg;
	static char buf[65536];
	size_t got = 0;
	ssize_t r;
	while ((r = read(fd, buf + got, sizeof(buf) - got)) > 0) {
		long long at = now();
		got += (size_t)r;
		char *nl;
		while ((nl = memchr(buf, '\n', got)) != NULL) {
			add('L', at - t0, 0, 0, buf, (size_t)(nl - buf));
			got -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, got);
		}
		if (got == sizeof(buf))
			got = 0;
	}
	return NULL;
}

#if defined(__x86_64__)
static int trace_writes(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_write, 4, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_writev, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pwrite64, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pwritev, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
#endif

#define MAX_PENDING 64
static struct {
	pid_t tid;
	long long at;
	char path[PATH_MAX];
} pending[MAX_PENDING];

int main(int argc, char **argv)
{
	char *env[64];
	int ne = 0, i = 1, writes = 0;
	long uid = -1;
	const char *tree = NULL;
	for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (!strcmp(argv[i], "-e") && i + 1 < argc && ne < 63)
			env[ne++] = argv[++i];
		else if (!strcmp(argv[i], "-w"))
			writes = 1;
		else if (!strcmp(argv[i], "-u") && i + 1 < argc)
			uid = atol(argv[++i]);
		else if (!strcmp(argv[i], "-l") && i + 1 < argc)
			tree = argv[++i];
		else
			return 64;
	}
	env[ne] = NULL;
	if (i + 1 >= argc)
		return 64;
#if !defined(__x86_64__)
	writes = 0;
#endif
	int out[2], err[2];
	if (pipe(out) != 0 || pipe(err) != 0)
		return 71;
	pid_t pid = fork();
	if (pid == 0) {
		int n = open("/dev/null", O_RDWR);
		dup2(n, 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
		if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0)
			_exit(126);
		raise(SIGSTOP);
#if defined(__x86_64__)
		if (writes && trace_writes() != 0)
			_exit(126);
#endif
		if (uid >= 0 && (setgroups(0, NULL) != 0 || setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0))
			_exit(126);
		execve(argv[i + 1], argv + i + 1, env);
		_exit(127);
	}
	close(out[1]);
	close(err[1]);
	pthread_t th;
	pthread_create(&th, NULL, read_stderr, &err[0]);
	int st, final = -1;
	if (waitpid(pid, &st, 0) != pid || !WIFSTOPPED(st))
		return 71;
	if (tree)
		proc_link(tree, pid);
	long opts = PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL;
	if (writes)
		opts |= PTRACE_O_TRACESECCOMP | PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK;
	ptrace(PTRACE_SETOPTIONS, pid, 0, opts);
	t0 = now();
	ptrace(PTRACE_CONT, pid, 0, 0);
	for (;;) {
		pid_t w = waitpid(-1, &st, __WALL);
		if (w < 0)
			break; /* ECHILD: the whole traced tree is gone */
		if (WIFEXITED(st) || WIFSIGNALED(st)) {
			if (w == pid)
				final = st;
			continue;
		}
		if (!WIFSTOPPED(st))
			continue;
		int event = st >> 16, sig = WSTOPSIG(st), inject = 0;
		long long at = now();
		if (event == PTRACE_EVENT_EXEC) {
			char link[64], exe[PATH_MAX];
			snprintf(link, sizeof(link), "/proc/%d/exe", w);
			ssize_t n = readlink(link, exe, sizeof(exe) - 1);
			add('E', at - t0, 0, 1, exe, n > 0 ? (size_t)n : 0);
		}
#if defined(__x86_64__)
		else if (event == PTRACE_EVENT_SECCOMP) {
			struct user_regs_struct regs;
			char link[64], path[PATH_MAX];
			ssize_t n = -1;
			if (ptrace(PTRACE_GETREGS, w, 0, &regs) == 0) {
				snprintf(link, sizeof(link), "/proc/%d/fd/%d", w, (int)regs.rdi);
				n = readlink(link, path, sizeof(path) - 1);
			}
			if (n > 13 && memcmp(path + n - 13, "/cgroup.procs", 13) == 0) {
				for (int k = 0; k < MAX_PENDING; k++) {
					if (pending[k].tid == 0) {
						pending[k].tid = w;
						pending[k].at = at;
						memcpy(pending[k].path, path, (size_t)n);
						pending[k].path[n] = 0;
						break;
					}
				}
				ptrace(PTRACE_SYSCALL, w, 0, 0); /* stop again at this call's exit */
				continue;
			}
		} else if (event == 0 && sig == (SIGTRAP | 0x80)) {
			for (int k = 0; k < MAX_PENDING; k++) {
				if (pending[k].tid == w) {
					add('W', pending[k].at - t0, at - pending[k].at, w == pid, pending[k].path, strlen(pending[k].path));
					pending[k].tid = 0;
					break;
				}
			}
		}
#endif
		else if (event == 0 && sig != SIGTRAP && sig != SIGSTOP) {
			inject = sig; /* a real signal: deliver it (new threads start with a SIGSTOP: drop) */
		}
		ptrace(PTRACE_CONT, w, 0, inject);
	}
	if (tree)
		proc_unlink(tree, pid);
	char buf[64];
	size_t got = 0;
	ssize_t r;
	while ((r = read(out[0], buf + got, sizeof(buf) - 1 - got)) > 0)
		got += (size_t)r;
	buf[got] = 0;
	pthread_join(th, NULL);
	for (int k = 0; k < nev; k++) {
		if (ev[k].kind == 'W')
			printf("W %lld %lld %s %s\n", ev[k].at, ev[k].dur, ev[k].main_thread ? "main" : "thread", ev[k].text);
		else
			printf("%c %lld %s\n", ev[k].kind, ev[k].at, ev[k].text);
	}
	if (got)
		printf("F %lld\n", atoll(buf) - t0);
	printf("X %d\n", final);
	return 0;
}
