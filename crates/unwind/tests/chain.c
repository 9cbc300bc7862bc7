/* A deep call chain built at -O2 -fomit-frame-pointer, stopped in its leaf, for
 * the reference-unwinder test. Mode "stop": the child asks to be traced and
 * raises SIGSTOP, so the leaf is inside libc. Mode "spin": the leaf loops
 * forever (a noreturn call: its return address is past level3's end) until the
 * test attaches. level2_frame uses alloca, so gcc gives it an rbp frame. */
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

__attribute__((noinline)) int level3(int n, int stop) {
    volatile char buf[64];
    buf[n & 63] = (char)n;
    if (!stop)
        leaf_spin();
    return leaf_stop() + buf[(n + 1) & 63];
}

__attribute__((noinline)) int level2_frame(int n, int stop) {
    char *p = alloca((unsigned)n + 16);
    memset(p, n, (unsigned)n + 16);
    int r = level3(n, stop);
    return r + p[n];
}

__attribute__((noinline)) int level1(int n, int stop) {
    int r = level2_frame(n + 1, stop);
    sink += r;
    return r * 3;
}

int main(int argc, char **argv) {
    int stop = argc > 1 && argv[1][0] == 's' && argv[1][1] == 't';
    if (stop)
        ptrace(PTRACE_TRACEME, 0, 0, 0);
    int r = level1(argc, stop);
    printf("%d\n", r);
    return 0;
}
