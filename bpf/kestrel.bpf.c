// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Kestrel's sampling programs.
 *
 * on_cpu_sample: a perf_event program on the software cpu-clock event, one perf
 *   event per online CPU; each sample sends pid, tid, cpu, comm and both stacks.
 * off_cpu_switch_*: sched_switch handlers. At switch-out the leaving task is still
 *   current, so its blocking stack is captured then and sent at once; only the
 *   start time is kept in flight (per task, not per CPU, so a task that wakes on
 *   another CPU is measured once and correctly). At switch-in the wait's duration
 *   is sent as a small wake record that user space joins to the block record.
 *
 * No map size is written here: every max_entries is set by user space from the
 * kestrel-sizing plan before load. Maps of disabled features are not created;
 * the code that uses them is dead under the .rodata configuration.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "kestrel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define PF_EXITING 0x00000004
#define PF_KTHREAD 0x00200000

const volatile struct kestrel_config CONFIG = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
} events SEC(".maps");

/* One record of scratch per CPU: a full record (2 KiB) is too large for the
 * 512-byte BPF stack, and bpf_ringbuf_output then copies only the used part.
 * One slot serves both programs: sched_switch runs with interrupts disabled, and
 * the cpu-clock event is delivered from an hrtimer interrupt (not an NMI), so the
 * two can never interleave on one CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct kestrel_sample);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct kestrel_in_flight {
	__u64 start_ns;
	__u64 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct kestrel_in_flight);
} offcpu_task SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct kestrel_in_flight);
} offcpu_hash SEC(".maps");


/* The table unwinder's maps (created only when it is on; sizes from the plan's
 * unwind rows). Three shared pools hold every loaded file's table; unwind_files
 * says where a file's part lies; proc_mappings maps a process's pcs to files. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kestrel_u32_chunk);
} unwind_pages SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kestrel_u32_chunk);
} unwind_rows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kestrel_unwind_rule);
} unwind_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct kestrel_unwind_file);
} unwind_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct kestrel_proc_mappings);
} proc_mappings SEC(".maps");

static __always_inline void count(__u32 which, __s64 delta)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		__sync_fetch_and_add(c, delta);
}

static __always_inline bool wanted(__u32 tgid)
{
	if (tgid == CONFIG.self_tgid && !CONFIG.profile_self)
		return false;
	if (CONFIG.filter_pids && !bpf_map_lookup_elem(&pid_filter, &tgid))
		return false;
	return true;
}


/* Rule kinds and rbp kinds of struct kestrel_unwind_rule (kestrel_unwind::rule). */
#define KIND_CFA_RSP 0
#define KIND_CFA_RBP 1
#define KIND_PLT 2
#define KIND_SIGNAL 3
#define KIND_END 4
#define RBP_UNCHANGED 0
#define RBP_AT_CFA 1
/* ucontext_t offsets at rsp in a signal trampoline (kestrel_unwind::unwinder). */
#define UCONTEXT_RBP (40 + 10 * 8)
#define UCONTEXT_RSP (40 + 15 * 8)
#define UCONTEXT_RIP (40 + 16 * 8)

/* The walk's state, on the program's stack and handed to each bpf_loop step.
 * Only scalars: the callback looks its maps up again. */
struct kestrel_walk {
	__u64 pc, sp, bp;
	__u32 pid;
	__u32 kernel_frames; /* where the user frames start in the record */
	__u32 frames;        /* user frames written */
	__u32 max_frames;
	__u8 bp_known;
	__u8 return_address; /* pc is a return address: look it up at pc - 1 */
	__u8 end;
	__u8 reserved;
	__u32 table_frames, fp_frames;
};

/* The same value, unknown to the verifier. An index that selects an element
 * inside the searches would otherwise be marked precise, and precision flows
 * back through every branch of the binary search: no two paths could be
 * pruned as equal, and the 2^7 (mappings) × 2^17 (rows) paths exceed the
 * 1M-instruction limit. Read back through a helper, the index is a fresh
 * scalar that the mask bounds. (Passing a stack address to the helper is
 * allowed to programs loaded with CAP_PERFMON, which Kestrel's are.) */
static __always_inline __u32 opaque_u32(__u32 v)
{
	__u32 out = 0;

	bpf_probe_read_kernel(&out, sizeof(out), &v);
	return out;
}

