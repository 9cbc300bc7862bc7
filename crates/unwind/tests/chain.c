/* A deep call chain built at -O2 -fomit-frame-pointer, stopped in its leaf, for
 * the reference-unwinder test. Mode "stop": the child asks to be traced and
 * raises SIGSTOP, so the leaf is inside libc. Mode "spin": the leaf loops
 * forever (a noreturn call: its return address is past level3's end) until the
 * test attaches. Mode "signal": level3 raises SIGUSR1 and the handler stops in
 * leaf_stop, so the walk crosses the kernel's signal frame (glibc's
 * __restore_rt). level2_frame uses alloca, so gcc gives it an rbp frame. */
#include <alloca.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>

volatile int sink;

__attribute__((noinline, noreturn)) void leaf_spin(void) {
    for (;;)
        sink++;
}

__attribute__((noinline)) int leaf_stop(void) {
    raise(SIGSTOP);
    return sink;
}

__attribute__((noinline)) void on_usr1(int sig) {
    sink += leaf_stop() + sig;
}

/* mode 0: spin, 1: stop, 2: signal */
__attribute__((noinline)) int level3(int n, int mode) {
    volatile char buf[64];
    buf[n & 63] = (char)n;
    if (mode == 0)
        leaf_spin();
    if (mode == 2)
        return raise(SIGUSR1) + buf[(n + 1) & 63];
    return leaf_stop() + buf[(n + 1) & 63];
}

__attribute__((noinline)) int level2_frame(int n, int mode) {
    char *p = alloca((unsigned)n + 16);
    memset(p, n, (unsigned)n + 16);
    int r = level3(n, mode);
    return r + p[n];
}

__attribute__((noinline)) int level1(int n, int mode) {
    int r = level2_frame(n + 1, mode);
    sink += r;
    return r * 3;
}

int main(int argc, char **argv) {
    int mode = 1;
    if (argc > 1 && strcmp(argv[1], "spin") == 0)
        mode = 0;
    if (argc > 1 && strcmp(argv[1], "signal") == 0) {
        mode = 2;
        signal(SIGUSR1, on_usr1);
    }
    if (mode != 0)
        ptrace(PTRACE_TRACEME, 0, 0, 0);
    int r = level1(argc, mode);
    printf("%d\n", r);
    return 0;
}
