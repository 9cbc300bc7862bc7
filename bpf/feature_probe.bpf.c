// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Tiny programs that `kestrel check` and the probes crate load one at a time to
 * learn, by really trying, which program and map types this kernel accepts.
 * Each program is loaded alone (autoload off for the others), so one refusal
 * does not hide another. The maps are created with the sizes user space sets.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
} probe_ringbuf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} probe_task_storage SEC(".maps");

SEC("perf_event")
int probe_perf_event(struct bpf_perf_event_data *ctx)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(probe_tp_btf, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(probe_raw_tp, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return 0;
}

/* fentry is what the reference agent's successors use instead of kprobes; kernels
 * in lockdown (integrity) refuse it at load although the verifier passes. */
SEC("fentry/do_nanosleep")
int BPF_PROG(probe_fentry)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(probe_task_storage_prog, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	__u64 *v = bpf_task_storage_get(&probe_task_storage, next, 0, 0);

	if (v)
		*v += 1;
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(probe_ringbuf_prog, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	bpf_ringbuf_output(&probe_ringbuf, &preempt, sizeof(preempt), BPF_RB_NO_WAKEUP);
	return 0;
}
