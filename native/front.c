/*
 * qemu-kube front: the setuid-root file that libvirt's <emulator> names.
 *
 * Why this part is C and not Node (see DESIGN.md "The process chain"):
 *  - A setuid Node in secure mode still honours NODE_V8_COVERAGE (root then creates a directory
 *    the caller chose), NODE_DEBUG and UV_USE_IO_URING. So Node is never setuid: this front wipes
 *    the environment first and execs Node with paths fixed at build time.
 *  - Node marks the inherited fds 0..15 (and upward to the first gap) close-on-exec at startup.
 *    libvirt passes its pidfile (fd 5) and QMP monitor (e.g. fd 28) pre-opened, so the fd list
 *    has to be recorded here, before Node runs, and handed to Node on its command line.
 *
 * Steps (main below runs them in this order; docs/CHAIN.md sections 1 and 3):
 *   1. make 0, 1, 2 exist
 *   2. record the inherited fds, before this program opens anything
 *   3. record the caller's real ids and groups
 *   4. wipe the environment, keeping only KUBEVIRT_VM_UUID, KUBEVIRT_VM_NAME, KUBEVIRT_SECRET
 *   5. check that every file we are about to trust is root-controlled
 *   6. operator mode (argv[1] a subcommand): drop to the caller for good and exec Node (for
 *      `agent`, with its memory capped: agent_memory)
 *   7. emulator mode: no core dumps, no interval timers
 *   8. become fully root
 *   9. ask the resident agent (agent-client.c), if its socket is there
 *  10. authorised: join the cgroups (write "0" to each cgroup.procs fd), print the decision
 *      line, take QEMU's environment, run the enter steps in-process (enter.c, the enter
 *      helper's own code); probe: the same without cgroups and pidfd; refused: print the
 *      decision line and exit with its status
 *  11. no agent (AGENT=absent) or no usable answer (AGENT=down:REASON): exec Node, the
 *      standalone chain, which says in its decision line which path served and why
 *
 * Everything the caller controls (argv, env, fds, cwd, umask, rlimits, signals, timing) is
 * hostile. This file makes no NSS calls (the node's libc is unknown); it only deals in numbers.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <time.h>
#include <sys/types.h>
#include <unistd.h>
#include "agent-client.h"
#include "enter.h"
#include "json-error.h"
#include "qk-constants.h"

#if !defined(QK_NODE) || !defined(QK_BUNDLE) || !defined(QK_ENTER) || !defined(QK_KOFFI_NODE) || \
    !defined(QK_CONFIG) || !defined(QK_AGENT_SOCKET)
#error "build with -DQK_NODE=... -DQK_BUNDLE=... -DQK_ENTER=... -DQK_KOFFI_NODE=... -DQK_CONFIG=... -DQK_AGENT_SOCKET=... (see native/Makefile)"
#endif

#define MAX_FDS 1024
#define SAFE_PATH "/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_SYMLINKS 40

/* One JSON line on stderr (it lands in libvirt's domain log), then exit. */
_Noreturn void qk_front_die(int status, const char *code, const char *msg, const char *hint)
{
	qk_json_error("", code, msg, hint);
	exit(status);
}

/* A failed system call: "<what>: <strerror>", exit 71. */
static _Noreturn void bail(const char *code, const char *what, const char *hint)
{
	char msg[PATH_MAX + 256];
	snprintf(msg, sizeof(msg), "%s: %s", what, strerror(errno));
	qk_front_die(EX_OSERR, code, msg, hint);
}

/* ---- (a) fds 0, 1, 2 --------------------------------------------------------------------- */

/*
 * A closed 0/1/2 would be taken by the next open() and a later write to "stderr" would land in
 * whatever that is. /dev/null without O_CLOEXEC: these fds belong to the caller's set from now on.
 */
static void ensure_stdio(void)
{
	for (int fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) != -1)
			continue;
		if (errno != EBADF)
			bail("ERR_FRONT_STDIO", "fcntl(F_GETFD) on 0..2", "");
		int n = open("/dev/null", O_RDWR);
		if (n != fd) /* stderr may be the closed one: nothing useful can be printed */
			_exit(EX_OSERR);
	}
}

/* ---- (b) the inherited fd list ------------------------------------------------------------ */

static int cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

