/*
 * The enter steps: the last thing before QEMU, one implementation linked into two programs
 * (enter.h): the enter helper qemu-kube-enter (setns.c, exec'd by the root Node process of the
 * standalone chain) and the setuid front itself after the resident agent authorised a launch
 * (front.c, docs/CHAIN.md section 3). Both call qk_enter() with the argv of docs/CHAIN.md
 * section 2:
 *
 *   ENTER --pidfd=N --pid=P --ns=LIST --uid=U --gid=G --groups=LIST --fds=LIST
 *         (--exec-pod=PATH | --exec-host=PATH)
 *         [--mnt=own|pod] [--carry=PATH[,PATH]] [--carry-roots=R[,R]] [--devices=LIST]
 *         [--pod-link=PATH] [--pod-stop-timeout=S] -- ARGV0 [ARG...]
 *
 * Why this is C and single-threaded: setns(fd, CLONE_NEWNS) fails with EINVAL in any
 * multi-threaded process, and net/ipc/uts/cgroup setns only move the calling thread. Node always
 * runs ~7 threads, so it cannot enter a pod; both programs that run these steps have exactly one
 * thread from their exec to QEMU's and do it instead.
 *
 * Order (each step assumes the ones before it):
 *   1. parse and check the argv; the --fds must be open before we open anything of our own
 *   2. open everything needed from the host: the --exec-host binary, /proc/self/fd (fallback
 *      for close_range), cap_last_cap, and in the fallback the /proc/PID/ns files; with
 *      --mnt=own the --carry clones (carry.c) and the host's --devices major:minor (devfs.c):
 *      after setns the host's filesystem is out of reach
 *   3. setns(pidfd, mask), or one namespace at a time from /proc/PID/ns (mnt last)
 *   4. with the pid namespace: fork; the child (the pod pid namespace's) does all that follows,
 *      the parent drops its credentials too and stays as a transparent parent (libvirt tracks
 *      our pid)
 *   5. --mnt=own, still root (mountns.c): unshare(CLONE_NEWNS), / MS_REC|MS_SLAVE, QEMU's /dev,
 *      a fresh /proc (hidepid=invisible), the carried directories over tmpfs'd roots
 *   6. drop credentials: groups, gid, bounding set, ambient set, uid, then every capability
 *   7. verify that root cannot come back; the pid-namespace child arms PDEATHSIG only now
 *      (a uid change clears it)
 *   8. no_new_privs
 *   9. signals: every catchable one to SIG_DFL, nothing blocked
 *  10. --pod-link, as QEMU's uid (podlink.c): hand the pod's launcher a pidfd of ourselves and
 *      fork the watcher that stops QEMU when the launcher asks or goes away
 *  11. fds: all close-on-exec except exactly --fds
 *  12. exec QEMU in place
 *
 * Every failure prints one JSON line on stderr and exits 71 (64 for a bad argv); QEMU is never
 * started then. Makes no NSS calls: ids arrive as numbers.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "enter.h"
#include "json-error.h"
#include "mountns.h"

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#define MAX_FDS 1024
#define MAX_GROUPS 65536

extern char **environ;

/* Entry order for the /proc fallback. mnt is last: it replaces our root and cwd. */
static const struct {
	const char *name;
	int flag;
} NS[] = {
	{"cgroup", CLONE_NEWCGROUP}, {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS},
	{"net", CLONE_NEWNET},       {"pid", CLONE_NEWPID}, {"mnt", CLONE_NEWNS},
};
#define NNS (sizeof(NS) / sizeof(NS[0]))

static struct {
	int pidfd;
	pid_t pid;
	int ns;
	uid_t uid;
	gid_t gid;
	gid_t *groups;
	size_t ngroups;
	int *fds;
	size_t nfds;
	const char *exec_path;
	int exec_host;
	char **argv;
	int mnt_own;            /* --mnt=own: QEMU's own mount namespace (mountns.c) */
	struct qk_carry *carry; /* --carry, each with its --carry-roots entry */
	size_t ncarry;
	struct qk_devices devices;
	const char *pod_link;   /* "" = none */
	unsigned pod_stop_timeout; /* --pod-stop-timeout: seconds the watcher gives QEMU after SIGTERM */
} o;

/* ---- errors --------------------------------------------------------------------------------- */

static _Noreturn void die(int status, const char *code, const char *msg, const char *hint)
{
	qk_json_error("ERR_ENTER_", code, msg, hint);
	_exit(status);
}

