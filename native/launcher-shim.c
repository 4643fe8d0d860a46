/*
 * /usr/bin/virt-launcher in the launcher image (scripts/launcher-image.mjs): the container's
 * ENTRYPOINT, so the pod's PID 1.
 *
 * Why C: qemu-kube on the node finds the pod by the basename of argv[0] ("virt-launcher") and
 * the -kubevirt.vm.* flags in /proc/PID/cmdline. Node cannot be started under another argv[0]
 * by itself, and the image has no shell for `exec -a`. This program execs Node in place (same
 * pid) with argv[0] = "virt-launcher" and the launcher bundle, passing every argument through.
 * It is linked statically so that it depends on nothing in the image.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NODE   "/usr/lib/virt-launcher/node"
#define BUNDLE "/usr/lib/virt-launcher/virt-launcher.cjs"

int main(int argc, char **argv)
{
	/* "virt-launcher" "--no-warnings" BUNDLE argv[1..] NULL */
	char **args = calloc((size_t)argc + 3, sizeof(char *));
	if (args == NULL) {
		fprintf(stderr, "virt-launcher: calloc: %s\n", strerror(errno));
		return 71;
	}
	args[0] = "virt-launcher";
	args[1] = "--no-warnings";
	args[2] = BUNDLE;
	for (int i = 1; i < argc; i++)
		args[i + 2] = argv[i];

	/* Irreversible: this process becomes Node (the pid qemu-kube will look for). */
	execv(NODE, args);
	fprintf(stderr, "virt-launcher: execv %s: %s\n", NODE, strerror(errno));
	return 71;
}
