/*
 * N real processes for the startup bench's 10k row: the agent's launcher index is fed by the
 * kernel's proc connector about real pids, so a synthetic /proc cannot show what it saves.
 *
 *   many-procs N     forks N children that pause(); prints "ready N" once all exist; when its
 *                    stdin reaches EOF (the bench is done, or died) it kills them and exits.
 *
 * Each child is this small static program, paused: a few pages of RSS each.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 64;
	long n = atol(argv[1]);
	pid_t parent = getpid();
	setpgid(0, 0);
	for (long i = 0; i < n; i++) {
		pid_t p = fork();
		if (p < 0) {
			perror("fork");
			kill(0, SIGKILL);
			return 71;
		}
		if (p == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(0);
			for (;;)
				pause();
		}
	}
	printf("ready %ld\n", n);
	fflush(stdout);
	char buf[64];
	while (read(0, buf, sizeof(buf)) > 0)
		;
	signal(SIGTERM, SIG_IGN);
	kill(0, SIGTERM);
	while (wait(NULL) > 0)
		;
	return 0;
}