/* Strict decimal, no sign, no leading zeros, fits an int (qk_dec, agent-client.c). */
static int parse_fd(const char *s, int *out)
{
	long v;
	if (qk_dec(s, INT_MAX, &v) != 0)
		return -1;
	*out = (int)v;
	return 0;
}

/*
 * Runs before anything else is opened, so the list is exactly what the caller passed (plus any
 * /dev/null from ensure_stdio). /proc must really be procfs: its listing is what we trust.
 */
static size_t record_fds(int *fds)
{
	int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		bail("ERR_FRONT_FDS", "open /proc/self/fd", "mount procfs on /proc");
	struct statfs sfs;
	if (fstatfs(dfd, &sfs) != 0)
		bail("ERR_FRONT_FDS", "fstatfs /proc/self/fd", "");
	if (sfs.f_type != PROC_SUPER_MAGIC) {
		errno = EXDEV;
		bail("ERR_FRONT_FDS", "/proc is not procfs", "mount procfs on /proc");
	}
	DIR *d = fdopendir(dfd);
	if (d == NULL)
		bail("ERR_FRONT_FDS", "fdopendir /proc/self/fd", "");
	size_t n = 0;
	struct dirent *e;
	errno = 0;
	while ((e = readdir(d)) != NULL) {
		int fd;
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (parse_fd(e->d_name, &fd) != 0) {
			errno = EINVAL;
			bail("ERR_FRONT_FDS", "unexpected entry in /proc/self/fd", "");
		}
		if (fd == dfd)
			continue;
		if (n == MAX_FDS) {
			errno = EMFILE;
			bail("ERR_FRONT_FDS", "more than 1024 inherited fds", "the caller passes too many fds");
		}
		fds[n++] = fd;
		errno = 0;
	}
	if (errno != 0)
		bail("ERR_FRONT_FDS", "readdir /proc/self/fd", "");
	if (closedir(d) != 0)
		bail("ERR_FRONT_FDS", "closedir /proc/self/fd", "");
	qsort(fds, n, sizeof(*fds), cmp_int);
	return n;
}

/* ---- (e) trusted paths ---------------------------------------------------------------------- */

/*
 * Symlinks: followed, but never trusted blindly. Each path is walked one component at a time
 * with openat(O_PATH|O_NOFOLLOW) from "/": every directory we pass through (also those reached
 * through a symlink, also "..") must be root-owned and not writable by group/others unless it is
 * sticky; every symlink on the way must be root-owned (in a sticky directory such as /tmp only
 * the owner can replace it); the final file must be a root-owned regular file not writable by
 * group/others. Since only root can change any step, the path names the same file when Node
 * and the helper open it by name later. Writable ACL entries show up in the group bits (mask).
 */
/* An unsafe config is a configuration error (78, the code Node uses); anything else is 71. */
static int checking_config;

static _Noreturn void unsafe(const char *path, const char *why)
{
	char msg[2 * PATH_MAX + 256];
	snprintf(msg, sizeof(msg), "%s: %s", path, why);
	qk_front_die(checking_config ? EX_CONFIG : EX_OSERR,
		     checking_config ? "ERR_CONFIG_UNSAFE" : "ERR_FRONT_UNSAFE_PATH", msg,
		     checking_config ? QK_HINT_CONFIG_UNSAFE
				     : "every file qemu-kube trusts and each directory above it must be root-owned and not "
				       "writable by group or others; reinstall with scripts/install.sh");
}

static void check_owner_mode(const char *shown, const struct stat *st, int allow_sticky)
{
	char why[128];
	if (st->st_uid != 0) {
		snprintf(why, sizeof(why), "owned by uid %u, not root", (unsigned)st->st_uid);
		unsafe(shown, why);
	}
	if ((st->st_mode & (S_IWGRP | S_IWOTH)) && !(allow_sticky && (st->st_mode & S_ISVTX))) {
		snprintf(why, sizeof(why), "mode %04o is writable by group or others",
			 (unsigned)(st->st_mode & 07777));
		unsafe(shown, why);
	}
}

/*
 * Returns an O_PATH fd of the final component when safe, -1 when it does not exist and
 * missing_ok is set. private_dir: the final component must be a directory only root can enter
 * (the agent's: root-owned, no group or other bits), else a regular file.
 */