/* A failed step: "<step>: <strerror>", exit 71. */
_Noreturn void qk_bail(const char *code, const char *step, const char *hint)
{
	char msg[PATH_MAX + 256];
	snprintf(msg, sizeof(msg), "%s: %s", step, strerror(errno));
	die(EX_OSERR, code, msg, hint);
}

/* A rule the input broke (no errno), exit 71. */
_Noreturn void qk_fail(const char *code, const char *msg, const char *hint)
{
	die(EX_OSERR, code, msg, hint);
}

static _Noreturn void usage(const char *what, const char *arg)
{
	char msg[512];
	snprintf(msg, sizeof(msg), "%s%s%.200s", what, arg ? ": " : "", arg ? arg : "");
	die(EX_USAGE, "USAGE", msg,
	    "qemu-kube-enter is run by qemu-kube only; see docs/CHAIN.md for its argv");
}

/* ---- 1. argv ---------------------------------------------------------------------------------- */

/* Strict decimal: optional '-' only when min < 0, no '+', no spaces, no leading zeros. */
static int parse_dec(const char *s, long long min, long long max, long long *out)
{
	int neg = 0;
	long long v = 0;
	if (*s == '-' && min < 0) {
		neg = 1;
		s++;
	}
	if (*s == '\0' || (s[0] == '0' && s[1] != '\0') || (neg && s[0] == '0'))
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
		if (v > max + (neg ? 1 : 0))
			return -1;
	}
	v = neg ? -v : v;
	if (v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* Comma-separated decimals; "" is the empty list; no empty elements. */
static size_t parse_list(const char *opt, const char *s, long long max, size_t cap, long long **out)
{
	size_t n = 0;
	*out = NULL;
	if (*s == '\0')
		return 0;
	for (const char *p = s; *p; p++)
		n += *p == ',';
	if (++n > cap)
		usage("too many elements in", opt);
	long long *v = calloc(n, sizeof(*v));
	char *copy = strdup(s);
	if (v == NULL || copy == NULL)
		qk_bail("USAGE", "calloc", "");
	size_t i = 0;
	char *save = copy, *e;
	while ((e = strsep(&save, ",")) != NULL)
		if (parse_dec(e, 0, max, &v[i++]) != 0)
			usage("bad number in", opt);
	free(copy);
	*out = v;
	return n;
}

static long long number(const char *opt, const char *s, long long min, long long max)
{
	long long v;
	if (parse_dec(s, min, max, &v) != 0)
		usage("bad number in", opt);
	return v;
}

static int parse_ns(const char *s)
{
	int mask = 0;
	char *copy = strdup(s), *save = copy, *e;
	if (copy == NULL)
		qk_bail("USAGE", "strdup", "");
	if (*s == '\0') {
		free(copy);
		return 0;
	}
	while ((e = strsep(&save, ",")) != NULL) {
		if (strcmp(e, "user") == 0)
			usage("the user namespace is refused", "--ns=user");
		size_t i;
		for (i = 0; i < NNS && strcmp(e, NS[i].name) != 0; i++)
			;
		if (i == NNS)
			usage("unknown namespace in --ns", e);
		if (mask & NS[i].flag)
			usage("namespace named twice in --ns", e);
		mask |= NS[i].flag;
	}
	free(copy);
	return mask;
}

/*
 * An absolute, normalised path: "/" then non-empty components, none "." or "..", no trailing
 * "/", shorter than max. The kernel is never asked to make sense of anything else.
 */
static int clean_path(const char *p, size_t max)
{
	if (p[0] != '/' || p[1] == '\0' || strlen(p) >= max)
		return -1;
	for (const char *c = p + 1;;) {
		size_t len = strcspn(c, "/");
		if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
			return -1;
		if (c[len] == '\0')
			return 0;
		c += len + 1;
	}
}

/* below is strictly under dir (a clean path): "dir/..." */
static int is_under(const char *below, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(below, dir, n) == 0 && below[n] == '/';
}

/* Comma-separated clean paths; "" is the empty list. The strings point into a private copy. */
static size_t parse_paths(const char *opt, const char *s, char ***out)
{
	size_t n = 0;
	*out = NULL;
	if (*s == '\0')
		return 0;
	for (const char *p = s; *p; p++)
		n += *p == ',';
	if (++n > 64)
		usage("too many elements in", opt);
	char **v = calloc(n, sizeof(*v));
	char *copy = strdup(s);
	if (v == NULL || copy == NULL)
		qk_bail("USAGE", "calloc", "");
	size_t i = 0;
	char *save = copy, *e;
	while ((e = strsep(&save, ",")) != NULL) {
		if (clean_path(e, PATH_MAX) != 0)
			usage("not an absolute, normalised path in", opt);
		for (size_t j = 0; j < i; j++)
			if (strcmp(v[j], e) == 0 || is_under(v[j], e) || is_under(e, v[j]))
				usage("paths must not repeat or nest in", opt);
		v[i++] = e;
	}
	*out = v;
	return n;
}

/* --carry against --carry-roots: every path strictly under exactly one root. */
static void match_carry(char **paths, size_t npaths, char **roots, size_t nroots)
{
	o.carry = calloc(npaths + 1, sizeof(*o.carry));
	if (o.carry == NULL)
		qk_bail("USAGE", "calloc", "");
	for (size_t i = 0; i < npaths; i++) {
		const char *root = NULL;
		for (size_t j = 0; j < nroots; j++)
			if (is_under(paths[i], roots[j]))
				root = roots[j]; /* roots do not nest (parse_paths): at most one */
		if (root == NULL)
			usage("--carry path is not under any --carry-roots entry", paths[i]);
		o.carry[i] = (struct qk_carry){paths[i], root, -1};
	}
	o.ncarry = npaths;
}

static unsigned parse_devices(const char *s)
{
	unsigned mask = 0;
	char *copy = strdup(s), *save = copy, *e;
	if (copy == NULL)
		qk_bail("USAGE", "strdup", "");
	while (*s && (e = strsep(&save, ",")) != NULL) {
		int i = qk_device_index(e);
		if (i < 0)
			usage("unknown device in --devices (kvm, tun, vhost-net)", e);
		if (mask & (1u << i))
			usage("device named twice in --devices", e);
		mask |= 1u << i;
	}
	free(copy);
	return mask;
}

enum {
	O_PIDFD, O_PID, O_NS, O_UID, O_GID, O_GROUPS, O_FDS, O_EXEC_POD, O_EXEC_HOST,
	O_MNT, O_CARRY, O_CARRY_ROOTS, O_DEVICES, O_POD_LINK, O_POD_STOP_TIMEOUT, O_COUNT
};

static void parse_args(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"pidfd", required_argument, NULL, O_PIDFD},
		{"pid", required_argument, NULL, O_PID},
		{"ns", required_argument, NULL, O_NS},
		{"uid", required_argument, NULL, O_UID},
		{"gid", required_argument, NULL, O_GID},
		{"groups", required_argument, NULL, O_GROUPS},
		{"fds", required_argument, NULL, O_FDS},
		{"exec-pod", required_argument, NULL, O_EXEC_POD},
		{"exec-host", required_argument, NULL, O_EXEC_HOST},
		{"mnt", required_argument, NULL, O_MNT},
		{"carry", required_argument, NULL, O_CARRY},
		{"carry-roots", required_argument, NULL, O_CARRY_ROOTS},
		{"devices", required_argument, NULL, O_DEVICES},
		{"pod-link", required_argument, NULL, O_POD_LINK},
		{"pod-stop-timeout", required_argument, NULL, O_POD_STOP_TIMEOUT},
		{NULL, 0, NULL, 0},
	};
	int seen[O_COUNT] = {0};
	long long *list;
	char **carry = NULL, **roots = NULL;
	size_t ncarry = 0, nroots = 0;
	o.pod_link = "";
	o.pod_stop_timeout = 10;
	int c, idx;

	/* "+": stop at the first non-option; ":" and opterr = 0: we print the only error line. */
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+:", longopts, &idx)) != -1) {
		const char *arg = argv[optind - 1];
		if (c == '?')
			usage("unknown option", arg);
		if (c == ':')
			usage("option needs a value", arg);
		/* Only the exact "--name=value" spelling: no abbreviations, no separate value. */
		size_t len = strlen(longopts[idx].name);
		if (strncmp(arg, "--", 2) != 0 || strncmp(arg + 2, longopts[idx].name, len) != 0 ||
		    arg[2 + len] != '=')
			usage("expected --NAME=VALUE in one argument for", longopts[idx].name);
		if (seen[c]++)
			usage("option given twice", arg);
		switch (c) {
		case O_PIDFD:
			o.pidfd = (int)number(arg, optarg, -1, INT_MAX);
			break;
		case O_PID:
			o.pid = (pid_t)number(arg, optarg, 0, INT_MAX);
			break;
		case O_NS:
			o.ns = parse_ns(optarg);
			break;
		case O_UID:
			o.uid = (uid_t)number(arg, optarg, 0, UINT32_MAX - 1);
			break;
		case O_GID:
			o.gid = (gid_t)number(arg, optarg, 0, UINT32_MAX - 1);
			break;
		case O_GROUPS:
			o.ngroups = parse_list(arg, optarg, UINT32_MAX - 1, MAX_GROUPS, &list);
			o.groups = calloc(o.ngroups + 1, sizeof(gid_t));
			if (o.groups == NULL)
				qk_bail("USAGE", "calloc", "");
			for (size_t i = 0; i < o.ngroups; i++)
				o.groups[i] = (gid_t)list[i];
			free(list);
			break;
		case O_FDS:
			o.nfds = parse_list(arg, optarg, INT_MAX, MAX_FDS, &list);
			o.fds = calloc(o.nfds + 1, sizeof(int));
			if (o.fds == NULL)
				qk_bail("USAGE", "calloc", "");
			for (size_t i = 0; i < o.nfds; i++)
				o.fds[i] = (int)list[i];
			free(list);
			break;
		case O_EXEC_POD:
		case O_EXEC_HOST:
			o.exec_path = optarg;
			o.exec_host = c == O_EXEC_HOST;
			if (optarg[0] != '/')
				usage("the QEMU path must be absolute", arg);
			break;
		case O_MNT:
			if (strcmp(optarg, "own") != 0 && strcmp(optarg, "pod") != 0)
				usage("--mnt must be own or pod", arg);
			o.mnt_own = strcmp(optarg, "own") == 0;
			break;
		case O_CARRY:
			ncarry = parse_paths(arg, optarg, &carry);
			break;
		case O_CARRY_ROOTS:
			nroots = parse_paths(arg, optarg, &roots);
			break;
		case O_DEVICES:
			o.devices.wanted = parse_devices(optarg);
			break;
		case O_POD_LINK:
			/* 108 = sizeof(sun_path) */
			if (*optarg && clean_path(optarg, 108) != 0)
				usage("--pod-link must be empty or an absolute, normalised path under 108 bytes", arg);
			o.pod_link = optarg;
			break;
		case O_POD_STOP_TIMEOUT:
			o.pod_stop_timeout = (unsigned)number(arg, optarg, 0, 3600);
			break;
		}
	}
	static const char *const names[] = {"--pidfd", "--pid", "--ns", "--uid", "--gid", "--groups", "--fds"};
	for (int i = O_PIDFD; i <= O_FDS; i++)
		if (!seen[i])
			usage("missing option", names[i]);
	if (seen[O_EXEC_POD] + seen[O_EXEC_HOST] != 1)
		usage("exactly one of --exec-pod and --exec-host is required", NULL);
	if (optind < 2 || strcmp(argv[optind - 1], "--") != 0)
		usage("expected -- before the QEMU argv", optind < argc ? argv[optind] : NULL);
	if (optind >= argc)
		usage("missing ARGV0 after --", NULL);
	o.argv = argv + optind;

	/* --mnt absent = pod (the argv before issue 7); the launch path passes --mnt=own. */
	if (o.mnt_own && !(o.ns & CLONE_NEWNS))
		usage("--mnt=own needs mnt in --ns", NULL);
	if ((ncarry > 0 || o.devices.wanted) && !o.mnt_own)
		usage("--carry and --devices need --mnt=own", NULL);
	if (*o.pod_link && !(o.ns & CLONE_NEWNS))
		usage("--pod-link needs mnt in --ns", NULL);
	match_carry(carry, ncarry, roots, nroots);
	free(carry);
	free(roots);

	if (o.ns != 0) {
		if (o.pid <= 0)
			usage("--ns needs --pid", NULL);
		/* Never run QEMU as root in a pod: a root QEMU there owns the pod. */
		if (o.uid == 0 || o.gid == 0)
			die(EX_USAGE, "ROOT_IN_POD", "refusing uid 0 or gid 0 with --ns",
			    "set qemu_user/qemu_group (or run libvirt's QEMU as a non-root user)");
	}
	/*
	 * Each --fds entry must be open now, before this program opens anything: afterwards a
	 * listed number could name one of our own fds. The pidfd never reaches QEMU.
	 */
	for (size_t i = 0; i < o.nfds; i++) {
		if (fcntl(o.fds[i], F_GETFD) < 0) {
			char what[64];
			snprintf(what, sizeof(what), "--fds: fd %d is not open", o.fds[i]);
			qk_bail("FDS", what, "the fds libvirt passed must reach the helper");
		}
		if (o.fds[i] == o.pidfd)
			usage("--fds must not contain the pidfd", NULL);
	}
}

