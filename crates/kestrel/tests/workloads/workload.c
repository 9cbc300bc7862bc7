// Test workload for Kestrel's end-to-end tests. Built by the tests with
// gcc -O1 -g -fno-omit-frame-pointer -pthread. Every blocking or syscall-heavy
// function issues its syscall inline: Debian's libc has no frame pointers, and a
// frame-pointer unwinder would lose the caller of a libc leaf.
//
// Modes (argv[1]):
//   ratio SECONDS        one thread: kestrel_burn_three 3 parts, kestrel_burn_one 1 part
//   syscalls SECONDS     one thread: kestrel_syscall_storm (getppid in a loop)
//   pinned SECONDS       one CPU-bound thread pinned to each online CPU (kestrel_pinned_spin);
//                        prints "cpu N SECONDS" with the CPU time each thread got
//   offcpu               kestrel_sleep_fn sleeps 100 ms x 20; kestrel_pipe_read_fn blocks
//                        on a pipe fed every 50 ms (x 40); both at once
//   migrate              a thread blocks in kestrel_migrating_wait on CPU 0, is re-pinned
//                        to CPU 1 while blocked, and woken after 300 ms
//   pingpong SECONDS     two threads ping-pong a byte over pipes (kestrel_pingpong_wait), then
//                        the process idles as long
//   jit SECONDS          runs generated code named kestrel_jit_hot_loop in /tmp/perf-PID.map
//   many_sleeps COUNT    kestrel_short_sleeps: COUNT sleeps of 1 ms
//   threads COUNT        COUNT threads that each block 200 ms in kestrel_thread_wait, then exit
// It prints "ready <pid>", waits for a line on stdin, then runs; for migrate it
// also prints "migrated_tid <tid>".
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long raw_syscall3(long n, long a, long b, long c)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static volatile unsigned long sink;

static double thread_cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The ratio workload burns by the thread's own CPU clock, not by iteration
 * count or wall time: an iteration's cost depends on code placement and the
 * CPU model (a fixed 6:1 count once gave 3:1 on one host and 6:1 on another),
 * and wall time includes preemption. The clock is read every 20,000
 * iterations (tens of microseconds), so reading it costs both alike. */
static void burn_cpu_for(double cpu_s)
{
	double end = thread_cpu_s() + cpu_s;
	while (thread_cpu_s() < end)
		for (long i = 0; i < 20000; i++)
			sink += i * 3;
}

__attribute__((noinline)) void kestrel_burn_three(double slice_s)
{
	burn_cpu_for(3 * slice_s);
}

__attribute__((noinline)) void kestrel_burn_one(double slice_s)
{
	burn_cpu_for(slice_s);
}

__attribute__((noinline)) void kestrel_syscall_storm(double seconds)
{
	double end = now_s() + seconds;
	while (now_s() < end)
		for (int i = 0; i < 1000; i++)
			sink += raw_syscall3(SYS_getppid, 0, 0, 0);
}

__attribute__((noinline)) void kestrel_pinned_spin(double seconds)
{
	double end = now_s() + seconds;
	while (now_s() < end)
		for (int i = 0; i < 1000; i++)
			sink += i;
}

__attribute__((noinline)) void kestrel_sleep_fn(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
}

__attribute__((noinline)) long kestrel_pipe_read_fn(int fd, char *buf)
{
	return raw_syscall3(SYS_read, fd, (long)buf, 1);
}

__attribute__((noinline)) long kestrel_migrating_wait(int fd, char *buf)
{
	return raw_syscall3(SYS_read, fd, (long)buf, 1);
}

__attribute__((noinline)) void kestrel_feed_pause(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	raw_syscall3(SYS_nanosleep, (long)&ts, 0, 0);
}

__attribute__((noinline)) void kestrel_short_sleeps(long count)
{
	for (long i = 0; i < count; i++)
		kestrel_sleep_fn(1);
}

