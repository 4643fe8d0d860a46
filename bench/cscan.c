/*
 * The C baseline for the discovery bench: the same scan as src/emulator/target.ts, written the
 * plain way. opendir the root; for each numeric entry open/read(4096)/close its cmdline; compare
 * argv[0]'s basename with the launcher name; for those that match, parse the Go-style flags
 * (-f v, --f v, -f=v, --f=v; whole arguments; stop at "--"; each flag exactly once) and count
 * the processes that carry the VM's uuid and name. A launcher whose cmdline fills the buffer is
 * read on to its end (ours reads those whole too). No stat is read: ours reads it only for the
 * one match, so the per-process work is the same.
 *
 *   cscan ROOT LAUNCHER UUID NAME [REPEAT]
 *
 * Prints one line per repetition: `matches=M numeric=K ns=T`, T being the scan alone
 * (opendir .. closedir) on CLOCK_MONOTONIC, so process start-up is not in it.
 * Built by scripts/bench.mjs with gcc -O2.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE 4096
#define UUID_FLAG "kubevirt.vm.uuid"
#define NAME_FLAG "kubevirt.vm.name"

static int argv0_basename_is(const char *buf, size_t n, const char *name, size_t name_len) {
	const char *nul = memchr(buf, 0, n);
	size_t end = nul ? (size_t)(nul - buf) : n;
	if (end == 0) return 0;
	size_t start = end;
	while (start > 0 && buf[start - 1] != '/') start--;
	return end - start == name_len && memcmp(buf + start, name, name_len) == 0;
}

/* Mirrors carriesVm(): argv is buf[0..n), NUL-separated, a final NUL optional. */
static int carries_vm(const char *buf, size_t n, const char *uuid, const char *name) {
	const char *args[1024];
	size_t lens[1024];
	size_t argc = 0;
	for (size_t i = 0; i < n && argc < 1024;) {
		const char *nul = memchr(buf + i, 0, n - i);
		size_t len = nul ? (size_t)(nul - (buf + i)) : n - i;
		args[argc] = buf + i;
		lens[argc++] = len;
		i += len + 1;
	}
	int uuid_seen = 0, name_seen = 0, uuid_ok = 0, name_ok = 0;
	for (size_t i = 1; i < argc; i++) {
		const char *a = args[i];
		size_t len = lens[i];
		if (len == 2 && a[0] == '-' && a[1] == '-') break;
		if (len < 2 || a[0] != '-') continue;
		size_t p = a[1] == '-' ? 2 : 1;
		if (p >= len || a[p] == '-' || a[p] == '=') continue;
		const char *eq = memchr(a + p, '=', len - p);
		size_t flen = eq ? (size_t)(eq - (a + p)) : len - p;
		int is_uuid = flen == strlen(UUID_FLAG) && memcmp(a + p, UUID_FLAG, flen) == 0;
		int is_name = flen == strlen(NAME_FLAG) && memcmp(a + p, NAME_FLAG, flen) == 0;
		if (!is_uuid && !is_name) continue;
		const char *v;
		size_t vlen;
		if (eq) {
			v = eq + 1;
			vlen = len - (size_t)(v - a);
		} else {
			if (++i >= argc) return 0;
			v = args[i];
			vlen = lens[i];
		}
		const char *want = is_uuid ? uuid : name;
		int ok = vlen == strlen(want) && memcmp(v, want, vlen) == 0;
		if (is_uuid) uuid_seen++, uuid_ok = ok;
		else name_seen++, name_ok = ok;
	}
	return uuid_seen == 1 && name_seen == 1 && uuid_ok && name_ok;
}

static long scan(const char *root, const char *launcher, const char *uuid, const char *name, long *numeric) {
	size_t launcher_len = strlen(launcher);
	char path[4096];
	char buf[BUF_SIZE];
	long matches = 0;
	*numeric = 0;
	DIR *d = opendir(root);
	if (!d) {
		perror(root);
		exit(71);
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
		(*numeric)++;
		snprintf(path, sizeof path, "%s/%s/cmdline", root, e->d_name);
		int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) continue; /* exited since readdir */
		ssize_t n = read(fd, buf, BUF_SIZE);
		if (n > 0 && argv0_basename_is(buf, (size_t)n, launcher, launcher_len)) {
			if (n < BUF_SIZE) {
				matches += carries_vm(buf, (size_t)n, uuid, name);
			} else { /* a long launcher cmdline: read it whole */
				size_t cap = 4 * BUF_SIZE, len = (size_t)n;
				char *big = malloc(cap);
				memcpy(big, buf, len);
				for (;;) {
					if (len == cap) big = realloc(big, cap *= 2);
					ssize_t m = read(fd, big + len, cap - len);
					if (m <= 0) break;
					len += (size_t)m;
				}
				matches += carries_vm(big, len, uuid, name);
				free(big);
			}
		}
		close(fd);
	}
	closedir(d);
	return matches;
}

int main(int argc, char **argv) {
	if (argc < 5) {
		fprintf(stderr, "usage: cscan ROOT LAUNCHER UUID NAME [REPEAT]\n");
		return 64;
	}
	int repeat = argc > 5 ? atoi(argv[5]) : 1;
	for (int r = 0; r < repeat; r++) {
		struct timespec a, b;
		long numeric;
		clock_gettime(CLOCK_MONOTONIC, &a);
		long m = scan(argv[1], argv[2], argv[3], argv[4], &numeric);
		clock_gettime(CLOCK_MONOTONIC, &b);
		long long ns = (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
		printf("matches=%ld numeric=%ld ns=%lld\n", m, numeric, ns);
	}
	return 0;
}