static int walk_trusted(const char *path, int missing_ok, int private_dir)
{
	char todo[2 * PATH_MAX], shown[2 * PATH_MAX], link[PATH_MAX];
	int links = 0;
	struct stat st;

	if (path[0] != '/' || strlen(path) >= PATH_MAX)
		unsafe(path, "not an absolute path");
	snprintf(todo, sizeof(todo), "%s", path);
	int dir = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0 || fstat(dir, &st) != 0)
		bail("ERR_FRONT_UNSAFE_PATH", "open /", "");
	check_owner_mode("/", &st, 1);
	snprintf(shown, sizeof(shown), "/");

	char *rest = todo;
	for (;;) {
		while (*rest == '/')
			rest++;
		if (*rest == '\0')
			unsafe(path, "does not name a file");
		char *name = rest;
		rest += strcspn(rest, "/");
		int last = 1;
		if (*rest == '/') {
			*rest++ = '\0';
			last = strspn(rest, "/") == strlen(rest);
		}
		size_t sl = strlen(shown);
		if ((size_t)snprintf(shown + sl, sizeof(shown) - sl, "%s%s", sl > 1 ? "/" : "", name) >=
		    sizeof(shown) - sl)
			unsafe(path, "path too long after following symlinks");

		int fd = openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			/* Only root could create what is missing: every directory above was checked. */
			if (errno == ENOENT && missing_ok) {
				close(dir);
				return -1;
			}
			snprintf(link, sizeof(link), "open: %s", strerror(errno));
			unsafe(shown, link);
		}
		if (fstat(fd, &st) != 0)
			bail("ERR_FRONT_UNSAFE_PATH", "fstat", "");

		if (S_ISLNK(st.st_mode)) {
			/* A symlink's own mode is always 0777 and means nothing; its owner does. */
			if (st.st_uid != 0)
				unsafe(shown, "symlink not owned by root");
			if (++links > MAX_SYMLINKS)
				unsafe(path, "too many levels of symbolic links");
			ssize_t n = readlinkat(fd, "", link, sizeof(link) - 1);
			if (n < 0)
				bail("ERR_FRONT_UNSAFE_PATH", "readlinkat", "");
			link[n] = '\0';
			close(fd);
			/* Continue with the link's target followed by what was left of the path. */
			char next[2 * PATH_MAX];
			if ((size_t)snprintf(next, sizeof(next), "%s/%s", link, rest) >= sizeof(next))
				unsafe(path, "path too long after following symlinks");
			memcpy(todo, next, sizeof(todo));
			rest = todo;
			if (link[0] == '/') {
				close(dir);
				dir = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
				if (dir < 0)
					bail("ERR_FRONT_UNSAFE_PATH", "open /", "");
				snprintf(shown, sizeof(shown), "/");
			} else {
				*strrchr(shown, '/') = '\0';
				if (shown[0] == '\0')
					snprintf(shown, sizeof(shown), "/");
			}
			continue;
		}
		if (last && private_dir) {
			char why[128];
			if (!S_ISDIR(st.st_mode))
				unsafe(shown, "not a directory");
			check_owner_mode(shown, &st, 0);
			if (st.st_mode & 077) {
				snprintf(why, sizeof(why), "mode %04o: the agent's directory must be 0700",
					 (unsigned)(st.st_mode & 07777));
				unsafe(shown, why);
			}
			close(dir);
			return fd;
		}
		if (last) {
			if (!S_ISREG(st.st_mode))
				unsafe(shown, "not a regular file");
			check_owner_mode(shown, &st, 0);
			close(dir);
			return fd;
		}
		if (!S_ISDIR(st.st_mode))
			unsafe(shown, "not a directory");
		check_owner_mode(shown, &st, 1);
		close(dir);
		dir = fd;
	}
}

/* Returns 0 when safe, -1 when the final component does not exist and missing_ok is set. */
static int check_path(const char *path, int missing_ok)
{
	int fd = walk_trusted(path, missing_ok, 0);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}


/* ---- 3. and 4.: what the caller is, and what survives of its environment ------------------------ */

struct caller {
	uid_t ruid;
	gid_t rgid;
	gid_t *groups;
	size_t ngroups;
};

