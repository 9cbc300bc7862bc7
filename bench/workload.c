/* Fixed CPU-bound workload for bench/peers.py.
 *
 * One thread per online CPU burns for DURATION seconds in a known chain of
 * non-inlined functions (burn_thread -> burn_round -> burn_mix / burn_fold),
 * counting rounds so throughput is measurable. Compiled with
 * -fno-omit-frame-pointer so every profiler can unwind it by frame pointers.
 *
 * It starts burning when a line arrives on stdin (or stdin closes), so the
 * bench can create the process before it starts a profiler and every
 * profiler sees the same, already-running process from its first sample
 * (bpftrace 0.17 leaves the user stacks of processes started after it
 * unsymbolized; see docs/benchmarks.md).
 *
 * After the burn it prints one JSON line with the totals and then waits,
 * every thread blocked (no CPU), until SIGTERM: profilers that symbolize at
 * exit still find the process, its mappings and its threads alive, so all of
 * them get the same chance to name its functions. (bpftrace keys a user
 * stack by the sampled thread's id and reads /proc/TID/maps when it prints,
 * so a thread that has exited by then leaves only addresses.)
 *
 * usage: kbench-burn DURATION_S [THREADS]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define THREAD_NAME "kbench-burn"

static atomic_int stop_flag;
static atomic_long threads_done;

struct worker {
    pthread_t thread;
    uint64_t rounds;
    uint64_t checksum;
};

/* The leaves return through a volatile stack slot: GCC 12 gives a leaf that
 * needs no stack no frame at all, even with -fno-omit-frame-pointer
 * -mno-omit-leaf-frame-pointer, and then every frame-pointer unwinder (perf,
 * bpftrace, Kestrel alike) loses the leaf's caller. A stack slot forces the
 * frame, so all profilers see burn_thread -> burn_round -> leaf. */

/* xorshift-multiply mixing: pure ALU, no syscalls. */
NOINLINE uint64_t burn_mix(uint64_t x)
{
    volatile uint64_t result_slot;
    for (int i = 0; i < 2000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x *= 0x9e3779b97f4a7c15ULL;
    }
    result_slot = x;
    return result_slot;
}

/* A second leaf so stacks are not all identical. */
NOINLINE uint64_t burn_fold(uint64_t x)
{
    volatile uint64_t result_slot;
    uint64_t acc = 0;
    for (int i = 0; i < 1000; i++) {
        acc += (x >> (i & 63)) | (acc << 1);
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    }
    result_slot = acc ^ x;
    return result_slot;
}

NOINLINE uint64_t burn_round(uint64_t seed)
{
    uint64_t a = burn_mix(seed);
    uint64_t b = burn_fold(a);
    /* Keep the compiler from folding calls across rounds. */
    __asm__ volatile("" : "+r"(b));
    return a ^ b;
}

NOINLINE void *burn_thread(void *arg)
{
    struct worker *w = arg;
    uint64_t seed = (uint64_t)(uintptr_t)w | 1;
    pthread_setname_np(pthread_self(), THREAD_NAME);
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        seed = burn_round(seed);
        w->rounds++;
    }
    w->checksum = seed;
    atomic_fetch_add(&threads_done, 1);
    /* Park instead of exiting: see the header comment. */
    for (;;)
        pause();
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_term(int sig) { (void)sig; _exit(0); }

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DURATION_S [THREADS]\n", argv[0]);
        return 2;
    }
    double duration = atof(argv[1]);
    long threads = argc > 2 ? atol(argv[2]) : sysconf(_SC_NPROCESSORS_ONLN);
    if (duration <= 0 || threads <= 0) {
        fprintf(stderr, "DURATION_S and THREADS must be positive\n");
        return 2;
    }
    signal(SIGTERM, on_term);

    /* Wait for the go line; EOF counts as go too. */
    char go[16];
    if (!fgets(go, sizeof go, stdin) && ferror(stdin)) {
        perror("reading the go line from stdin");
        return 1;
    }

    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    if (!workers) {
        perror("calloc");
        return 1;
    }
    double start = now_s();
    for (long i = 0; i < threads; i++) {
        if (pthread_create(&workers[i].thread, NULL, burn_thread, &workers[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    struct timespec nap = {.tv_sec = (time_t)duration,
                           .tv_nsec = (long)((duration - (double)(time_t)duration) * 1e9)};
    while (nanosleep(&nap, &nap) != 0) {
    }
    atomic_store(&stop_flag, 1);
    struct timespec tick = {.tv_sec = 0, .tv_nsec = 1000000};
    while (atomic_load(&threads_done) < threads)
        nanosleep(&tick, NULL);
    uint64_t rounds = 0, checksum = 0;
    for (long i = 0; i < threads; i++) {
        rounds += workers[i].rounds;
        checksum ^= workers[i].checksum;
    }
    double elapsed = now_s() - start;
    printf("{\"threads\": %ld, \"rounds\": %llu, \"elapsed_s\": %.6f, \"rounds_per_s\": %.3f, "
           "\"checksum\": %llu}\n",
           threads, (unsigned long long)rounds, elapsed, (double)rounds / elapsed,
           (unsigned long long)checksum);
    fflush(stdout);
    /* Stay alive (blocked) until the bench sends SIGTERM. */
    for (;;)
        pause();
}
