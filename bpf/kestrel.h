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
	/* The user stack was walked by the table unwinder (not bpf_get_stack). */
	FLAG_USER_UNWOUND = 1 << 3,
	/* Bits 4..6: why the unwound user stack ended (enum kestrel_unwind_end). */
	FLAG_UNWIND_END_MASK = 7 << 4,
};
#define FLAG_UNWIND_END_SHIFT 4

/* Why an unwound user stack ended (in the record's flags, and counted). */
enum kestrel_unwind_end {
	UNWIND_END_OUTERMOST = 1,  /* end-of-stack rule, or frame pointer 0 */
	UNWIND_END_NO_TABLE = 2,   /* frame-pointer fallback (file without table) failed */
	UNWIND_END_NO_MAPPING = 3, /* pc in no known mapping, frame pointers failed */
	UNWIND_END_READ_FAULT = 4, /* bpf_probe_read_user failed */
	UNWIND_END_DEPTH = 5,      /* stack_depth frames taken */
	UNWIND_END_STUCK = 6,      /* unsupported rule, or the stack did not move up */
};

/* Executable mappings per process in proc_mappings (sorted by start). */
#define MAX_PROC_MAPPINGS 64
/* ceil(log2(MAX_PROC_MAPPINGS)) + 1 binary-search steps. */
#define MAPPING_SEARCH_STEPS 7
/* A 64 KiB page has at most 2^16 rows: 17 binary-search steps
 * (kestrel_unwind::MAX_SEARCH_STEPS). */
#define ROW_SEARCH_STEPS 17

/* unwind_rows and unwind_pages hold u32s in chunks of 16: an array's kernel
 * element is rounded up to 8 bytes, so one u32 per element would cost twice
 * its size. A table's rows and pages start at a multiple of 16. */
#define UNWIND_CHUNK 16
struct kestrel_u32_chunk {
	__u32 v[UNWIND_CHUNK];
};

/* One executable mapping: pc - bias is the file offset (bias = start - pgoff). */
struct kestrel_mapping {
	__u64 start;
	__u64 end;
	__u64 bias;
	__u64 file_key; /* key of unwind_files; 0: no file (anonymous, vdso) */
};

struct kestrel_proc_mappings {
	__u32 count;
	__u32 reserved;
	struct kestrel_mapping mappings[MAX_PROC_MAPPINGS];
};

/* Where a file's table lies in the shared pools. Its pages entries are
 * absolute indexes into unwind_rows (the loader adds the row base). */
struct kestrel_unwind_file {
	__u32 page_base;
	__u32 page_count; /* pages; unwind_pages holds page_count + 1 entries */
	__u32 rule_base;
	__u32 reserved;
};

/* kestrel_unwind::RawRule. */
struct kestrel_unwind_rule {
	__s32 cfa_offset;
	__s16 rbp_offset;
	__u8 kind;
	__u8 rbp_kind;
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
	COUNTER_UNWIND_FRAMES_TABLE = 15, /* user frames found through a table */
	COUNTER_UNWIND_FRAMES_FP = 16,    /* user frames found through frame pointers */
	COUNTER_UNWIND_END_OUTERMOST = 17, /* stacks by end reason: enum kestrel_unwind_end */
	COUNTER_UNWIND_END_NO_TABLE = 18,
	COUNTER_UNWIND_END_NO_MAPPING = 19,
	COUNTER_UNWIND_END_READ_FAULT = 20,
	COUNTER_UNWIND_END_DEPTH = 21,
	COUNTER_UNWIND_END_STUCK = 22,
	COUNTER_UNWIND_NO_PROCESS = 23, /* stacks of a process without proc_mappings */
	KESTREL_NUM_COUNTERS = 32,
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
	__u32 unwind_enabled;    /* 1: user stacks by the table unwinder */
	__u32 reserved[6];
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
KESTREL_ABI enum kestrel_unwind_end kestrel_abi_unwind_end = UNWIND_END_OUTERMOST;

/* kestrel-sizing plans with these sizes (its own constants, tested against the
 * generated types by kestrel-probes). */
_Static_assert(sizeof(struct kestrel_sample_header) == 48, "RECORD_HEADER_BYTES");
_Static_assert(sizeof(struct kestrel_wake) == 32, "WAKE_RECORD_BYTES");
_Static_assert(sizeof(struct kestrel_config) == 64, "RODATA_BYTES");
_Static_assert(sizeof(struct kestrel_sample) == 48 + 2 * 127 * 8, "RECORD_MAX_BYTES");
_Static_assert(KESTREL_NUM_COUNTERS == 32, "NUM_COUNTERS");
_Static_assert(sizeof(struct kestrel_proc_mappings) == 8 + 32 * MAX_PROC_MAPPINGS,
	       "PROC_MAPPINGS_VALUE_BYTES");
_Static_assert(sizeof(struct kestrel_unwind_file) == 16, "UNWIND_FILE_VALUE_BYTES");
_Static_assert(sizeof(struct kestrel_unwind_rule) == 8, "UNWIND_RULE_BYTES");
_Static_assert(sizeof(struct kestrel_u32_chunk) == 64, "UNWIND_CHUNK_BYTES");
_Static_assert((1 << (MAPPING_SEARCH_STEPS - 1)) >= MAX_PROC_MAPPINGS, "mapping search steps");
/* User space reads KESTREL_NUM_COUNTERS slots: the highest counter must be below it. */
_Static_assert(COUNTER_UNWIND_NO_PROCESS < KESTREL_NUM_COUNTERS, "counter past the map");

#endif /* KESTREL_H */
