// Workload for tests/store_restart.rs: after a line on stdin, one thread spins in
// a one-instruction loop forever, so every on-CPU sample has the same stack and
// two recordings look up the same frames. Prints "ready <pid>" first. Built by
// the tests with gcc -O1 -g -fno-omit-frame-pointer; the test kills it.
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) void kestrel_fixed_spin(void)
{
	for (;;)
		__asm__ volatile("");
}

// A few callers, so that a stack holds several frames of this binary; the empty
// asm after each call keeps it from becoming a tail call.
#define LEVEL(name, callee)                                                    \
	__attribute__((noinline)) void name(void)                              \
	{                                                                      \
		callee();                                                      \
		__asm__ volatile("");                                          \
	}
LEVEL(kestrel_fixed_level1, kestrel_fixed_spin)
LEVEL(kestrel_fixed_level2, kestrel_fixed_level1)
LEVEL(kestrel_fixed_level3, kestrel_fixed_level2)
LEVEL(kestrel_fixed_level4, kestrel_fixed_level3)
LEVEL(kestrel_fixed_level5, kestrel_fixed_level4)
LEVEL(kestrel_fixed_level6, kestrel_fixed_level5)

int main(void)
{
	char line[16];
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	if (read(0, line, sizeof line) <= 0)
		return 1;
	kestrel_fixed_level6();
	return 0;
}