/* Element `index` of a pool of u32 chunks (unwind_rows, unwind_pages). */
static __always_inline __u32 *pool_u32(void *pool, __u32 index)
{
	__u32 chunk = index / UNWIND_CHUNK;
	struct kestrel_u32_chunk *c = bpf_map_lookup_elem(pool, &chunk);

	return c ? &c->v[index & (UNWIND_CHUNK - 1)] : NULL;
}

static __always_inline bool read_user(__u64 *dst, __u64 addr)
{
	return bpf_probe_read_user(dst, sizeof(*dst), (const void *)addr) == 0;
}

/* One frame-pointer step: the caller's pc at bp + 8, its bp at bp. Returns 1
 * (stop) with st->end set to `why` when the chain ends. */
static __always_inline long fp_step(struct kestrel_walk *st, __u8 why)
{
	__u64 ra = 0, next_bp = 0;

	if (!st->bp_known || st->bp == 0) {
		st->end = st->bp_known ? UNWIND_END_OUTERMOST : why;
		return 1;
	}
	if (!read_user(&ra, st->bp + 8) || !read_user(&next_bp, st->bp)) {
		st->end = why;
		return 1;
	}
	if (st->bp + 16 <= st->sp || ra == 0) {
		st->end = ra == 0 ? UNWIND_END_OUTERMOST : why;
		return 1;
	}
	st->sp = st->bp + 16;
	st->bp = next_bp;
	st->pc = ra;
	st->return_address = 1;
	st->fp_frames++;
	return 0;
}

/*
 * One frame: record pc, find its mapping (binary search over the process's
 * sorted executable mappings), its file's table (binary search within one
 * 64 KiB page), apply the rule; frame pointers where there is no table.
 * Returns 1 to stop. A global function: the verifier checks it once, alone,
 * with *st unknown, instead of once per frame and per state of the caller
 * (the bpf_loop callback that calls it would otherwise be walked again for
 * every distinct walk state on 6.7+, past the 1M-instruction limit).
 */
