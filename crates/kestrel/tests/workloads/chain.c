/* The unwinder's golden program: a five-deep call chain main -> kst_a -> kst_b
 * -> kst_c -> kst_d -> kst_e, where kst_e burns the CPU. Built by the test at
 * -O2 -fomit-frame-pointer: no function keeps a frame pointer, so only unwind
 * tables can walk from kst_e to main. Each caller uses the callee's result
 * after the call, so no call is a tail call. Prints "ready" and runs for
 * argv[1] seconds; with a second argument "nap", kst_e sleeps 20 ms instead
 * of burning (for off-CPU stacks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static volatile unsigned long sink;
static int napping;
__attribute__((noinline)) unsigned long kst_e(unsigned long n) {
	if (napping) {
		usleep(20000);
		return sink;
	}
	unsigned long x = 1;
	for (unsigned long i = 0; i < n; i++)
		x = x * 6364136223846793005UL + (i ^ (x >> 7));
	sink = x;
	return x;
}
__attribute__((noinline)) unsigned long kst_d(unsigned long n) { unsigned long r = kst_e(n); sink += r; return r + 1; }
__attribute__((noinline)) unsigned long kst_c(unsigned long n) { unsigned long r = kst_d(n); sink += r; return r + 2; }
__attribute__((noinline)) unsigned long kst_b(unsigned long n) { unsigned long r = kst_c(n); sink += r; return r + 3; }
__attribute__((noinline)) unsigned long kst_a(unsigned long n) { unsigned long r = kst_b(n); sink += r; return r + 4; }
int main(int argc, char **argv) {
	double seconds = argc > 1 ? atof(argv[1]) : 5;
	napping = argc > 2 && strcmp(argv[2], "nap") == 0;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	printf("ready\n"); fflush(stdout);
	do {
		kst_a(20000000);
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
	return (int)(sink & 1);
}
