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

	if (!(s->header.flags & FLAG_KERNEL_THREAD)) {
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
