// Shared library for the reliability workload's `lib` mode: the test corrupts this
// file on disk while a process has it mapped and runs in it.
// Built with gcc -O1 -g -fno-omit-frame-pointer -shared -fPIC.
#include <time.h>

static volatile unsigned long sink;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void kestrel_rel_lib_spin(double seconds)
{
	double end = now_s() + seconds;
	while (now_s() < end)
		for (int i = 0; i < 1000; i++)
			sink += i;
}
