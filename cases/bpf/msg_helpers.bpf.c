// SPDX-License-Identifier: GPL-2.0
/* An sk_msg verdict program that calls one of the documented msg helpers on each run.
 *
 * User space picks the helper and its arguments in `msg_cfg`, sends, and reads back one
 * `msg_run` record per program run: what the helper returned and what the program saw. The
 * number of records is itself an observation (apply_bytes and cork_bytes decide when the
 * program runs again).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

enum msg_op { OP_NONE, OP_APPLY, OP_CORK, OP_PULL, OP_PUSH, OP_POP };

struct msg_cfg {
	__u32 op;
	__u32 a;	/* bytes, or start */
	__u32 b;	/* end (pull) or len (push, pop) */
	__u32 flags;
	__u32 first_run_only;
};

struct msg_run {
	__s64 ret;		/* helper return value */
	__u32 size;		/* msg->size when the program ran */
	__u32 seen_before;	/* data_end - data before the helper */
	__u32 seen_after;	/* data_end - data after it */
	__u32 pad;
};

#define MAX_RUNS 16

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sock_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct msg_cfg);
} msg_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} run_count SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_RUNS);
	__type(key, __u32);
	__type(value, struct msg_run);
} runs SEC(".maps");

static __always_inline __u32 seen(struct sk_msg_md *msg)
{
	/* Pointer difference: allowed for privileged loaders, which the agent is. */
	return (__u32)((long)msg->data_end - (long)msg->data);
}

SEC("sk_msg")
int prog_msg_helper(struct sk_msg_md *msg)
{
	__u32 zero = 0, idx;
	struct msg_cfg *c = bpf_map_lookup_elem(&msg_cfg, &zero);
	__u32 *count = bpf_map_lookup_elem(&run_count, &zero);
	struct msg_run *rec;
	long ret = 0;
	__u32 before;

	if (!c || !count)
		return SK_PASS;
	/* One sender at a time: a plain increment is enough (and needs no -mcpu=v3). */
	idx = *count;
	*count = idx + 1;
	before = seen(msg);
	if (!c->first_run_only || idx == 0) {
		switch (c->op) {
		case OP_APPLY:
			ret = bpf_msg_apply_bytes(msg, c->a);
			break;
		case OP_CORK:
			ret = bpf_msg_cork_bytes(msg, c->a);
			break;
		case OP_PULL:
			ret = bpf_msg_pull_data(msg, c->a, c->b, c->flags);
			break;
		case OP_PUSH:
			ret = bpf_msg_push_data(msg, c->a, c->b, c->flags);
			break;
		case OP_POP:
			ret = bpf_msg_pop_data(msg, c->a, c->b, c->flags);
			break;
		}
	}
	rec = bpf_map_lookup_elem(&runs, &idx);
	if (rec) {
		rec->ret = ret;
		rec->size = msg->size;
		rec->seen_before = before;
		rec->seen_after = seen(msg);
	}
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