__attribute__((noinline)) int kestrel_unwind_step(struct kestrel_walk *st)
{
	struct kestrel_proc_mappings *pm;
	struct kestrel_unwind_file *file;
	struct kestrel_unwind_rule *rule;
	struct kestrel_sample *s;
	__u32 zero = 0, pid, n, lo, hi, k, page, page_index, rule_index, first, found;
	__u64 slot, at, offset, key, cfa, ra = 0, bp = 0;
	__u32 *p0, *p1, *row;

	if (!st)
		return 1;
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	/* Opaque, or the verifier (6.7+, which verifies a bpf_loop callback until
	 * its entry state repeats) would see each frame count as a new state and
	 * walk the callback once per frame. */
	n = opaque_u32(st->frames);
	slot = st->kernel_frames + n;
	if (slot >= 2 * MAX_STACK_DEPTH || n >= st->max_frames) {
		st->end = UNWIND_END_DEPTH;
		return 1;
	}
	s->frames[slot] = st->pc;
	st->frames = n + 1;

	at = st->return_address ? st->pc - 1 : st->pc;
	/* A key on the stack: 6.1 refuses a key in the argument's memory. */
	pid = st->pid;
	pm = bpf_map_lookup_elem(&proc_mappings, &pid);
	if (!pm)
		return fp_step(st, UNWIND_END_NO_MAPPING);
	lo = 0;
	hi = pm->count;
	if (hi > MAX_PROC_MAPPINGS)
		hi = MAX_PROC_MAPPINGS;
	/* Last mapping with start <= at: lo ends one past it. */
	for (k = 0; k < MAPPING_SEARCH_STEPS && lo < hi; k++) {
		__u32 mid = (lo + hi) / 2;

		__u32 i = opaque_u32(mid) & (MAX_PROC_MAPPINGS - 1);

		if (pm->mappings[i].start <= at)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || lo > MAX_PROC_MAPPINGS)
		return fp_step(st, UNWIND_END_NO_MAPPING);
	k = opaque_u32(lo - 1) & (MAX_PROC_MAPPINGS - 1);
	if (at >= pm->mappings[k].end)
		return fp_step(st, UNWIND_END_NO_MAPPING);
	key = pm->mappings[k].file_key;
	offset = at - pm->mappings[k].bias;
	file = key ? bpf_map_lookup_elem(&unwind_files, &key) : NULL;
	if (!file)
		return fp_step(st, UNWIND_END_NO_TABLE);
	page = offset >> 16;
	if ((offset >> 32) || page >= file->page_count)
		return fp_step(st, UNWIND_END_NO_TABLE);
	page_index = file->page_base + page;
	p0 = pool_u32(&unwind_pages, page_index);
	p1 = pool_u32(&unwind_pages, page_index + 1);
	if (!p0 || !p1)
		return fp_step(st, UNWIND_END_NO_TABLE);
	/* Last row <= (offset & 0xffff) << 16 | 0xffff in [*p0, *p1). */
	first = *p0;
	lo = first;
	hi = *p1;
	key = ((offset & 0xffff) << 16) | 0xffff;
	for (k = 0; k < ROW_SEARCH_STEPS && lo < hi; k++) {
		__u32 mid = opaque_u32(lo + (hi - lo) / 2);

		row = pool_u32(&unwind_rows, mid);
		if (!row)
			break;
		if (*row <= key)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == first)
		return fp_step(st, UNWIND_END_NO_TABLE);
	found = lo - 1;
	row = pool_u32(&unwind_rows, found);
	if (!row || (*row & 0xffff) == 0xffff)
		return fp_step(st, UNWIND_END_NO_TABLE);
	rule_index = file->rule_base + (*row & 0xffff);
	rule = bpf_map_lookup_elem(&unwind_rules, &rule_index);
	if (!rule)
		return fp_step(st, UNWIND_END_NO_TABLE);

	switch (rule->kind) {
	case KIND_CFA_RSP:
		cfa = st->sp + (__s64)rule->cfa_offset;
		break;
	case KIND_CFA_RBP:
		if (!st->bp_known) {
			st->end = UNWIND_END_STUCK;
			return 1;
		}
		cfa = st->bp + (__s64)rule->cfa_offset;
		break;
	case KIND_PLT:
		cfa = st->sp + (__s64)rule->cfa_offset +
		      ((st->pc & 15) >= (__u64)rule->rbp_offset ? 8 : 0);
		break;
	case KIND_SIGNAL: {
		__u64 pc = 0, sp = 0;

		if (!read_user(&pc, st->sp + UCONTEXT_RIP) || !read_user(&sp, st->sp + UCONTEXT_RSP)) {
			st->end = UNWIND_END_READ_FAULT;
			return 1;
		}
		st->bp_known = read_user(&bp, st->sp + UCONTEXT_RBP);
		st->bp = bp;
		st->pc = pc;
		st->sp = sp;
		st->return_address = 0;
		st->table_frames++;
		return 0;
	}
	case KIND_END:
		st->end = UNWIND_END_OUTERMOST;
		st->table_frames++;
		return 1;
	default:
		st->end = UNWIND_END_STUCK;
		return 1;
	}
	if (cfa <= st->sp) {
		st->end = UNWIND_END_STUCK;
		return 1;
	}
	if (!read_user(&ra, cfa - 8)) {
		st->end = UNWIND_END_READ_FAULT;
		return 1;
	}
	if (rule->kind != KIND_PLT && rule->rbp_kind == RBP_AT_CFA) {
		if (!read_user(&bp, cfa + (__s64)rule->rbp_offset)) {
			st->end = UNWIND_END_READ_FAULT;
			return 1;
		}
		st->bp = bp;
		st->bp_known = 1;
	} else if (rule->kind != KIND_PLT && rule->rbp_kind != RBP_UNCHANGED) {
		st->bp_known = 0;
	}
	st->pc = ra;
	st->sp = cfa;
	st->return_address = 1;
	st->table_frames++;
	return 0;
}

/* bpf_loop's callback: one frame per call. */
static long unwind_frame(__u64 index, void *ctx)
{
	/* The verifier wants a callback result it can see is 0 or 1. */
	return kestrel_unwind_step(ctx) & 1;
}

/* Walk the current task's user stack from its user registers into the record
 * after `kernel_frames`; returns the frames written and sets the flags. */
