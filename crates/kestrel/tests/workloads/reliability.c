// Workload for Kestrel's reliability tests (tests/reliability.rs). Built by the
// tests with gcc -O1 -g -fno-omit-frame-pointer -pthread -ldl.
//
// Modes (argv[1]):
//   spin SECONDS THREADS   THREADS threads burn CPU in kestrel_rel_spin
//   jit SECONDS            generated code runs from an anonymous executable page;
//                          /tmp/perf-PID.map names it kestrel_rel_jit_code among
//                          malformed lines (garbage, bad hex, zero sizes, no name,
//                          overflowing ranges, invalid UTF-8, a huge line)
//   exec SECONDS           kestrel_rel_before_exec burns SECONDS, then the process
//                          execs this binary as `after_exec SECONDS`
//   after_exec SECONDS     kestrel_rel_after_exec burns SECONDS (no handshake)
//   exit_early SECONDS     kestrel_rel_short_lived burns SECONDS, then the process exits
//   lib PATH SECONDS       dlopen(PATH) and burn SECONDS in its kestrel_rel_lib_spin;
//                          prints "in_lib" once it runs there, so the test can
//                          corrupt the library file while it is mapped
// Every mode but after_exec prints "ready <pid>" and waits for a line on stdin.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static volatile unsigned long sink;

#define BURN(seconds)                                                  \
	do {                                                           \
		double end_ = now_s() + (seconds);                     \
		while (now_s() < end_)                                 \
			for (int i_ = 0; i_ < 1000; i_++)              \
				sink += i_;                            \
	} while (0)

__attribute__((noinline)) void kestrel_rel_spin(double seconds) { BURN(seconds); }
__attribute__((noinline)) void kestrel_rel_before_exec(double seconds) { BURN(seconds); }
__attribute__((noinline)) void kestrel_rel_after_exec(double seconds) { BURN(seconds); }
__attribute__((noinline)) void kestrel_rel_short_lived(double seconds) { BURN(seconds); }

static double spin_seconds;

static void *spin_thread(void *arg)
{
	(void)arg;
	kestrel_rel_spin(spin_seconds);
	return NULL;
}

// mov rax, rdi; 1: dec rax; jnz 1b; ret
static const unsigned char countdown[] = { 0x48, 0x89, 0xf8, 0x48, 0xff, 0xc8, 0x75, 0xfb, 0xc3 };

__attribute__((noinline)) void kestrel_rel_jit_caller(void *code, double seconds)
{
	long (*fn)(long) = (long (*)(long))code;
	double end = now_s() + seconds;
	while (now_s() < end)
		sink += fn(100000);
}

static int jit(double seconds)
{
	long page = sysconf(_SC_PAGESIZE);
	unsigned char *code = mmap(NULL, page, PROT_READ | PROT_WRITE | PROT_EXEC,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (code == MAP_FAILED)
		return 1;
	memcpy(code, countdown, sizeof(countdown));
	char path[64];
	snprintf(path, sizeof(path), "/tmp/perf-%d.map", getpid());
	FILE *map = fopen(path, "w");
	if (!map)
		return 1;
	uintptr_t at = (uintptr_t)code;
	fprintf(map, "this is not a perf map line\n");
	fprintf(map, "zz12 10 bad_start\n");
	fprintf(map, "%lx 0 zero_size\n", (unsigned long)at);
	fprintf(map, "%lx 10\n", (unsigned long)at);
	fprintf(map, "ffffffffffffff00 1000 wraps_around\n");
	fprintf(map, "%lx 10 bad_\xff\xfe_utf8\n", (unsigned long)at + 0x100);
	fprintf(map, "12345678901234567890 10 too_many_digits\n");
	fputc('#', map);
	for (int i = 0; i < 100000; i++)
		fputc('x', map);
	fputc('\n', map);
	fprintf(map, "%lx %lx kestrel_rel_jit_code\n", (unsigned long)at, (unsigned long)page);
	fprintf(map, "\n\n   \n");
	fclose(map);
	kestrel_rel_jit_caller(code, seconds);
	unlink(path);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	const char *mode = argv[1];
	if (!strcmp(mode, "after_exec")) {
		kestrel_rel_after_exec(atof(argv[2]));
		return 0;
	}
	void *lib = NULL;
	void (*lib_spin)(double) = NULL;
	if (!strcmp(mode, "lib")) {
		lib = dlopen(argv[2], RTLD_NOW);
		if (!lib) {
			fprintf(stderr, "dlopen: %s\n", dlerror());
			return 1;
		}
		lib_spin = (void (*)(double))dlsym(lib, "kestrel_rel_lib_spin");
		if (!lib_spin)
			return 1;
	}
	printf("ready %d\n", getpid());
	fflush(stdout);
	char go[16];
	if (!fgets(go, sizeof(go), stdin))
		return 1;
	double seconds = atof(argv[2]);
	if (!strcmp(mode, "spin")) {
		int n = argc > 3 ? atoi(argv[3]) : 1;
		pthread_t threads[64];
		spin_seconds = seconds;
		if (n < 1 || n > 64)
			return 2;
		for (int i = 0; i < n; i++)
			pthread_create(&threads[i], NULL, spin_thread, NULL);
		for (int i = 0; i < n; i++)
			pthread_join(threads[i], NULL);
	} else if (!strcmp(mode, "jit")) {
		return jit(seconds);
	} else if (!strcmp(mode, "exec")) {
		kestrel_rel_before_exec(seconds);
		char *args[] = { argv[0], "after_exec", argv[2], NULL };
		execv("/proc/self/exe", args);
		return 1;
	} else if (!strcmp(mode, "exit_early")) {
		kestrel_rel_short_lived(seconds);
	} else if (!strcmp(mode, "lib")) {
		printf("in_lib\n");
		fflush(stdout);
		lib_spin(atof(argv[3]));
	} else {
		return 2;
	}
	return 0;
}