static void record_caller(struct caller *c)
{
	uid_t euid, suid;
	gid_t egid, sgid;
	if (getresuid(&c->ruid, &euid, &suid) != 0 || getresgid(&c->rgid, &egid, &sgid) != 0)
		bail("ERR_FRONT_CREDS", "getresuid/getresgid", "");
	int n = getgroups(0, NULL);
	if (n < 0)
		bail("ERR_FRONT_CREDS", "getgroups", "");
	c->groups = calloc((size_t)n + 1, sizeof(gid_t));
	if (c->groups == NULL)
		bail("ERR_FRONT_CREDS", "calloc", "");
	n = getgroups(n, c->groups);
	if (n < 0)
		bail("ERR_FRONT_CREDS", "getgroups", "");
	c->ngroups = (size_t)n;
}

/* The KUBEVIRT_* variables the front kept, as "NAME=VALUE" (the agent's env records). */
struct kept {
	char *env[3];
	size_t n;
};

/*
 * Before anything can consult the environment (Node, the dynamic loader of Node, libc locale
 * code). Only the three variables libvirt's <qemu:env> sets survive; their values are copied
 * first because clearenv() drops the array that points at them.
 */
static void wipe_env(struct kept *k)
{
	static const char *const keep[] = QK_KEPT_ENV;
	char *vals[3];
	for (size_t i = 0; i < 3; i++) {
		const char *v = getenv(keep[i]);
		vals[i] = NULL;
		if (v != NULL && (vals[i] = strdup(v)) == NULL)
			bail("ERR_FRONT_ENV", "strdup", "");
	}
	if (clearenv() != 0)
		bail("ERR_FRONT_ENV", "clearenv", "");
	k->n = 0;
	for (size_t i = 0; i < 3; i++) {
		if (vals[i] == NULL)
			continue;
		if (setenv(keep[i], vals[i], 1) != 0)
			bail("ERR_FRONT_ENV", "setenv", "");
		size_t len = strlen(keep[i]) + strlen(vals[i]) + 2;
		if ((k->env[k->n] = malloc(len)) == NULL)
			bail("ERR_FRONT_ENV", "malloc", "");
		snprintf(k->env[k->n++], len, "%s=%s", keep[i], vals[i]);
		free(vals[i]);
	}
	if (setenv("PATH", SAFE_PATH, 1) != 0)
		bail("ERR_FRONT_ENV", "setenv PATH", "");
}

/* ---- 5. trusted files ------------------------------------------------------------------------- */

/*
 * Everything we hand control to, as root, must be something only root can have changed. The
 * config may be missing (Node reports that with its own code, exit 78); if it exists it must
 * pass the same checks, and its directories must, so nobody else can create it later.
 */
static void check_trusted(void)
{
	check_path(QK_NODE, 0);
	check_path(QK_BUNDLE, 0);
	/*
	 * The bundle's V8 code cache (scripts/code-cache.mjs): bytecode Node runs as root, so it is
	 * trusted like the bundle. It may be absent (Node then compiles the bundle's source).
	 */
	check_path(QK_BUNDLE ".cache", 1);
	check_path(QK_ENTER, 0);
	check_path(QK_KOFFI_NODE, 0);
	checking_config = 1;
	check_path(QK_CONFIG, 1);
	checking_config = 0;
}

/* ---- 6. operator mode ----------------------------------------------------------------------------- */

static _Noreturn void exec_node(char **argv)
{
	execv(QK_NODE, argv);
	bail("ERR_FRONT_EXEC", "execv " QK_NODE, "is Node installed at the path qemu-kube was built for?");
}

/*
 * `qemu-kube agent` is the one Node process that lives for days. Left to their defaults, V8
 * grows its young generation to 16 MiB semi-spaces and glibc gives each of Node's threads a
 * malloc arena of its own; both keep what they once touched, so the agent's RSS rose 1.5x over
 * its first 1000 launches and then stayed there (bench/agent-profile.mjs: no leak, a high-water
 * mark). A 1 MiB semi-space (its live young objects per launch are a few hundred KiB) and two
 * arenas keep it within 1.2x. Constants of this build: nothing the caller passes reaches Node.
 */