/* ---- 2./3. namespaces ------------------------------------------------------------------------- */

/*
 * 0 while the pidfd's process lives, else -1 with errno (ESRCH: it exited; EBADF: no pidfd).
 * pidfd_send_signal(0) answers only for a process in our pid namespace or below it, and says
 * EINVAL for any other; the agent hands the front pidfds of processes outside its pid namespace
 * (libvirt in a container without hostPID). A pidfd polls readable once its process has
 * exited, whichever namespace it is in: that answers then.
 */
static int pidfd_alive(int pidfd)
{
	if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0)
		return 0;
	if (errno != EINVAL)
		return -1;
	struct pollfd p = {.fd = pidfd, .events = POLLIN};
	if (poll(&p, 1, 0) < 0)
		return -1;
	if (p.revents & POLLNVAL) {
		errno = EBADF;
		return -1;
	}
	if (p.revents != 0) {
		errno = ESRCH;
		return -1;
	}
	return 0;
}

/* The pid the pidfd refers to, as /proc (the one /proc/PID/ns is read from) numbers it. */
static pid_t pidfd_pid(int pidfd)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		qk_bail("PIDFD", "open /proc/self/fdinfo", "");
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n < 0)
		qk_bail("PIDFD", "read /proc/self/fdinfo", "");
	close(fd);
	buf[n] = '\0';
	char *p = strstr(buf, "\nPid:\t");
	long long v;
	if (p == NULL)
		return -1;
	p += 6;
	p[strcspn(p, "\n")] = '\0';
	if (parse_dec(p, -1, INT_MAX, &v) != 0)
		return -1;
	return (pid_t)v;
}

