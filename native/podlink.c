/*
 * The pod link: ties QEMU's life to the pod's launcher (the pod's PID 1, which listens on a unix
 * socket inside the pod). QEMU lives in the host's pid namespace, an ancestor of the pod's, so
 * the launcher cannot signal it (pidfd_send_signal refuses a target outside the caller's pid
 * namespace and its descendants, whatever the caller's privileges). A watcher process started
 * here, next to QEMU (same pid namespace, same uid), holds the connection and stops QEMU when
 * the launcher asks or goes away. Runs as the unprivileged uid, after no_new_privs: the
 * launcher's socket permissions decide, root's do not.
 *
 * Protocol: connect; send the 8 bytes "QKLINK1\n" with SCM_RIGHTS carrying a pidfd of this
 * process (QEMU after exec; the launcher polls it to learn that QEMU exited); wait up to 2 s for
 * the 1-byte ack "k". Anything else is a failure, and QEMU never starts. Then the watcher keeps
 * the connection:
 *   launcher -> watcher  "s": stop QEMU (the pod is stopping). Any other byte, EOF or an error
 *                        on the socket, or the launcher's pidfd (--pidfd) polling readable: the
 *                        same (the launcher died or its container ended).
 *   watcher -> launcher  nothing; it closes the connection once QEMU has exited.
 * Stopping QEMU: SIGTERM, up to --pod-stop-timeout seconds for it to exit, SIGKILL, up to 5 s
 * more. libvirt passes -no-shutdown, so QEMU answers SIGTERM by pausing and reporting SHUTDOWN
 * and libvirt destroys it; the SIGKILL is the guarantee either way.
 *
 * The watcher is double-forked: QEMU reaps the middle process before exec and never has a child
 * it did not make. The watcher is reparented to the nearest subreaper or init of its pid
 * namespace: the host's without the pid option, the pod's launcher (which reaps orphans) with
 * it. It inherits QEMU's cgroups (the pod's: it is accounted to the pod) and credentials (the
 * VM's uid, no capabilities, no_new_privs), and keeps only three fds: the socket, QEMU's pidfd
 * and the launcher's pidfd. It holds nothing QEMU holds (not the --fds), so libvirt sees QEMU's
 * monitor close when QEMU dies, not when the watcher does. It cannot report errors (no stderr:
 * libvirt's log belongs to QEMU), so every unexpected error stops QEMU: no QEMU runs unlinked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "mountns.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define ACK_TIMEOUT_MS 2000
#define KILL_WAIT_MS 5000

static const char HINT[] =
	"the pod's virt-launcher must listen on pod_link_socket (it stops QEMU when the pod is deleted)";

static _Noreturn void link_fail(const char *path, const char *what, int err)
{
	char msg[512];
	if (err)
		snprintf(msg, sizeof(msg), "pod link %.300s: %s: %s", path, what, strerror(err));
	else
		snprintf(msg, sizeof(msg), "pod link %.300s: %s", path, what);
	qk_fail("PODLINK", msg, HINT);
}

/* -1 when the clock fails: callers treat that as "time is up". */
static long long now_ms(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return -1;
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the watcher ------------------------------------------------------------------------------ */

static int pidfd_signal(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* 1 once the process has exited (its pidfd polls readable), 0 at the deadline. */
static int wait_exit(int pidfd, int ms)
{
	long long end = now_ms() + ms;
	for (;;) {
		long long t = now_ms();
		if (t < 0 || end - t <= 0)
			return 0;
		struct pollfd p = {pidfd, POLLIN, 0};
		int r = poll(&p, 1, (int)(end - t));
		if (r > 0)
			return 1;
		if (r < 0 && errno != EINTR)
			return 0;
	}
}

/*
 * Irreversible: QEMU ends. SIGTERM, the grace period, SIGKILL. ESRCH means it is gone already;
 * any other refusal of SIGTERM goes straight to SIGKILL. Closing the socket afterwards tells the
 * launcher that this QEMU has ended (or, exit 1, that even SIGKILL did not end it in 5 s).
 */
static _Noreturn void stop_qemu(int sock, int qemu, unsigned grace_s)
{
	int gone = 0;
	if (pidfd_signal(qemu, SIGTERM) != 0)
		gone = errno == ESRCH;
	else
		gone = wait_exit(qemu, (int)grace_s * 1000);
	if (!gone && pidfd_signal(qemu, SIGKILL) != 0)
		gone = errno == ESRCH;
	if (!gone)
		gone = wait_exit(qemu, KILL_WAIT_MS);
	(void)close(sock); /* nothing left to do if it fails: our exit closes it anyway */
	_exit(gone ? 0 : 1);
}

/* Close every fd but the (up to three) in keep; -1 entries are ignored. 0 or -1. */
static int close_all_but(const int keep[3])
{
	int k[3], n = 0;
	for (int i = 0; i < 3; i++)
		if (keep[i] >= 0)
			k[n++] = keep[i];
	for (int i = 1; i < n; i++) /* sort ascending */
		for (int j = i; j > 0 && k[j - 1] > k[j]; j--) {
			int t = k[j];
			k[j] = k[j - 1];
			k[j - 1] = t;
		}
	unsigned lo = 0;
	for (int i = 0; i <= n; i++) {
		unsigned hi = i < n ? (unsigned)k[i] : ~0U; /* close [lo, hi) */
		if (hi > lo && syscall(SYS_close_range, lo, hi == ~0U ? ~0U : hi - 1, 0U) != 0) {
			if (errno != ENOSYS)
				return -1;
			/* Before Linux 5.9: one close per possible fd below the limit. */
			struct rlimit rl;
			if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
				return -1;
			unsigned top = rl.rlim_cur > (1u << 20) ? (1u << 20) : (unsigned)rl.rlim_cur;
			for (unsigned fd = lo; fd < hi && fd < top; fd++)
				(void)close((int)fd); /* EBADF for most: not open */
		}
		if (i < n)
			lo = (unsigned)k[i] + 1;
	}
	return 0;
}

/*
 * The watcher's set-up, then its loop. Every failure, including in the set-up, stops QEMU. The
 * signals that would end this process (SIGTERM from the runtime tearing down the pod's cgroups,
 * or anyone with our uid) stop QEMU first; SIGPIPE is ignored (we never write).
 */
static _Noreturn void watch(int sock, int qemu, int launcher, unsigned grace_s)
{
	static const int ending[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM};
	const int keep[3] = {sock, qemu, launcher};
	if (close_all_but(keep) != 0)
		stop_qemu(sock, qemu, grace_s);
	sigset_t set;
	sigemptyset(&set);
	for (size_t i = 0; i < sizeof(ending) / sizeof(ending[0]); i++)
		sigaddset(&set, ending[i]);
	int sigfd = -1;
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0 || (sigfd = signalfd(-1, &set, SFD_CLOEXEC)) < 0 ||
	    signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		stop_qemu(sock, qemu, grace_s);
	/* Out of libvirt's session and process group: no terminal or group signal reaches us. */
	if (setsid() < 0 || chdir("/") != 0)
		stop_qemu(sock, qemu, grace_s);
	/* Not dumpable: QEMU (same uid) cannot ptrace us or reach our fds through /proc. */
	if (prctl(PR_SET_NAME, "qemu-kube-watch", 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		stop_qemu(sock, qemu, grace_s);

	for (;;) {
		struct pollfd p[4] = {
			{qemu, POLLIN, 0}, {sock, POLLIN, 0}, {sigfd, POLLIN, 0}, {launcher, POLLIN, 0},
		};
		int r = poll(p, launcher >= 0 ? 4 : 3, -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			stop_qemu(sock, qemu, grace_s);
		/* QEMU ended by itself (or libvirt ended it): the launcher sees EOF. */
		if (p[0].revents) {
			(void)close(sock); /* as in stop_qemu */
			_exit(0);
		}
		if (p[1].revents & POLLIN && !(p[1].revents & (POLLHUP | POLLERR))) {
			char b;
			ssize_t got = recv(sock, &b, 1, MSG_DONTWAIT);
			if (got < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			/* "s", another byte, EOF or an error: the link is over. */
		}
		stop_qemu(sock, qemu, grace_s);
	}
}

/*
 * Fork the watcher twice removed: the middle process exits at once and we reap it here, so QEMU
 * starts with no child. A failure of either fork is a failure of the link: QEMU never starts.
 */
static void start_watcher(const char *path, int sock, int qemu, int launcher, unsigned grace_s)
{
	pid_t mid = fork();
	if (mid < 0)
		link_fail(path, "fork (watcher)", errno);
	if (mid == 0) {
		pid_t w = fork();
		if (w < 0)
			_exit(1);
		if (w == 0)
			watch(sock, qemu, launcher, grace_s);
		_exit(0);
	}
	int st;
	while (waitpid(mid, &st, 0) < 0)
		if (errno != EINTR)
			link_fail(path, "waitpid (watcher)", errno);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		link_fail(path, "fork (watcher)", 0);
}

/* ---- the hello -------------------------------------------------------------------------------- */

void qk_podlink(const char *path, int launcher_pidfd, unsigned stop_timeout_s)
{
	static const char hello[8] = "QKLINK1\n";
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path))
		link_fail(path, "path too long for a unix socket", 0);
	memcpy(sa.sun_path, path, strlen(path));

	/* Non-blocking: a full backlog (EAGAIN) is a failure, not a hang before QEMU. */
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		link_fail(path, "socket", errno);
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		link_fail(path, "connect", errno);

	/* This process becomes QEMU at exec (same pid), so the pidfd names QEMU: for the launcher
	 * and, taken before the fork, for the watcher. */
	int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (pidfd < 0)
		link_fail(path, "pidfd_open(self)", errno);

	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec iov = {(void *)hello, sizeof(hello)};
	struct msghdr msg;
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = ctl.buf;
	msg.msg_controllen = sizeof(ctl.buf);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &pidfd, sizeof(int));
	ssize_t sent = sendmsg(s, &msg, MSG_NOSIGNAL);
	if (sent < 0)
		link_fail(path, "sendmsg", errno);
	if (sent != (ssize_t)sizeof(hello))
		link_fail(path, "short send", 0);

	char ack;
	for (long long end = now_ms() + ACK_TIMEOUT_MS;;) {
		long long t = now_ms();
		if (t < 0)
			link_fail(path, "clock_gettime", errno);
		if (end - t <= 0)
			link_fail(path, "no ack within 2 s", 0);
		struct pollfd p = {s, POLLIN, 0};
		int r = poll(&p, 1, (int)(end - t));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			link_fail(path, "poll", errno);
		if (r == 0)
			continue;
		ssize_t got = read(s, &ack, 1);
		if (got < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (got < 0)
			link_fail(path, "read ack", errno);
		if (got == 0)
			link_fail(path, "the launcher closed the link without an ack", 0);
		break;
	}
	if (ack != 'k')
		link_fail(path, "unexpected ack byte (expected \"k\")", 0);

	/* Irreversible: from here a watcher outlives this process's failures and stops it, or QEMU. */
	start_watcher(path, s, pidfd, launcher_pidfd, stop_timeout_s);
	/* The connection and QEMU's pidfd are the watcher's now: QEMU keeps neither. */
	if (close(pidfd) != 0 || close(s) != 0)
		link_fail(path, "close", errno);
}