static __always_inline __u64 unwind_user(struct kestrel_sample *s, __u32 tgid, __u64 kernel_frames,
					 __u32 max_frames)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	struct kestrel_walk st = {};

	/* The task's user registers at its last entry to the kernel: the
	 * interrupted ones when the sample hit user mode, those of the system
	 * call in progress otherwise (and at a switch-out). */
	st.pc = BPF_CORE_READ(regs, ip);
	st.sp = BPF_CORE_READ(regs, sp);
	st.bp = BPF_CORE_READ(regs, bp);
	st.bp_known = 1;
	st.pid = tgid;
	st.kernel_frames = kernel_frames;
	st.max_frames = max_frames;
	if (!bpf_map_lookup_elem(&proc_mappings, &tgid))
		count(COUNTER_UNWIND_NO_PROCESS, 1);
	bpf_loop(MAX_STACK_DEPTH, unwind_frame, &st, 0);
	if (st.end == 0)
		st.end = UNWIND_END_DEPTH;
	s->header.flags |= FLAG_USER_UNWOUND | ((st.end << FLAG_UNWIND_END_SHIFT) & FLAG_UNWIND_END_MASK);
	count(COUNTER_UNWIND_FRAMES_TABLE, st.table_frames);
	count(COUNTER_UNWIND_FRAMES_FP, st.fp_frames);
	count(COUNTER_UNWIND_END_OUTERMOST + st.end - UNWIND_END_OUTERMOST, 1);
	return st.frames;
}

/*
 * Fill the scratch record's stacks for the current task and send header + used
 * frames. `ctx` is whatever the calling program got; bpf_get_stack reads the
 * current task's registers from it (perf_event) or from the tracepoint's caller.
 */
static __always_inline void send_stacks(void *ctx, struct kestrel_sample *s)
{
	__u32 depth_bytes = CONFIG.stack_depth * sizeof(__u64);
	__u64 kernel_frames = 0, user_frames = 0, size;
	long n;

	/* The verifier needs the size bounded by the buffer: clamp the rodata value. */
	if (depth_bytes > MAX_STACK_DEPTH * sizeof(__u64))
		depth_bytes = MAX_STACK_DEPTH * sizeof(__u64);
	if (depth_bytes == 0)
		depth_bytes = sizeof(__u64);

	n = bpf_get_stack(ctx, s->frames, depth_bytes, 0);
	if (n < 0) {
		s->header.flags |= FLAG_KERNEL_STACK_ERROR;
		count(COUNTER_KERNEL_STACK_ERR, 1);
	} else {
		kernel_frames = (__u64)n / sizeof(__u64);
	}
	/* An explicit bound the verifier can see: the user stack starts right after
	 * the kernel frames, and offset (<= 127 frames) + size (<= 127 frames) fits
	 * the 254-frame buffer. */
	if (kernel_frames > MAX_STACK_DEPTH)
		kernel_frames = MAX_STACK_DEPTH;

	if (CONFIG.unwind_enabled && !(s->header.flags & FLAG_KERNEL_THREAD)) {
		user_frames = unwind_user(s, s->header.pid, kernel_frames, depth_bytes / sizeof(__u64));
	} else if (!(s->header.flags & FLAG_KERNEL_THREAD)) {
		n = bpf_get_stack(ctx, &s->frames[kernel_frames], depth_bytes, BPF_F_USER_STACK);
		if (n < 0) {
			s->header.flags |= FLAG_USER_STACK_ERROR;
			count(COUNTER_USER_STACK_ERR, 1);
		} else {
			user_frames = (__u64)n / sizeof(__u64);
		}
	}
	if (user_frames > MAX_STACK_DEPTH)
		user_frames = MAX_STACK_DEPTH;

	s->header.kernel_frames = kernel_frames;
	s->header.user_frames = user_frames;
	size = sizeof(struct kestrel_sample_header) + (kernel_frames + user_frames) * sizeof(__u64);
	if (size > sizeof(struct kestrel_sample))
		size = sizeof(struct kestrel_sample);
	/* No wake-up: user space drains on its poll interval, which the ring buffer
	 * is sized for; a wake-up per record would cost a context switch each. */
	if (bpf_ringbuf_output(&events, s, size, BPF_RB_NO_WAKEUP))
		count(COUNTER_RINGBUF_LOST, 1);
}