/*
 * Fallback for kernels without setns(pidfd) (< 5.8) or a caller without a pidfd: one
 * /proc/PID/ns file per namespace, all opened before the first setns (after setns(mnt), /proc
 * is the pod's).
 */
static void enter_by_proc(void)
{
	int nsfd[NNS];
	char path[64];

	/* The pidfd pins the process; check that /proc/PID is that process before trusting it. */
	if (o.pidfd >= 0 && pidfd_pid(o.pidfd) != o.pid) {
		errno = ESRCH;
		qk_bail("PIDFD", "--pidfd does not refer to --pid in /proc", "");
	}
	for (size_t i = 0; i < NNS; i++) {
		nsfd[i] = -1;
		if (!(o.ns & NS[i].flag))
			continue;
		snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)o.pid, NS[i].name);
		nsfd[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (nsfd[i] < 0)
			qk_bail("OPEN", path, "the target process is gone or /proc is not the host's");
	}
	/* Still alive after the opens, so the pid was not reused: the files are the pinned one's. */
	if (o.pidfd >= 0 && pidfd_alive(o.pidfd) != 0)
		qk_bail("PIDFD", "target exited while its namespaces were opened", "start the VM again");
	for (size_t i = 0; i < NNS; i++) {
		if (nsfd[i] < 0)
			continue;
		/* Irreversible: we are in this namespace of the pod from here on. */
		if (setns(nsfd[i], NS[i].flag) != 0) {
			snprintf(path, sizeof(path), "setns(/proc/%d/ns/%s)", (int)o.pid, NS[i].name);
			qk_bail("SETNS", path, "");
		}
		close(nsfd[i]);
	}
}