static void agent_memory(char **flag)
{
	*flag = (char *)"--max-semi-space-size=1";
	if (setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2", 1) != 0)
		bail("ERR_FRONT_ENV", "setenv GLIBC_TUNABLES", "");
}

static _Noreturn void operator_mode(int argc, char **argv, const struct caller *c)
{
	/*
	 * Irreversible: drop to the caller for good. Groups and gid first, while euid is 0.
	 * Without euid 0 (a build that is not installed setuid) there is nothing to drop and
	 * setgroups would fail; setres[ug]id to the real ids is always allowed.
	 */
	if (geteuid() == 0 && setgroups(c->ngroups, c->groups) != 0)
		bail("ERR_FRONT_DROP", "setgroups", "");
	if (setresgid(c->rgid, c->rgid, c->rgid) != 0)
		bail("ERR_FRONT_DROP", "setresgid", "");
	if (setresuid(c->ruid, c->ruid, c->ruid) != 0)
		bail("ERR_FRONT_DROP", "setresuid", "");
	if (c->ruid != 0 && (setresuid(0, 0, 0) == 0 || setuid(0) == 0 || geteuid() == 0)) {
		errno = EPERM;
		bail("ERR_FRONT_DROP", "root could be regained after dropping privileges", "");
	}
	if (c->rgid != 0 && c->ruid != 0 && setresgid(0, 0, 0) == 0) {
		errno = EPERM;
		bail("ERR_FRONT_DROP", "gid 0 could be regained after dropping privileges", "");
	}
	char **nargv = calloc((size_t)argc + 4, sizeof(char *));
	if (nargv == NULL)
		bail("ERR_FRONT_EXEC", "calloc", "");
	size_t k = 0;
	nargv[k++] = (char *)QK_NODE;
	nargv[k++] = (char *)"--no-warnings";
	if (strcmp(argv[1], "agent") == 0)
		agent_memory(&nargv[k++]);
	nargv[k++] = (char *)QK_BUNDLE;
	for (int i = 1; i < argc; i++)
		nargv[k++] = argv[i];
	exec_node(nargv);
}

/* ---- 7. and 8.: emulator mode becomes root ---------------------------------------------------- */

/*
 * Node (or the enter steps here) will hold the token, the pod secret and the verification keys
 * in memory as root. With ruid == euid == 0 the kernel marks the process dumpable again after
 * an exec, and the caller chose RLIMIT_CORE and our cwd: a crash would write those secrets into
 * a root-owned core file in a directory the caller picked. So no core dumps, and the hard limit
 * too, so nothing down the chain can raise it without privilege.
 *
 * Interval timers survive execve: the caller could arm one so that SIGALRM, SIGVTALRM or
 * SIGPROF (default action: terminate) kills the root chain at a moment it chose, e.g. between
 * the replay record and the launch. Disarm all three; nobody but this process can re-arm them
 * once we are root.
 */
static void no_core_no_timers(void)
{
	struct rlimit nocore = {0, 0};
	if (setrlimit(RLIMIT_CORE, &nocore) != 0)
		bail("ERR_FRONT_RLIMIT", "setrlimit(RLIMIT_CORE, 0)", "");
	static const int timers[] = {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF};
	struct itimerval off = {{0, 0}, {0, 0}};
	for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
		if (setitimer(timers[i], &off, NULL) != 0)
			bail("ERR_FRONT_RLIMIT", "setitimer(0)", "");
}

/*
 * Irreversible: become fully root, dropping the caller's supplementary groups; the caller's ids
 * travel on Node's command line or in the agent's request instead. Groups and gid before uid
 * (they need euid 0). From here on the caller can no longer signal us (kill(2) compares its
 * uid with our real and saved uid).
 */
static void become_root(void)
{
	if (setgroups(0, NULL) != 0)
		bail("ERR_FRONT_CREDS", "setgroups(0)", "");
	if (setresgid(0, 0, 0) != 0)
		bail("ERR_FRONT_CREDS", "setresgid(0,0,0)", "is the front installed setuid root?");
	if (setresuid(0, 0, 0) != 0)
		bail("ERR_FRONT_CREDS", "setresuid(0,0,0)", "is the front installed setuid root?");
}

/* ---- 9. the agent --------------------------------------------------------------------------------- */

/*
 * The directory is trusted like every other path (an unsafe one is ERR_FRONT_UNSAFE_PATH, no
 * fallback); absent, it means no agent on this node.
 */
static void ask_agent(const struct caller *c, const int *fds, size_t nfds, const struct kept *k, int argc,
		      char **argv, struct qk_agent_reply *r)
{
	char dir[] = QK_AGENT_SOCKET;
	char *slash = strrchr(dir, '/');
	*slash = '\0';
	int dirfd = walk_trusted(dir, 1, 1);
	if (dirfd < 0) {
		memset(r, 0, sizeof(*r));
		r->outcome = QK_AGENT_ABSENT;
		r->pidfd = -1;
		return;
	}
	struct qk_agent_request rq = {
		c->ruid, c->rgid, c->groups, c->ngroups, fds, nfds, k->env, k->n, argv + 1, (size_t)argc - 1,
	};
	qk_agent_ask(dirfd, slash + 1, &rq, r);
	close(dirfd);
}

/*
 * A refusal the agent answered comes within a millisecond or two of libvirt's exec, before
 * libvirt has connected to the monitor socket it passed us. Exiting then would close the last
 * copy of that listening socket, and libvirt would report "failed to connect to monitor socket:
 * Connection refused" instead of quoting the domain log's last line, our refusal. So the front
 * waits, at most 2 s, until every listening socket among the caller's fds has a connection
 * pending, then exits: libvirt reads EOF and quotes the log. It costs a refusal nothing else.
 */
#define LINGER_MS 2000
static void await_monitor_connect(const int *fds, size_t nfds)
{
	struct pollfd p[16];
	size_t n = 0;
	for (size_t i = 0; i < nfds && n < sizeof(p) / sizeof(p[0]); i++) {
		int listening = 0;
		socklen_t len = sizeof(listening);
		if (getsockopt(fds[i], SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening)
			p[n++] = (struct pollfd){.fd = fds[i], .events = POLLIN};
	}
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (n > 0) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		long waited = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited >= LINGER_MS || poll(p, n, (int)(LINGER_MS - waited)) < 0)
			return;
		/* Ready ones leave the set; an error on one (POLLERR/POLLHUP) counts as ready. */
		size_t keep = 0;
		for (size_t i = 0; i < n; i++)
			if (p[i].revents == 0)
				p[keep++] = p[i];
		n = keep;
	}
}