static __always_inline struct kestrel_sample *start_record(__u8 kind, __u32 tgid, __u32 tid,
						   bool kernel_thread, __u64 now, __u64 value)
{
	__u32 zero = 0;
	struct kestrel_sample *s = bpf_map_lookup_elem(&scratch, &zero);

	if (!s) {
		count(COUNTER_SCRATCH_MISSING, 1);
		return NULL;
	}
	s->header.kind = kind;
	s->header.flags = kernel_thread ? FLAG_KERNEL_THREAD : 0;
	s->header.cpu = bpf_get_smp_processor_id();
	s->header.tid = tid;
	s->header.pid = tgid;
	/* Both callers run in the sampled task's context: the perf event's
	 * interrupted task, and sched_switch's prev before the switch completes. */
	s->header.exec_seq = (__u16)BPF_CORE_READ((struct task_struct *)bpf_get_current_task(),
						  self_exec_id);
	s->header.timestamp_ns = now;
	s->header.value = value;
	bpf_get_current_comm(s->header.comm, sizeof(s->header.comm));
	return s;
}

SEC("perf_event")
int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct task_struct *task;
	struct kestrel_sample *s;
	bool kthread;

	if (tid == 0) {
		count(COUNTER_IDLE_SKIPPED, 1);
		return 0;
	}
	if (!wanted(tgid))
		return 0;
	count(COUNTER_ON_CPU_SEEN, 1);

	task = (struct task_struct *)bpf_get_current_task();
	kthread = BPF_CORE_READ(task, flags) & PF_KTHREAD;
	s = start_record(RECORD_ON_CPU, tgid, tid, kthread, bpf_ktime_get_ns(), 1);
	if (!s)
		return 0;
	send_stacks(ctx, s);
	count(COUNTER_ON_CPU_SENT, 1);
	return 0;
}

static __always_inline bool sampled(void)
{
	/* threshold = p × (2^32 - 1): p = 1 takes every switch, p = 0 none. */
	return bpf_get_prandom_u32() <= CONFIG.off_cpu_threshold;
}

/* Switch-in: if the task has a start time, report the wait and clear it. */
static __always_inline void finish_wait(__u32 tgid, __u32 tid, __u64 start_ns, __u64 now)
{
	struct kestrel_wake *w;
	__u64 delta;

	count(COUNTER_OFF_CPU_IN_FLIGHT, -1);
	if (now <= start_ns)
		return;
	delta = now - start_ns;
	if (delta < CONFIG.off_cpu_min_ns) {
		count(COUNTER_OFF_CPU_SHORT, 1);
		return;
	}
	w = bpf_ringbuf_reserve(&events, sizeof(*w), 0);
	if (!w) {
		count(COUNTER_RINGBUF_LOST, 1);
		return;
	}
	w->kind = RECORD_OFF_CPU_WAKE;
	w->flags = 0;
	w->cpu = bpf_get_smp_processor_id();
	w->tid = tid;
	w->pid = tgid;
	w->reserved = 0;
	w->timestamp_ns = now;
	w->delta_ns = delta;
	bpf_ringbuf_submit(w, BPF_RB_NO_WAKEUP);
	count(COUNTER_OFF_CPU_WAKES, 1);
}

/* A wait is still open at the task's next switch-out: its switch-in went
 * unseen (on 6.18 the task-storage lookup at switch-in has come back empty for
 * a task that had storage, about once in thirty recordings of the test
 * workload). That wait is lost; count it and take it out of the gauge, which
 * the new wait adds back. */
static __always_inline void missed_wake(void)
{
	count(COUNTER_OFF_CPU_MISSED_WAKE, 1);
	count(COUNTER_OFF_CPU_IN_FLIGHT, -1);
}

/* Switch-out eligibility, shared by both hook flavours. */
static __always_inline bool blocking_switch_out(bool preempt, struct task_struct *prev,
						__u32 *tgid, __u32 *tid)
{
	/* A preempted task is still runnable: that is run-queue latency, not a wait. */
	if (preempt)
		return false;
	*tid = BPF_CORE_READ(prev, pid);
	*tgid = BPF_CORE_READ(prev, tgid);
	/* The idle task and kernel threads "wait" whenever there is nothing to do.
	 * An exiting task's last switch-out is no wait: it never wakes, and its entry
	 * would outlive it (sched_process_exit has already run by then). */
	if (*tid == 0 || (BPF_CORE_READ(prev, flags) & (PF_KTHREAD | PF_EXITING)))
		return false;
	if (!wanted(*tgid))
		return false;
	count(COUNTER_OFF_CPU_SWITCHES, 1);
	return sampled();
}

