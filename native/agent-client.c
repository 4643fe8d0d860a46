/*
 * The front asks the resident agent (docs/CHAIN.md section 3). The agent is root and checked
 * (its socket sits in a root-only directory, its SO_PEERCRED uid must be 0), but its reply is
 * still parsed as if it could be anything: every record in the documented order, nothing
 * unknown, nothing after `end`, exactly the fds the outcome carries. Anything else is
 * "down:MALFORMED" and the front runs the standalone chain instead (and says so).
 *
 * Order: lstat the socket (absent: ABSENT); build the request (over 256 KiB: refused); connect
 * through the checked directory fd; SO_PEERCRED; send with a 2 s bound; receive with
 * MSG_CMSG_CLOEXEC, a 1 MiB cap and 30 s in all; parse.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "agent-client.h"
#include <sysexits.h>

#define MAGIC "qk-agent-1"
#define SEND_MS 2000
#define RECV_MS 30000
#define MAX_REPLY_FDS (1 + QK_AGENT_MAX_CGROUPS)

/* ---- the fallback's REASON -------------------------------------------------------------------- */

static void down(struct qk_agent_reply *r, const char *why)
{
	r->outcome = QK_AGENT_DOWN;
	snprintf(r->reason, sizeof(r->reason), "%s", why);
}

/* One word: static builds may lack strerrorname_np, and the name must not depend on the libc. */
static void down_errno(struct qk_agent_reply *r, int err)
{
	static const struct {
		int err;
		const char *name;
	} names[] = {
		{ECONNREFUSED, "ECONNREFUSED"}, {EAGAIN, "TIMEOUT"},  {ETIMEDOUT, "TIMEOUT"},
		{ECONNRESET, "ECONNRESET"},     {EPIPE, "EPIPE"},     {ENOENT, "ENOENT"},
		{EACCES, "EACCES"},             {EPERM, "EPERM"},     {EMFILE, "EMFILE"},
		{ENFILE, "ENFILE"},             {ENOMEM, "ENOMEM"},   {ENOBUFS, "ENOBUFS"},
		{ENOTSOCK, "ENOTSOCK"},         {EPROTOTYPE, "EPROTOTYPE"}, {EINTR, "EINTR"},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].err == err) {
			down(r, names[i].name);
			return;
		}
	char n[32];
	snprintf(n, sizeof(n), "ERRNO%d", err);
	down(r, n);
}

/* ---- time ------------------------------------------------------------------------------------- */

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What is left of the deadline as the socket's timeout; 0 = it has passed. */
static int set_timeout(int s, int opt, long long deadline)
{
	long long left = deadline - now_ms();
	if (left <= 0)
		return 0;
	struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
	return setsockopt(s, SOL_SOCKET, opt, &tv, sizeof(tv)) == 0 ? 1 : -1;
}

/* ---- the request ------------------------------------------------------------------------------ */

struct out {
	char *buf;
	size_t len;
};

/* Appends "KEY=VALUE\0" (prefix is "KEY=" or the whole record); counts even past the end. */
static void rec(struct out *o, const char *prefix, const char *value)
{
	size_t a = strlen(prefix), b = value ? strlen(value) : 0;
	if (o->len <= QK_AGENT_MAX_REQUEST && a + b + 1 <= QK_AGENT_MAX_REQUEST - o->len) {
		memcpy(o->buf + o->len, prefix, a);
		if (b)
			memcpy(o->buf + o->len + a, value, b);
		o->buf[o->len + a + b] = '\0';
	}
	/* Past the limit only the length matters; it cannot wrap (each part < SIZE_MAX / 4). */
	o->len = o->len > QK_AGENT_MAX_REQUEST ? o->len : o->len + a + b + 1;
}

/* "A,B" ("" for none), malloc'd. */
static char *join(const unsigned *ids, size_t n)
{
	char num[16];
	/* At most 65536 groups or 1024 fds of up to 11 bytes: fits a small heap string. */
	char *s = malloc(n * 11 + 1);
	if (s == NULL)
		qk_front_die(EX_OSERR, "ERR_FRONT_AGENT", "malloc: out of memory", "");
	size_t off = 0;
	s[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		snprintf(num, sizeof(num), "%s%u", i ? "," : "", ids[i]);
		memcpy(s + off, num, strlen(num) + 1);
		off += strlen(num);
	}
	return s;
}

static void rec_ids(struct out *o, const char *prefix, const unsigned *ids, size_t n)
{
	char *s = join(ids, n);
	rec(o, prefix, s);
	free(s);
}

