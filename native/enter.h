/*
 * The enter steps (enter.c), linked into both programs that end as QEMU:
 *   setns.c  qemu-kube-enter, exec'd by the standalone chain's root Node process
 *   front.c  the setuid front, after the resident agent answered `authorised` or `probe`
 * One implementation, so both paths refuse the same argv with the same ERR_ENTER_* codes and
 * build the same QEMU.
 */
#ifndef QK_ENTER_H
#define QK_ENTER_H

/*
 * argv is the enter helper's (docs/CHAIN.md section 2), argv[0] included. Must run as root in a
 * single-threaded process whose environment is QEMU's. Never returns: execs QEMU, or prints one
 * JSON line (ERR_ENTER_*) and exits 71 (64 for a bad argv).
 */
_Noreturn void qk_enter(int argc, char **argv);

#endif