static void enter_namespaces(void)
{
	if (o.ns == 0)
		return;
	if (o.pidfd >= 0) {
		if (pidfd_alive(o.pidfd) != 0)
			qk_bail("PIDFD", "pidfd_send_signal(pidfd, 0)",
			     errno == ESRCH ? "the pod's process exited; start the VM again" : "--pidfd is not a pidfd");
		/* Irreversible: all requested namespaces at once, atomically (Linux >= 5.8). */
		if (setns(o.pidfd, o.ns) == 0)
			return;
		if (errno != EINVAL)
			qk_bail("SETNS", "setns(pidfd)", "");
	}
	enter_by_proc();
}

/* ---- 4./5. credentials -------------------------------------------------------------------------- */

static int read_last_cap(void)
{
	char buf[32];
	long long v;
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		qk_bail("OPEN", "open /proc/sys/kernel/cap_last_cap", "");
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		qk_bail("OPEN", "read /proc/sys/kernel/cap_last_cap", "");
	close(fd);
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (parse_dec(buf, 0, 63, &v) != 0) {
		errno = EINVAL;
		qk_bail("OPEN", "parse /proc/sys/kernel/cap_last_cap", "");
	}
	return (int)v;
}

static void drop_credentials(int last_cap)
{
	/* Irreversible: QEMU's supplementary groups and gid; both need CAP_SETGID, so before uid. */
	if (setgroups(o.ngroups, o.groups) != 0)
		qk_bail("CREDS", "setgroups", "");
	if (setresgid(o.gid, o.gid, o.gid) != 0)
		qk_bail("CREDS", "setresgid", "");
	/* Capabilities must not survive the uid change below. */
	if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0)
		qk_bail("CAPS", "prctl(PR_SET_KEEPCAPS, 0)", "");
	/* Irreversible: the bounding set caps what any later exec can gain (needs CAP_SETPCAP). */
	for (int cap = 0; cap <= last_cap; cap++)
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
			qk_bail("CAPS", "prctl(PR_CAPBSET_DROP)", "");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
		qk_bail("CAPS", "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", "");
	/* Irreversible: the uid last, it takes the privilege the steps above needed. */
	if (setresuid(o.uid, o.uid, o.uid) != 0)
		qk_bail("CREDS", "setresuid", "");
	/* The uid change empties permitted/effective but not inheritable; with --uid=0 nothing. */
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
	if (syscall(SYS_capset, &hdr, data) != 0)
		qk_bail("CAPS", "capset(0)", "");
}

