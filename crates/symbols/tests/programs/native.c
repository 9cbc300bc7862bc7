/* Test program for kestrel-symbols: a known function with an inlined helper.
 * Lines tagged LINE:<name> are located by the tests, so edits cannot silently
 * break the expected line numbers. */
#include <stdio.h>
#include <unistd.h>

static inline __attribute__((always_inline)) int kestrel_inlined_helper(volatile int *p)
{
    return *p * 7 + 3; /* LINE:helper_body */
}

__attribute__((noinline)) int kestrel_test_marker_fn(volatile int *p)
{
    int r = kestrel_inlined_helper(p); /* LINE:marker_call */
    printf("ret %p\n", __builtin_return_address(0));
    return r + 2;
}

int main(void)
{
    volatile int v = 5;
    printf("marker %p\n", (void *)kestrel_test_marker_fn);
    int r = kestrel_test_marker_fn(&v); /* LINE:main_call */
    printf("result %d\n", r);
    fflush(stdout);
    /* Block until the test closes our stdin. */
    char buf[16];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