static __always_inline void send_block_record(void *ctx, __u32 tgid, __u32 tid, __u64 now)
{
	struct kestrel_sample *s = start_record(RECORD_OFF_CPU_BLOCK, tgid, tid, false, now, now);

	count(COUNTER_OFF_CPU_SAMPLED, 1);
	count(COUNTER_OFF_CPU_IN_FLIGHT, 1);
	if (s)
		send_stacks(ctx, s);
}

/* tp_btf flavour: task pointers are trusted, so in-flight state lives in task
 * storage (no preallocation, nothing per CPU, freed with the task). */
SEC("tp_btf/sched_switch")
int BPF_PROG(off_cpu_switch_btf, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 now = bpf_ktime_get_ns();
	struct kestrel_in_flight *state;
	__u32 tgid, tid;

	if (!CONFIG.off_cpu_enabled)
		return 0;

	state = bpf_task_storage_get(&offcpu_task, next, 0, 0);
	if (state && state->start_ns) {
		__u64 start = state->start_ns;

		state->start_ns = 0;
		finish_wait(next->tgid, next->pid, start, now);
	}

	if (!blocking_switch_out(preempt, prev, &tgid, &tid))
		return 0;
	state = bpf_task_storage_get(&offcpu_task, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!state) {
		count(COUNTER_OFF_CPU_STORE_FULL, 1);
		return 0;
	}
	if (state->start_ns)
		missed_wake();
	state->start_ns = now;
	send_block_record(ctx, tgid, tid, now);
	return 0;
}

/* raw_tp flavour for kernels that refuse tp_btf: task pointers are plain values
 * (read with CO-RE), so in-flight state lives in a non-preallocated hash keyed by
 * tid whose capacity comes from the sizing plan. */
SEC("raw_tp/sched_switch")
int BPF_PROG(off_cpu_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 now = bpf_ktime_get_ns();
	struct kestrel_in_flight *state, fresh = {};
	__u32 tgid, tid, next_tid;

	if (!CONFIG.off_cpu_enabled)
		return 0;

	next_tid = BPF_CORE_READ(next, pid);
	state = bpf_map_lookup_elem(&offcpu_hash, &next_tid);
	if (state && state->start_ns) {
		__u64 start = state->start_ns;

		/* Closed in place first: should the delete fail (bucket busy), the
		 * entry left behind must not read as a wait still open. */
		state->start_ns = 0;
		bpf_map_delete_elem(&offcpu_hash, &next_tid);
		finish_wait(BPF_CORE_READ(next, tgid), next_tid, start, now);
	}

	if (!blocking_switch_out(preempt, prev, &tgid, &tid))
		return 0;
	state = bpf_map_lookup_elem(&offcpu_hash, &tid);
	if (state) {
		/* An entry left by a failed delete, or a wait whose switch-in went
		 * unseen: reuse it in place instead of a second hash update. */
		if (state->start_ns)
			missed_wake();
		state->start_ns = now;
	} else {
		fresh.start_ns = now;
		if (bpf_map_update_elem(&offcpu_hash, &tid, &fresh, BPF_ANY)) {
			count(COUNTER_OFF_CPU_STORE_FULL, 1);
			return 0;
		}
	}
	send_block_record(ctx, tgid, tid, now);
	return 0;
}

/* With the hash store an exiting thread's entry would outlive it: remove it. */
SEC("raw_tp/sched_process_exit")
int BPF_PROG(off_cpu_exit_raw, struct task_struct *task)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (!CONFIG.off_cpu_enabled || CONFIG.off_cpu_task_storage)
		return 0;
	if (bpf_map_delete_elem(&offcpu_hash, &tid) == 0) {
		count(COUNTER_OFF_CPU_IN_FLIGHT, -1);
		count(COUNTER_OFF_CPU_EXIT_CLEANED, 1);
	}
	return 0;
}