static void verify_credentials(int last_cap)
{
	uid_t r, e, s;
	gid_t rg, eg, sg;
	if (o.uid != 0 && (setresuid(0, 0, 0) == 0 || errno != EPERM)) {
		errno = EPERM;
		qk_bail("VERIFY", "setresuid(0,0,0) did not fail after the drop", "");
	}
	if (o.gid != 0 && (setresgid(0, 0, 0) == 0 || errno != EPERM)) {
		errno = EPERM;
		qk_bail("VERIFY", "setresgid(0,0,0) did not fail after the drop", "");
	}
	if (getresuid(&r, &e, &s) != 0 || getresgid(&rg, &eg, &sg) != 0)
		qk_bail("VERIFY", "getresuid/getresgid", "");
	if (r != o.uid || e != o.uid || s != o.uid || rg != o.gid || eg != o.gid || sg != o.gid) {
		errno = EPERM;
		qk_bail("VERIFY", "ids differ from --uid/--gid after the drop", "");
	}
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	if (syscall(SYS_capget, &hdr, d) != 0)
		qk_bail("VERIFY", "capget", "");
	for (int i = 0; i < 2; i++)
		if (d[i].effective || d[i].permitted || d[i].inheritable) {
			errno = EPERM;
			qk_bail("VERIFY", "capabilities left after the drop", "");
		}
	for (int cap = 0; cap <= last_cap; cap++)
		if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 0) {
			errno = EPERM;
			qk_bail("VERIFY", "bounding set not empty after the drop", "");
		}
}

/* ---- 7. signals ------------------------------------------------------------------------------- */

/*
 * Node leaves SIGPIPE and SIGXFSZ ignored, the caller could have ignored any realtime signal,
 * and ignored dispositions survive exec. Handlers do not survive exec, so SIG_DFL everywhere
 * is what QEMU would get from a clean fork+exec. glibc reserves two realtime signals for
 * itself (32, 33) and refuses to touch them; it resets those in the new program itself.
 */
static void reset_dispositions(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	for (int sig = 1; sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		if (sigaction(sig, &sa, NULL) != 0 && !(errno == EINVAL && sig >= 32 && sig < SIGRTMIN))
			qk_bail("SIGNALS", "sigaction(SIG_DFL)", "");
	}
}

static void reset_signals(void)
{
	reset_dispositions();
	sigset_t none;
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) != 0)
		qk_bail("SIGNALS", "sigprocmask", "");
}

/* ---- 8. fds ----------------------------------------------------------------------------------- */

