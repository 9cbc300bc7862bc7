/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Records shared between Kestrel's BPF programs and user space.
 *
 * This header is the one source of the C/Rust boundary. libbpf-cargo generates
 * a Rust type for each struct and enum below into the skeleton's `types` module
 * (every one is named by a variable of the object, see the end of this file),
 * and `kestrel-probes` reads records, counters and `.rodata` through those
 * generated types only. The layouts are fixed-size and naturally aligned; the
 * sizes `kestrel-sizing` plans with (RECORD_HEADER_BYTES, WAKE_RECORD_BYTES,
 * RODATA_BYTES, NUM_COUNTERS...) are asserted below and, against the generated
 * types, by `kestrel-probes`' unit tests.
 */
#ifndef KESTREL_H
#define KESTREL_H

/* The kernel's default perf_event_max_stack; the per-record frame buffer holds one
 * kernel and one user stack of this depth. */
#define MAX_STACK_DEPTH 127

enum kestrel_record_kind {
	RECORD_ON_CPU = 1,
	RECORD_OFF_CPU_BLOCK = 2,
	RECORD_OFF_CPU_WAKE = 3,
};

enum kestrel_record_flags {
	FLAG_KERNEL_STACK_ERROR = 1 << 0,
	FLAG_USER_STACK_ERROR = 1 << 1,
	FLAG_KERNEL_THREAD = 1 << 2,
};

/* Every record starts with kind, flags, cpu and tid at the same offsets. */
struct kestrel_sample_header {
	__u8 kind;
	__u8 flags;
	__u16 cpu;
	__u32 tid;
	__u32 pid;
	__u8 kernel_frames;
	__u8 user_frames;
	/* Low 16 bits of the task's self_exec_id, which every execve increments and
	 * threads and children inherit: with pid, it names the process image, so
	 * samples taken before and after an exec are symbolized with their own
	 * mappings. */
	__u16 exec_seq;
	__u64 timestamp_ns;
	/* RECORD_ON_CPU: 1 (one period). RECORD_OFF_CPU_BLOCK: the block start time,
	 * which the matching wake record repeats as timestamp_ns - delta_ns. */
	__u64 value;
	char comm[16];
};

/* A sample as built in the per-CPU scratch slot: the header, then kernel frames,
 * then user frames, packed; only header + frames used is sent. */
struct kestrel_sample {
	struct kestrel_sample_header header;
	__u64 frames[2 * MAX_STACK_DEPTH];
};

struct kestrel_wake {
	__u8 kind;
	__u8 flags;
	__u16 cpu;
	__u32 tid;
	__u32 pid;
	__u32 reserved;
	__u64 timestamp_ns;
	__u64 delta_ns;
};

enum kestrel_counter {
	COUNTER_ON_CPU_SEEN = 0,      /* perf event fired for a task that passed the filters */
	COUNTER_ON_CPU_SENT = 1,      /* on-CPU record written to the ring buffer */
	COUNTER_IDLE_SKIPPED = 2,     /* perf event fired on an idle CPU (pid 0) */
	COUNTER_RINGBUF_LOST = 3,     /* ring buffer full: record dropped */
	COUNTER_KERNEL_STACK_ERR = 4, /* bpf_get_stack failed for the kernel stack */
	COUNTER_USER_STACK_ERR = 5,   /* bpf_get_stack failed for the user stack */
	COUNTER_OFF_CPU_SWITCHES = 6, /* voluntary switch-outs of tasks that passed the filters */
	COUNTER_OFF_CPU_SAMPLED = 7,  /* of those, chosen by the probability and recorded */
	COUNTER_OFF_CPU_WAKES = 8,    /* wake records sent */
	COUNTER_OFF_CPU_SHORT = 9,    /* waits shorter than the minimum duration */
	COUNTER_OFF_CPU_STORE_FULL = 10, /* in-flight store refused an entry */
	COUNTER_OFF_CPU_IN_FLIGHT = 11,  /* entries currently in flight (gauge) */
	COUNTER_OFF_CPU_EXIT_CLEANED = 12, /* in-flight entries removed at task exit */
	COUNTER_SCRATCH_MISSING = 13, /* per-CPU scratch lookup failed (never expected) */
	COUNTER_OFF_CPU_MISSED_WAKE = 14, /* a recorded wait whose switch-in the program did
					   * not see: found still open at the next switch-out */
	KESTREL_NUM_COUNTERS = 16,
};

/* Load-time configuration in .rodata; the verifier treats it as constant, so
 * disabled features are dead code and their maps need not exist. Padded to 64 B
 * (RODATA_BYTES) so the sizing plan knows the .rodata map's size. */
struct kestrel_config {
	__u32 self_tgid;         /* Kestrel's own pid, excluded unless profile_self */
	__u32 profile_self;
	__u32 filter_pids;       /* 1: only pids in pid_filter */
	__u32 stack_depth;       /* frames per stack, 1..=MAX_STACK_DEPTH */
	__u32 off_cpu_enabled;
	__u32 off_cpu_threshold; /* sample a switch when prandom_u32 <= threshold */
	__u64 off_cpu_min_ns;    /* waits shorter than this are not reported */
	__u32 off_cpu_task_storage; /* 1: in-flight state in task storage, 0: hash */
	__u32 reserved[7];
};

/*
 * One variable of each boundary type that no map or global names otherwise, in
 * a section libbpf skips ("skipping unrecognized data section": not .data,
 * .rodata or .bss, so no map is created and nothing reaches the kernel but
 * BTF). Clang emits BTF only for types that variables, maps or function
 * signatures use; these make it describe the wake record and the enums too, so
 * libbpf-cargo generates them. Only kestrel.bpf.c includes this header.
 */
#define KESTREL_ABI __attribute__((section(".kestrel_abi"), used))
KESTREL_ABI struct kestrel_wake kestrel_abi_wake = {};
KESTREL_ABI enum kestrel_record_kind kestrel_abi_record_kind = RECORD_ON_CPU;
KESTREL_ABI enum kestrel_record_flags kestrel_abi_record_flags = FLAG_KERNEL_STACK_ERROR;
KESTREL_ABI enum kestrel_counter kestrel_abi_counter = COUNTER_ON_CPU_SEEN;

/* kestrel-sizing plans with these sizes (its own constants, tested against the
 * generated types by kestrel-probes). */
_Static_assert(sizeof(struct kestrel_sample_header) == 48, "RECORD_HEADER_BYTES");
_Static_assert(sizeof(struct kestrel_wake) == 32, "WAKE_RECORD_BYTES");
_Static_assert(sizeof(struct kestrel_config) == 64, "RODATA_BYTES");
_Static_assert(sizeof(struct kestrel_sample) == 48 + 2 * 127 * 8, "RECORD_MAX_BYTES");
_Static_assert(KESTREL_NUM_COUNTERS == 16, "NUM_COUNTERS");
/* User space reads KESTREL_NUM_COUNTERS slots: the highest counter must be below it. */
_Static_assert(COUNTER_OFF_CPU_MISSED_WAKE < KESTREL_NUM_COUNTERS, "counter past the map");

#endif /* KESTREL_H */
