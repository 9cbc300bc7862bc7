/*
 * Guest workload for Kestrel's VM tests.
 *
 * Keeps CPUs busy with one thread pinned to each, and blocks each thread now
 * and then, so that the on-CPU sampler sees every CPU and the off-CPU probe
 * sees voluntary switches. Runs until killed.
 *
 *   kvt-workload            one thread on every CPU this process may run on
 *   kvt-workload 2 3        one thread on CPU 2 and one on CPU 3
 *
 * Built on the host with gcc -static -O1 -fno-omit-frame-pointer so that the
 * guest needs no libc and the frame-pointer unwinder can walk burn() -> worker().
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Busy for this long, then blocked for BLOCK_US: mostly on-CPU, with a
 * steady stream of voluntary context switches. */
#define BUSY_NS (20 * 1000 * 1000L)
#define BLOCK_US 2000

static volatile unsigned long sink;

static long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

__attribute__((noinline)) static void burn(long ns)
{
	long until = now_ns() + ns;
	unsigned long x = sink;
	while (now_ns() < until) {
		for (int i = 0; i < 1000; i++)
			x = x * 6364136223846793005UL + 1442695040888963407UL;
	}
	sink = x;
}

__attribute__((noinline)) static void block_a_little(int fds[2])
{
	/* A pipe round trip and a sleep: two kinds of voluntary switch. */
	char byte = 1;
	if (write(fds[1], &byte, 1) != 1 || read(fds[0], &byte, 1) != 1)
		perror("kvt-workload: pipe");
	usleep(BLOCK_US);
}

static void *worker(void *arg)
{
	int cpu = (int)(long)arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		fprintf(stderr, "kvt-workload: cannot pin a thread to CPU %d; it runs unpinned\n", cpu);
	int fds[2];
	if (pipe(fds) != 0) {
		perror("kvt-workload: pipe");
		return NULL;
	}
	for (;;) {
		burn(BUSY_NS);
		block_a_little(fds);
	}
	return NULL;
}

static int start(int cpu)
{
	pthread_t thread;
	int err = pthread_create(&thread, NULL, worker, (void *)(long)cpu);
	if (err != 0) {
		fprintf(stderr, "kvt-workload: pthread_create for CPU %d: %s\n", cpu, strerror(err));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	int started = 0;
	if (argc > 1) {
		for (int i = 1; i < argc; i++)
			started += start(atoi(argv[i])) == 0;
	} else {
		cpu_set_t allowed;
		if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
			perror("kvt-workload: sched_getaffinity");
			return 1;
		}
		for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
			if (CPU_ISSET(cpu, &allowed))
				started += start(cpu) == 0;
	}
	if (started == 0)
		return 1;
	fprintf(stderr, "kvt-workload: %d threads\n", started);
	for (;;)
		pause();
}