static void pin_self(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

struct pinned_arg {
	int cpu;
	double seconds;
	double cpu_seconds;
};

static void *pinned_thread(void *p)
{
	struct pinned_arg *a = p;
	struct timespec ts;

	pin_self(a->cpu);
	kestrel_pinned_spin(a->seconds);
	/* What the thread really got: on a busy machine it is less than wall time. */
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	a->cpu_seconds = ts.tv_sec + ts.tv_nsec / 1e9;
	return NULL;
}

static void *sleeper_thread(void *p)
{
	(void)p;
	for (int i = 0; i < 20; i++)
		kestrel_sleep_fn(100);
	return NULL;
}

static int pipe_fds[2];

static void *pipe_reader_thread(void *p)
{
	char c;
	(void)p;
	for (int i = 0; i < 40; i++)
		kestrel_pipe_read_fn(pipe_fds[0], &c);
	return NULL;
}

static volatile int migrating_tid;
static double migrating_wait_s;

static void *migrating_thread(void *p)
{
	char c;
	double start;
	(void)p;
	pin_self(0);
	migrating_tid = (int)syscall(SYS_gettid);
	start = now_s();
	kestrel_migrating_wait(pipe_fds[0], &c);
	/* The wait as the thread saw it: the reference the profiler must match. */
	migrating_wait_s = now_s() - start;
	return NULL;
}

static int ping[2], pong[2];
static volatile int pingpong_stop;

__attribute__((noinline)) void kestrel_pingpong_wait(int fd, char *c)
{
	raw_syscall3(SYS_read, fd, (long)c, 1);
}

static void *pong_thread(void *p)
{
	char c;
	(void)p;
	while (!pingpong_stop) {
		kestrel_pingpong_wait(ping[0], &c);
		if (write(pong[1], &c, 1) != 1)
			break;
	}
	return NULL;
}

static void *short_lived_thread(void *p)
{
	(void)p;
	kestrel_sleep_fn(200);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "ratio";
	double arg = argc > 2 ? atof(argv[2]) : 5.0;

	char go[16];

	printf("ready %d\n", getpid());
	fflush(stdout);
	/* Start only when told: the profiler attaches first, so no wait is missed. */
	if (!fgets(go, sizeof(go), stdin))
		return 3;
	if (!strcmp(mode, "ratio")) {
		/* Each round burns 30 ms of thread CPU time in kestrel_burn_three and
		 * 10 ms in kestrel_burn_one; the thread also measures what each really
		 * got, the reference for the profile. */
		double end = now_s() + arg, three_s = 0, one_s = 0, t0, t1, t2;
		while (now_s() < end) {
			t0 = thread_cpu_s();
			kestrel_burn_three(0.010);
			t1 = thread_cpu_s();
			kestrel_burn_one(0.010);
			t2 = thread_cpu_s();
			three_s += t1 - t0;
			one_s += t2 - t1;
		}
		printf("cpu_ratio %.4f\n", three_s / one_s);
		fflush(stdout);
	} else if (!strcmp(mode, "syscalls")) {
		kestrel_syscall_storm(arg);
	} else if (!strcmp(mode, "pinned")) {
		int n = (int)sysconf(_SC_NPROCESSORS_ONLN);
		pthread_t t[256];
		struct pinned_arg a[256];
		if (n > 256)
			n = 256;
		for (int i = 0; i < n; i++) {
			a[i].cpu = i;
			a[i].seconds = arg;
			pthread_create(&t[i], NULL, pinned_thread, &a[i]);
		}
		for (int i = 0; i < n; i++) {
			pthread_join(t[i], NULL);
			printf("cpu %d %.6f\n", a[i].cpu, a[i].cpu_seconds);
		}
	} else if (!strcmp(mode, "offcpu")) {
		pthread_t s, r;
		if (pipe(pipe_fds))
			return 1;
		pthread_create(&s, NULL, sleeper_thread, NULL);
		pthread_create(&r, NULL, pipe_reader_thread, NULL);
		for (int i = 0; i < 40; i++) {
			kestrel_feed_pause(50);
			if (write(pipe_fds[1], "x", 1) != 1)
				return 1;
		}
		pthread_join(s, NULL);
		pthread_join(r, NULL);
	} else if (!strcmp(mode, "migrate")) {
		pthread_t m;
		cpu_set_t set;
		if (pipe(pipe_fds))
			return 1;
		pthread_create(&m, NULL, migrating_thread, NULL);
		while (!migrating_tid)
			kestrel_sleep_fn(1);
		kestrel_sleep_fn(100);
		CPU_ZERO(&set);
		CPU_SET(1, &set);
		sched_setaffinity(migrating_tid, sizeof(set), &set);
		printf("migrated_tid %d\n", migrating_tid);
		fflush(stdout);
		kestrel_sleep_fn(200);
		if (write(pipe_fds[1], "x", 1) != 1)
			return 1;
		pthread_join(m, NULL);
	} else if (!strcmp(mode, "pingpong")) {
		/* A burst of context switches for `arg` seconds, then as long idle. */
		pthread_t t;
		char c = 'x';
		double end;
		if (pipe(ping) || pipe(pong))
			return 1;
		pthread_create(&t, NULL, pong_thread, NULL);
		end = now_s() + arg;
		while (now_s() < end) {
			if (write(ping[1], &c, 1) != 1)
				return 1;
			kestrel_pingpong_wait(pong[0], &c);
		}
		pingpong_stop = 1;
		if (write(ping[1], &c, 1) != 1)
			return 1;
		pthread_join(t, NULL);
		kestrel_feed_pause((long)(arg * 1000));
	} else if (!strcmp(mode, "jit")) {
		/* Generated code, as a JIT would make: a counted loop in an anonymous
		 * executable mapping, named only by /tmp/perf-PID.map. */
		static const unsigned char code[] = {
			0xb8, 0x00, 0x00, 0x00, 0x04, /* mov eax, 0x04000000 */
			0xff, 0xc8,                   /* dec eax */
			0x75, 0xfc,                   /* jnz dec */
			0xc3,                         /* ret */
		};
		char path[64];
		FILE *map;
		double end = now_s() + arg;
		void (*jitted)(void);
		unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (page == MAP_FAILED)
			return 1;
		memcpy(page, code, sizeof(code));
		snprintf(path, sizeof(path), "/tmp/perf-%d.map", getpid());
		map = fopen(path, "w");
		if (!map)
			return 1;
		fprintf(map, "%lx %zx kestrel_jit_hot_loop\n", (unsigned long)page, sizeof(code));
		fclose(map);
		jitted = (void (*)(void))page;
		while (now_s() < end)
			jitted();
		unlink(path);
	} else if (!strcmp(mode, "many_sleeps")) {
		kestrel_short_sleeps((long)arg);
	} else if (!strcmp(mode, "threads")) {
		int n = (int)arg;
		for (int i = 0; i < n; i++) {
			pthread_t t;
			pthread_create(&t, NULL, short_lived_thread, NULL);
			pthread_detach(t);
		}
		kestrel_sleep_fn(500);
	} else {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	return 0;
}