/* Our open fds from the /proc/self/fd directory opened before setns (the pod may lack /proc). */
static size_t list_fds(int procfd, int **out)
{
	char buf[4096];
	size_t n = 0, cap = 64;
	int *v = malloc(cap * sizeof(int));
	if (v == NULL || lseek(procfd, 0, SEEK_SET) != 0)
		qk_bail("FDS", "list /proc/self/fd", "");
	for (;;) {
		ssize_t got = getdents64(procfd, buf, sizeof(buf));
		if (got < 0)
			qk_bail("FDS", "getdents64 /proc/self/fd", "");
		if (got == 0)
			break;
		for (ssize_t off = 0; off < got;) {
			struct dirent64 *d = (struct dirent64 *)(buf + off);
			long long fd;
			off += d->d_reclen;
			if (parse_dec(d->d_name, 0, INT_MAX, &fd) != 0)
				continue; /* "." and ".." */
			if (n == cap && (v = realloc(v, (cap *= 2) * sizeof(int))) == NULL)
				qk_bail("FDS", "realloc", "");
			v[n++] = (int)fd;
		}
	}
	*out = v;
	return n;
}

static void set_fds(int procfd)
{
	/* Irreversible at exec: every fd we did not name is gone for QEMU. */
	if (syscall(SYS_close_range, 0U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
		if (errno != ENOSYS && errno != EINVAL)
			qk_bail("FDS", "close_range(CLOSE_RANGE_CLOEXEC)", "");
		int *all;
		size_t n = list_fds(procfd, &all);
		for (size_t i = 0; i < n; i++) {
			int fl = fcntl(all[i], F_GETFD);
			if (fl < 0 && errno == EBADF) /* the directory's own transient fd */
				continue;
			if (fl < 0 || fcntl(all[i], F_SETFD, fl | FD_CLOEXEC) != 0)
				qk_bail("FDS", "fcntl(FD_CLOEXEC)", "");
		}
		free(all);
	}
	for (size_t i = 0; i < o.nfds; i++) {
		int fl = fcntl(o.fds[i], F_GETFD);
		if (fl < 0 || fcntl(o.fds[i], F_SETFD, fl & ~FD_CLOEXEC) != 0)
			qk_bail("FDS", "fcntl(~FD_CLOEXEC) on an --fds entry", "");
	}
}

/* ---- 9. the pid namespace: a transparent parent ----------------------------------------------- */

static _Noreturn void exit_like(int status)
{
	if (WIFEXITED(status))
		_exit(WEXITSTATUS(status));
	int sig = WTERMSIG(status);
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, sig);
	signal(sig, SIG_DFL);
	sigprocmask(SIG_UNBLOCK, &one, NULL);
	raise(sig);
	_exit(128 + sig); /* signals whose default is to ignore */
}

/*
 * The parent keeps the pid libvirt knows. It holds nothing QEMU holds (so libvirt sees the
 * monitor close when QEMU dies, not when we do), forwards the signals libvirt and operators
 * send, and ends the way the child ended.
 */
static _Noreturn void supervise(pid_t child, int procfd, const sigset_t *set)
{
	if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
		int *all;
		size_t n = list_fds(procfd, &all);
		for (size_t i = 0; i < n; i++)
			if (all[i] > 2 && all[i] != procfd)
				close(all[i]);
		close(procfd);
		free(all);
	}
	close(0);
	close(1);
	for (;;) {
		int st, sig = sigwaitinfo(set, NULL);
		if (sig < 0) {
			if (errno == EINTR)
				continue;
			qk_bail("FORK", "sigwaitinfo", "");
		}
		if (sig != SIGCHLD) {
			if (kill(child, sig) != 0 && errno != ESRCH)
				qk_bail("FORK", "kill(child)", "");
			continue;
		}
		pid_t r = waitpid(child, &st, WNOHANG);
		if (r == child)
			exit_like(st);
		if (r < 0)
			qk_bail("FORK", "waitpid", "");
	}
}

/* The child watches this pidfd of the parent: getppid() cannot tell it that the parent died. */
static int parent_pidfd = -1;

/*
 * Forks right after setns: the child is the first process in the pod's pid namespace and does
 * everything that follows (its procfs must be that namespace's). The parent gives up root like
 * the child and supervises; only the child returns.
 */