/* ---- 10. the agent's answer, served here ---------------------------------------------------------- */

/* The decision line and its newline in one write: libvirt's log gets it whole or not at all. */
static void print_decision(const char *decision)
{
	struct iovec v[2] = {{(void *)decision, strlen(decision)}, {(void *)"\n", 1}};
	/* stderr is the caller's: a write it makes fail is its own loss, the launch goes on. */
	if (writev(2, v, 2) < 0)
		return;
}

/*
 * Irreversible: "0" moves the writer itself (cgroup v1 and v2 alike), so no pid is ever named;
 * a pid can be recycled, this process cannot. In the agent's order (v1 hierarchies, then v2).
 */
static void join_cgroups(const struct qk_agent_reply *r)
{
	for (size_t i = 0; i < r->ncgroups; i++) {
		if (write(r->cgroups[i], "0", 1) != 1)
			bail("ERR_FRONT_CGROUP", "write 0 to a cgroup.procs fd from the agent", "");
		close(r->cgroups[i]);
	}
}

/* QEMU's environment, exactly the agent's records (never KUBEVIRT_SECRET: agent-client.c). */
static void take_env(char **env)
{
	if (clearenv() != 0)
		bail("ERR_FRONT_ENV", "clearenv", "");
	for (size_t i = 0; env[i] != NULL; i++)
		if (putenv(env[i]) != 0)
			bail("ERR_FRONT_ENV", "putenv", "");
}

/* [qemu-kube-enter, --pidfd=FD, ENTER...]: the enter helper's argv, run in this process. */
static _Noreturn void enter(const struct qk_agent_reply *r)
{
	char pidfd[32];
	snprintf(pidfd, sizeof(pidfd), "--pidfd=%d", r->pidfd);
	char **argv = calloc(r->nenter + 3, sizeof(char *));
	if (argv == NULL)
		bail("ERR_FRONT_EXEC", "calloc", "");
	argv[0] = (char *)"qemu-kube-enter";
	argv[1] = pidfd;
	memcpy(argv + 2, r->enter, r->nenter * sizeof(char *));
	qk_enter((int)r->nenter + 2, argv);
}

/* ---- 11. the standalone chain ------------------------------------------------------------------- */