static size_t build_request(const struct qk_agent_request *rq, char *buf)
{
	struct out o = {buf, 0};
	char num[16];
	rec(&o, MAGIC, NULL);
	rec(&o, "op=launch", NULL);
	snprintf(num, sizeof(num), "%u", (unsigned)rq->uid);
	rec(&o, "uid=", num);
	snprintf(num, sizeof(num), "%u", (unsigned)rq->gid);
	rec(&o, "gid=", num);
	rec_ids(&o, "groups=", (const unsigned *)rq->groups, rq->ngroups);
	unsigned *fds = calloc(rq->nfds + 1, sizeof(unsigned));
	if (fds == NULL)
		qk_front_die(EX_OSERR, "ERR_FRONT_AGENT", "calloc: out of memory", "");
	for (size_t i = 0; i < rq->nfds; i++)
		fds[i] = (unsigned)rq->fds[i];
	rec_ids(&o, "fds=", fds, rq->nfds);
	free(fds);
	for (size_t i = 0; i < rq->nenv; i++)
		rec(&o, "env=", rq->env[i]);
	for (size_t i = 0; i < rq->nargs && o.len <= QK_AGENT_MAX_REQUEST; i++)
		rec(&o, "arg=", rq->args[i]);
	rec(&o, "end", NULL);
	return o.len;
}

/* ---- the reply -------------------------------------------------------------------------------- */

/* Strict decimal 0..max, no sign, no leading zeros (agent-client.h; the front's fd list too). */
int qk_dec(const char *s, long max, long *out)
{
	long v = 0;
	if (*s == '\0' || (s[0] == '0' && s[1] != '\0'))
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
		if (v > max)
			return -1;
	}
	*out = v;
	return 0;
}

/* The value of "key=value" if rec has that key, else NULL. */
static const char *val(const char *rec, const char *key)
{
	size_t n = strlen(key);
	return strncmp(rec, key, n) == 0 && rec[n] == '=' ? rec + n + 1 : NULL;
}

/* One JSON object on one line: the front prints it verbatim into libvirt's log. */
static int one_line_object(const char *s)
{
	size_t n = strlen(s);
	if (n < 2 || s[0] != '{' || s[n - 1] != '}')
		return -1;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return -1;
	return 0;
}