static void fork_into_pid_ns(int procfd, int last_cap)
{
	static const int fwd[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD};
	sigset_t set;
	sigemptyset(&set);
	for (size_t i = 0; i < sizeof(fwd) / sizeof(fwd[0]); i++)
		sigaddset(&set, fwd[i]);

	int self = (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (self < 0)
		qk_bail("FORK", "pidfd_open(self)", "");
	/*
	 * Dispositions before the fork: setting SIGCHLD to SIG_DFL (default: ignore) discards a
	 * pending SIGCHLD, and a child that fails early could exit before the parent got there.
	 */
	reset_dispositions();
	/* Blocked until the parent waits for them and the child has reset its mask. */
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		qk_bail("FORK", "sigprocmask", "");
	pid_t child = fork();
	if (child < 0)
		qk_bail("FORK", "fork", "");
	if (child > 0) {
		/* Irreversible: the parent stays for libvirt, but not as root. */
		drop_credentials(last_cap);
		verify_credentials(last_cap);
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
			qk_bail("NNP", "prctl(PR_SET_NO_NEW_PRIVS)", "");
		if (sigprocmask(SIG_SETMASK, &set, NULL) != 0)
			qk_bail("FORK", "sigprocmask", "");
		supervise(child, procfd, &set);
	}
	parent_pidfd = self;
}

/*
 * Child, after its credential drop (a change of euid/egid clears PDEATHSIG, so not earlier).
 * Irreversible: the child dies with the parent. The usual check after PR_SET_PDEATHSIG is that
 * getppid() did not change, but the parent lives outside the pod's pid namespace, so getppid()
 * is 0 before and after it dies. A pidfd polls readable once the parent has exited, and the
 * parent's exit reparents us (and sends PDEATHSIG) before it does that.
 */
static void arm_parent_death(void)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
		qk_bail("FORK", "prctl(PR_SET_PDEATHSIG)", "");
	struct pollfd p = {parent_pidfd, POLLIN, 0};
	int r = poll(&p, 1, 0);
	if (r != 0) {
		errno = r < 0 ? errno : ESRCH;
		qk_bail("FORK", "parent exited before the child started", "");
	}
	close(parent_pidfd);
	parent_pidfd = -1;
}

/* ---- the steps ----------------------------------------------------------------------------------- */

_Noreturn void qk_enter(int argc, char **argv)
{
	/* 1. */
	parse_args(argc, argv);

	/* 2. Everything from the host, while we still see the host's filesystem. */
	int procfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (procfd < 0)
		qk_bail("OPEN", "open /proc/self/fd", "mount procfs on /proc");
	int last_cap = read_last_cap();
	int exec_fd = -1;
	if (o.exec_host) {
		struct stat st;
		/* O_CLOEXEC is fine for an ELF binary (a #! script would need the fd open). */
		exec_fd = open(o.exec_path, O_PATH | O_CLOEXEC);
		if (exec_fd < 0)
			qk_bail("OPEN", "open --exec-host", "check probe_qemu_binary / the QEMU path");
		if (fstat(exec_fd, &st) != 0)
			qk_bail("OPEN", "fstat --exec-host", "");
		if (!S_ISREG(st.st_mode)) {
			errno = EACCES;
			qk_bail("OPEN", "--exec-host is not a regular file", "");
		}
	}
	if (o.mnt_own) {
		qk_carry_open(o.carry, o.ncarry, o.uid);
		qk_devices_probe(&o.devices);
	}

	/* 3. */
	enter_namespaces();

	/* 4. setns(CLONE_NEWPID) only affects children: QEMU must be one, and the mounts below
	 * must be made by it (a procfs belongs to its mounter's pid namespace). */
	if (o.ns & CLONE_NEWPID)
		fork_into_pid_ns(procfd, last_cap);

	/* 5. Still root: QEMU's own mount namespace, derived from the pod's. */
	if (o.mnt_own) {
		struct qk_mountns m = {o.uid, o.gid, &o.devices, o.carry, o.ncarry};
		qk_mountns_own(&m);
	}

	/* 6., 7., 8. */
	drop_credentials(last_cap);
	verify_credentials(last_cap);
	if (o.ns & CLONE_NEWPID)
		arm_parent_death();
	/* Irreversible: nothing QEMU execs can gain privileges (setuid bits, file caps). */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		qk_bail("NNP", "prctl(PR_SET_NO_NEW_PRIVS)", "");

	/* 9. */
	reset_signals();

	/* 10. Unprivileged, in QEMU's mount namespace: the launcher learns QEMU's pidfd first. */
	if (*o.pod_link)
		qk_podlink(o.pod_link, o.pidfd, o.pod_stop_timeout);

	/* 11. */
	set_fds(procfd);

	/* 12. QEMU replaces us in place, with the environment Node built for it. */
	if (o.exec_host)
		syscall(SYS_execveat, exec_fd, "", o.argv, environ, AT_EMPTY_PATH);
	else
		execve(o.exec_path, o.argv, environ);
	qk_bail("EXEC", o.exec_host ? "execveat(--exec-host)" : "execve(--exec-pod)",
	     o.exec_host ? "" : "the QEMU path must exist inside the pod's mount namespace");
}
