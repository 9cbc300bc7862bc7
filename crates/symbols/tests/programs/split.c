/* Test program for split debug files: static functions that only a separate
 * debug file names, placed right after an exported one (-rdynamic puts it in
 * .dynsym), so a nearest-symbol guess would borrow the exported name.
 * VARIANT changes the code, and so the build ID. */
#include <stdio.h>
#include <unistd.h>

#ifndef VARIANT
#define VARIANT 1
#endif

__attribute__((noinline)) int kestrel_split_exported(volatile int *p)
{
    return *p + VARIANT;
}

static __attribute__((noinline)) int kestrel_split_static_alpha(volatile int *p)
{
    int r = 0;
    for (int i = 0; i < *p; i++)
        r += i * VARIANT;
    return r;
}

static __attribute__((noinline)) int kestrel_split_static_beta(volatile int *p)
{
    return kestrel_split_static_alpha(p) * 3 + kestrel_split_exported(p);
}

int main(void)
{
    volatile int v = 5;
    printf("main %p\n", (void *)main);
    printf("result %d\n", kestrel_split_static_beta(&v));
    fflush(stdout);
    /* Block until the test closes our stdin. */
    char buf[16];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