/* NAME=VALUE with a name libvirt would accept; never the token. */
static int env_ok(const char *e)
{
	const char *eq = strchr(e, '=');
	if (eq == NULL || eq == e || !(e[0] == '_' || (e[0] >= 'A' && e[0] <= 'Z') || (e[0] >= 'a' && e[0] <= 'z')))
		return -1;
	for (const char *c = e; c < eq; c++)
		if (!(*c == '_' || (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9')))
			return -1;
	return strncmp(e, "KUBEVIRT_SECRET=", 16) == 0 ? -1 : 0;
}

/*
 * recs: the reply's records up to and including "end". Returns 0 and fills r, or -1 (malformed).
 * The documented order is the only one accepted; the fd count must match the outcome; the first
 * --fds option must be want_fds ("--fds=A,B", what the request said).
 */
static int parse_reply(char **recs, size_t n, const int *fds, size_t nfds, const char *want_fds,
		       struct qk_agent_reply *r)
{
	size_t i = 0;
	const char *v;
	long num;
	if (n < 4 || strcmp(recs[i++], MAGIC) != 0 || (v = val(recs[i++], "outcome")) == NULL)
		return -1;
	if (strcmp(v, "refused") == 0) {
		/* exit=0 would tell libvirt a refused launch succeeded. */
		if ((v = val(recs[i++], "exit")) == NULL || qk_dec(v, 255, &num) != 0 || num == 0)
			return -1;
		if ((v = val(recs[i++], "decision")) == NULL || one_line_object(v) != 0)
			return -1;
		if (i != n - 1 || nfds != 0)
			return -1;
		r->outcome = QK_AGENT_REFUSED;
		r->exit = (int)num;
		r->decision = v;
		return 0;
	}
	int authorised = strcmp(v, "authorised") == 0;
	if (!authorised && strcmp(v, "probe") != 0)
		return -1;
	if ((v = val(recs[i++], "decision")) == NULL || one_line_object(v) != 0)
		return -1;
	r->decision = v;
	if (authorised) {
		if ((v = val(recs[i++], "cgroups")) == NULL || qk_dec(v, QK_AGENT_MAX_CGROUPS, &num) != 0)
			return -1;
		if (nfds != 1 + (size_t)num)
			return -1;
		r->pidfd = fds[0];
		r->ncgroups = (size_t)num;
		for (size_t k = 0; k < r->ncgroups; k++)
			r->cgroups[k] = fds[1 + k];
	} else if (nfds != 0) {
		return -1;
	}
	/* The records are rewritten in place into the two NULL-terminated vectors. */
	r->env = recs + i;
	size_t ne = 0;
	for (; i < n - 1 && (v = val(recs[i], "env")) != NULL; i++) {
		if (env_ok(v) != 0)
			return -1;
		for (size_t k = 0; k < ne; k++)
			if (strncmp(r->env[k], v, (size_t)(strchr(v, '=') - v) + 1) == 0)
				return -1; /* a name twice */
		r->env[ne++] = (char *)v;
	}
	char **enter = recs + i;
	size_t nen = 0, fds_seen = 0;
	for (; i < n - 1 && (v = val(recs[i], "enter")) != NULL; i++) {
		/* QEMU keeps exactly the fds libvirt passed: the ones the front recorded and sent. */
		const char *f = val(v, "--fds");
		if (f != NULL && !fds_seen++ && strcmp(v, want_fds) != 0)
			return -1;
		enter[nen++] = (char *)v;
	}
	if (i != n - 1 || nen == 0 || !fds_seen)
		return -1;
	/* Own vectors, each NULL-terminated (execve's environ and qk_enter's argv). */
	char **envv = calloc(ne + 1, sizeof(char *)), **enterv = calloc(nen + 1, sizeof(char *));
	if (envv == NULL || enterv == NULL)
		return -1;
	memcpy(envv, r->env, ne * sizeof(char *));
	memcpy(enterv, enter, nen * sizeof(char *));
	r->env = envv;
	r->enter = enterv;
	r->nenter = nen;
	r->outcome = authorised ? QK_AGENT_AUTHORISED : QK_AGENT_PROBE;
	return 0;
}

/*
 * Reads until the "end" record. The fds must come with the first byte (one sendmsg); any later
 * SCM_RIGHTS, a cut control message or bytes after "end" make the reply malformed. Returns the
 * number of records (recs points into buf), 0 with r set DOWN on failure.
 */
static size_t receive(int s, char *buf, char ***recs_out, int *fds, size_t *nfds, struct qk_agent_reply *r)
{
	size_t len = 0, nrec = 0, cap = 64, start = 0;
	char **recs = malloc(cap * sizeof(char *));
	long long deadline = now_ms() + RECV_MS;
	*nfds = 0;
	if (recs == NULL) {
		down_errno(r, ENOMEM);
		return 0;
	}
	for (;;) {
		int t = set_timeout(s, SO_RCVTIMEO, deadline);
		if (t <= 0) {
			t == 0 ? down(r, "TIMEOUT") : down_errno(r, errno);
			return 0;
		}
		union {
			char b[CMSG_SPACE(MAX_REPLY_FDS * sizeof(int))];
			struct cmsghdr align;
		} cm;
		struct iovec iov = {buf + len, QK_AGENT_MAX_REPLY - len};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b, .msg_controllen = sizeof(cm.b)};
		ssize_t got = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			down_errno(r, errno);
			return 0;
		}
		int bad = (mh.msg_flags & MSG_CTRUNC) != 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
			if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
				bad = 1;
				continue;
			}
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t j = 0; j < k; j++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof(int));
				if (len == 0 && *nfds < MAX_REPLY_FDS)
					fds[(*nfds)++] = fd;
				else {
					close(fd);
					bad = 1;
				}
			}
		}
		if (bad) {
			down(r, "MALFORMED");
			return 0;
		}
		if (got == 0) {
			down(r, "EOF");
			return 0;
		}
		len += (size_t)got;
		/* Split the new bytes into records; a record is complete at its NUL. */
		for (size_t p = start; p < len; p++) {
			if (buf[p] != '\0')
				continue;
			if (nrec == cap && (recs = realloc(recs, (cap *= 2) * sizeof(char *))) == NULL) {
				down_errno(r, ENOMEM);
				return 0;
			}
			recs[nrec++] = buf + start;
			start = p + 1;
			if (strcmp(recs[nrec - 1], "end") == 0) {
				if (start != len) {
					down(r, "MALFORMED");
					return 0;
				}
				*recs_out = recs;
				return nrec;
			}
		}
		if (len == QK_AGENT_MAX_REPLY) {
			down(r, "MALFORMED");
			return 0;
		}
	}
}

/* ---- the exchange ----------------------------------------------------------------------------- */

