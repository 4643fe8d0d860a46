/*
 * qemu-kube-enter: the last step before QEMU on the standalone chain. Not setuid; exec'd by the
 * root Node process (docs/CHAIN.md section 2) with the environment Node built for QEMU.
 *
 * Steps (enter.c's header comment is the reference, docs/CHAIN.md section 2 the contract):
 *   1. parse the argv; 2. open what is needed from the host; 3. setns; 4. fork for a pid
 *   namespace; 5. QEMU's own mount namespace; 6.-8. drop credentials, verify, no_new_privs;
 *   9. signals; 10. the pod link; 11. fds; 12. exec QEMU in place.
 * The front runs the same steps in-process when the agent authorised the launch (front.c).
 */
#include "enter.h"

int main(int argc, char **argv)
{
	qk_enter(argc, argv);
}
