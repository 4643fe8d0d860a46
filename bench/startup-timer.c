/*
 * The startup bench's timer: fork, execve with exactly the given env, stdin/stderr on /dev/null
 * (or stderr to -o FILE), stdout on a pipe; prints "total_ns first_ns maxrss_kb wait_status
 * cpu_ns". first_ns is when the stand-in QEMU (startup-standin.c) reported its first instruction
 * (-1 if nothing was written on the pipe).
 *
 *   startup-timer [-e NAME=VALUE]... [-o FILE] [-u UID] [-l DIR] -- PROGRAM [ARG...]
 *
 * -u UID: the child runs PROGRAM as uid = gid = UID with no supplementary groups (a per-VM
 * caller; the timer itself stays root). -l DIR: see proc-link.h (the child waits for the link).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "proc-link.h"
static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char **argv) {
  char *env[64]; int ne = 0, i = 1; const char *err = "/dev/null", *tree = NULL; long uid = -1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (!strcmp(argv[i], "-e") && i + 1 < argc && ne < 63) env[ne++] = argv[++i];
    else if (!strcmp(argv[i], "-o") && i + 1 < argc) err = argv[++i];
    else if (!strcmp(argv[i], "-u") && i + 1 < argc) uid = atol(argv[++i]);
    else if (!strcmp(argv[i], "-l") && i + 1 < argc) tree = argv[++i];
    else return 64;
  }
  env[ne] = NULL;
  if (i + 1 >= argc) return 64;
  int p[2], go[2]; if (pipe(p) != 0 || pipe(go) != 0) return 71;
  long long t0 = now();
  pid_t pid = fork();
  if (pid == 0) {
    char c;
    close(go[1]);
    if (tree && read(go[0], &c, 1) != 1) _exit(126);
    if (uid >= 0 && (setgroups(0, NULL) != 0 || setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0)) _exit(126);
    int n = open("/dev/null", O_RDWR), e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(n, 0); dup2(p[1], 1); dup2(e, 2);
    for (int fd = 3; fd < 1024; fd++) close(fd);
    execve(argv[i + 1], argv + i + 1, env);
    _exit(127);
  }
  close(p[1]);
  close(go[0]);
  if (tree) {
    proc_link(tree, pid);
    if (write(go[1], "", 1) != 1) return 71;
  }
  close(go[1]);
  char buf[64]; size_t got = 0; ssize_t r;
  while ((r = read(p[0], buf + got, sizeof(buf) - 1 - got)) > 0) got += (size_t)r;
  buf[got] = 0;
  int st; struct rusage ru;
  if (wait4(pid, &st, 0, &ru) != pid) return 71;
  if (tree) proc_unlink(tree, pid);
  long long t1 = now(), first = got ? atoll(buf) - t0 : -1;
  long long cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
  printf("%lld %lld %ld %d %lld\n", t1 - t0, first, ru.ru_maxrss, st, cpu);
  return 0;
}
