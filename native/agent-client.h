/*
 * The front's side of the resident agent's protocol (docs/CHAIN.md section 3): one request, one
 * reply, parsed strictly. Used only by front.c, as fully root, before anything is entered.
 */
#ifndef QK_AGENT_CLIENT_H
#define QK_AGENT_CLIENT_H

#include <stddef.h>
#include <sys/types.h>

#include "qk-constants.h"

#define QK_AGENT_MAX_REPLY (1024 * 1024)
#define QK_AGENT_MAX_CGROUPS 64

/* What the front recorded before it became root; every field is the caller's. */
struct qk_agent_request {
	uid_t uid;
	gid_t gid;
	const gid_t *groups;
	size_t ngroups;
	const int *fds;
	size_t nfds;
	char *const *env; /* "KUBEVIRT_...=VALUE", only those the front kept */
	size_t nenv;
	char *const *args; /* argv[1..] */
	size_t nargs;
};

enum qk_agent_outcome {
	QK_AGENT_ABSENT,     /* no socket: the standalone chain, AGENT=absent */
	QK_AGENT_DOWN,       /* no usable answer: the standalone chain, AGENT=down:REASON */
	QK_AGENT_AUTHORISED,
	QK_AGENT_PROBE,
	QK_AGENT_REFUSED,
};

struct qk_agent_reply {
	enum qk_agent_outcome outcome;
	char reason[32];      /* DOWN: ECONNREFUSED, EOF, TIMEOUT, MALFORMED or an errno name */
	int exit;             /* REFUSED: the status to exit with */
	const char *decision; /* the decision line, no newline */
	char **env;           /* AUTHORISED/PROBE: QEMU's environment, NULL-terminated */
	char **enter;         /* AUTHORISED/PROBE: the enter argv after --pidfd, NULL-terminated */
	size_t nenter;
	int pidfd;            /* AUTHORISED: the target's pidfd (O_CLOEXEC), else -1 */
	int cgroups[QK_AGENT_MAX_CGROUPS]; /* AUTHORISED: cgroup.procs fds, in join order */
	size_t ncgroups;
};

/*
 * dirfd: an O_PATH fd of the agent's directory, already checked by the front (root-owned, 0700,
 * root-controlled ancestors). Fills reply; never returns a connection. Ends the process itself
 * only for ERR_FRONT_AGENT_UNSAFE (71: the socket or its server is not root's) and
 * ERR_FRONT_REQUEST_TOO_BIG (64: argv over QK_AGENT_MAX_REQUEST).
 */
void qk_agent_ask(int dirfd, const char *name, const struct qk_agent_request *rq, struct qk_agent_reply *reply);

/* Defined by front.c: one JSON line on stderr, then exit(status). */
_Noreturn void qk_front_die(int status, const char *code, const char *msg, const char *hint);

/* Strict decimal 0..max: no sign, no leading zeros, no other byte. 0 on success. */
int qk_dec(const char *s, long max, long *out);

#endif
