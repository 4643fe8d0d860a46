/*
 * The pod link: before QEMU starts, hand the pod's launcher (the pod's PID 1, which listens on a
 * unix socket inside the pod) a pidfd of this process, which becomes QEMU at exec. The launcher
 * kills QEMU when the pod is stopped, so no QEMU outlives its pod. Runs as the unprivileged uid,
 * after no_new_privs: the launcher's socket permissions decide, root's do not.
 *
 * Protocol: connect; send the 8 bytes "QKLINK1\n" with SCM_RIGHTS carrying the pidfd; wait up to
 * 2 s for the 1-byte ack "k". Anything else is a failure, and QEMU never starts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "mountns.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define ACK_TIMEOUT_MS 2000

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

static long long now_ms(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		qk_bail("PODLINK", "clock_gettime", "");
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void qk_podlink(const char *path)
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

	/* This process becomes QEMU at exec (same pid), so the pidfd names QEMU. */
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
		long long left = end - now_ms();
		if (left <= 0)
			link_fail(path, "no ack within 2 s", 0);
		struct pollfd p = {s, POLLIN, 0};
		int r = poll(&p, 1, (int)left);
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
	if (close(pidfd) != 0 || close(s) != 0)
		link_fail(path, "close", errno);
}