static void close_fds(const int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

void qk_agent_ask(int dirfd, const char *name, const struct qk_agent_request *rq, struct qk_agent_reply *r)
{
	memset(r, 0, sizeof(*r));
	r->pidfd = -1;

	/* Only root can change the directory (the front checked it): what lstat sees, connect gets. */
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
		if (errno == ENOENT) {
			r->outcome = QK_AGENT_ABSENT;
			return;
		}
		down_errno(r, errno);
		return;
	}
	if (!S_ISSOCK(st.st_mode) || st.st_uid != 0) {
		char msg[160];
		snprintf(msg, sizeof(msg), "the agent's socket %s is %s (uid %u)", name,
			 S_ISSOCK(st.st_mode) ? "a socket not owned by root" : "not a socket", (unsigned)st.st_uid);
		qk_front_die(EX_OSERR, "ERR_FRONT_AGENT_UNSAFE", msg,
			     "only qemu-kube agent (root) may create its socket; find out who made this one");
	}

	/* Refused here rather than sent: the agent would refuse it, and standalone must not guess. */
	char *req = malloc(QK_AGENT_MAX_REQUEST);
	if (req == NULL) {
		down_errno(r, ENOMEM);
		return;
	}
	size_t reqlen = build_request(rq, req);
	if (reqlen > QK_AGENT_MAX_REQUEST)
		qk_front_die(EX_USAGE, "ERR_FRONT_REQUEST_TOO_BIG",
			     "the QEMU argv and environment exceed the agent's 256 KiB request limit",
			     "a libvirt domain's QEMU command line is far smaller; check what runs qemu-kube");

	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		down_errno(r, errno);
		free(req);
		return;
	}
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", dirfd, name);
	long long send_deadline = now_ms() + SEND_MS;
	/* A unix connect blocks on a full backlog for at most SO_SNDTIMEO. */
	if (set_timeout(s, SO_SNDTIMEO, send_deadline) <= 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		down_errno(r, errno);
		goto out;
	}

	/* Irreversible in effect: an agent that is not root gets no fallback, someone tampered. */
	struct ucred peer;
	socklen_t pl = sizeof(peer);
	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &peer, &pl) != 0) {
		down_errno(r, errno);
		goto out;
	}
	if (peer.uid != 0) {
		char msg[160];
		snprintf(msg, sizeof(msg), "the agent's socket is served by uid %u (pid %d), not root", (unsigned)peer.uid,
			 (int)peer.pid);
		qk_front_die(EX_OSERR, "ERR_FRONT_AGENT_UNSAFE", msg,
			     "only qemu-kube agent (root) may listen on its socket; find out who does");
	}

	/* MSG_NOSIGNAL: the caller chose SIGPIPE's disposition. */
	for (size_t off = 0; off < reqlen;) {
		int t = set_timeout(s, SO_SNDTIMEO, send_deadline);
		if (t <= 0) {
			t == 0 ? down(r, "TIMEOUT") : down_errno(r, errno);
			goto out;
		}
		ssize_t n = send(s, req + off, reqlen - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			down_errno(r, errno);
			goto out;
		}
		off += (size_t)n;
	}

	char *buf = malloc(QK_AGENT_MAX_REPLY);
	if (buf == NULL) {
		down_errno(r, ENOMEM);
		goto out;
	}
	int fds[MAX_REPLY_FDS];
	size_t nfds = 0;
	char **recs = NULL;
	size_t nrec = receive(s, buf, &recs, fds, &nfds, r);
	unsigned *fdv = calloc(rq->nfds + 1, sizeof(unsigned));
	char *joined = NULL, *want_fds = NULL;
	for (size_t i = 0; fdv != NULL && i < rq->nfds; i++)
		fdv[i] = (unsigned)rq->fds[i];
	if (fdv != NULL && (joined = join(fdv, rq->nfds)) != NULL && (want_fds = malloc(strlen(joined) + 7)) != NULL)
		sprintf(want_fds, "--fds=%s", joined);
	if (nrec == 0 || want_fds == NULL || parse_reply(recs, nrec, fds, nfds, want_fds, r) != 0) {
		if (nrec != 0)
			down(r, "MALFORMED");
		/* Received fds are close-on-exec already; closing them keeps Node's fd table clean. */
		close_fds(fds, nfds);
		memset(r->cgroups, 0, sizeof(r->cgroups));
		r->ncgroups = 0;
		r->pidfd = -1;
		r->decision = NULL;
	}
	free(fdv);
	free(joined);
	free(want_fds);
out:
	free(req);
	close(s);
}