static char *join_ids(const unsigned *ids, size_t n)
{
	if (n == 0)
		return strdup("-");
	char *s = malloc(n * 11 + 1);
	if (s == NULL)
		return NULL;
	size_t off = 0;
	for (size_t i = 0; i < n; i++)
		off += (size_t)sprintf(s + off, "%s%u", i ? "," : "", ids[i]);
	return s;
}

/* NODE --no-warnings BUNDLE @front AGENT UID GID GROUPS FDS [QEMU-ARG...] */
static _Noreturn void standalone(const char *agent, const struct caller *c, const int *fds, size_t nfds, int argc,
				 char **argv)
{
	char s_uid[16], s_gid[16];
	static unsigned fdv[MAX_FDS];
	for (size_t i = 0; i < nfds; i++)
		fdv[i] = (unsigned)fds[i];
	char *s_groups = join_ids((const unsigned *)c->groups, c->ngroups);
	char *s_fds = join_ids(fdv, nfds);
	char **nargv = calloc((size_t)argc + 9, sizeof(char *));
	if (s_groups == NULL || s_fds == NULL || nargv == NULL)
		bail("ERR_FRONT_EXEC", "malloc", "");
	snprintf(s_uid, sizeof(s_uid), "%u", (unsigned)c->ruid);
	snprintf(s_gid, sizeof(s_gid), "%u", (unsigned)c->rgid);
	size_t k = 0;
	nargv[k++] = (char *)QK_NODE;
	nargv[k++] = (char *)"--no-warnings";
	nargv[k++] = (char *)QK_BUNDLE;
	nargv[k++] = (char *)"@front";
	nargv[k++] = (char *)agent;
	nargv[k++] = s_uid;
	nargv[k++] = s_gid;
	nargv[k++] = s_groups;
	nargv[k++] = s_fds;
	for (int i = 1; i < argc; i++)
		nargv[k++] = argv[i];
	nargv[k] = NULL;
	exec_node(nargv);
}

/* ---- the steps -------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	static int fds[MAX_FDS];

	if (argc < 1 || argv[0] == NULL)
		qk_front_die(EX_USAGE, "ERR_FRONT_USAGE", "empty argv", "run qemu-kube with an argv[0]");

	/* 1. First: every later message goes to fd 2, every later open takes the lowest free fd. */
	ensure_stdio();

	/* 2. Before anything else is opened, so the list is only what the caller handed us. */
	size_t nfds = record_fds(fds);

	/* 3. The real ids are the caller's: QEMU runs as them, Node or the agent checks them. */
	struct caller c;
	record_caller(&c);

	/* 4. */
	struct kept k;
	wipe_env(&k);

	/* 5. */
	check_trusted();

	/*
	 * "@front" is how this program tells Node it ran us as root for libvirt; a caller must not
	 * be able to hand Node that marker with facts of its own choosing, even unprivileged.
	 */
	if (argc >= 2 && argv[1][0] == '@')
		qk_front_die(EX_USAGE, "ERR_FRONT_USAGE", "arguments starting with '@' are reserved",
		    QK_HINT_USAGE);

	/* 6. argv[1] is a subcommand such as `explain`. */
	if (argc >= 2 && argv[1][0] != '-')
		operator_mode(argc, argv, &c);

	/* 7., 8. Emulator mode. */
	no_core_no_timers();
	become_root();

	/* 9. */
	struct qk_agent_reply r;
	ask_agent(&c, fds, nfds, &k, argc, argv, &r);

	/* 10. Cgroups first: the enter steps' setns(cgroup) and QEMU's first thread must be in them. */
	switch (r.outcome) {
	case QK_AGENT_AUTHORISED:
		join_cgroups(&r);
		/* fallthrough */
	case QK_AGENT_PROBE:
		print_decision(r.decision);
		take_env(r.env);
		enter(&r);
	case QK_AGENT_REFUSED:
		print_decision(r.decision);
		await_monitor_connect(fds, nfds);
		exit(r.exit);
	case QK_AGENT_DOWN: {
		/* 11. Never silent: Node's decision line carries AGENT. */
		char agent[48];
		snprintf(agent, sizeof(agent), "down:%s", r.reason);
		standalone(agent, &c, fds, nfds, argc, argv);
	}
	case QK_AGENT_ABSENT:
		break;
	}
	standalone("absent", &c, fds, nfds, argc, argv);
}
