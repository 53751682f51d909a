// SPDX-License-Identifier: GPL-2.0
/* Verdict programs that count their runs, for the queue-state, shutdown and many-maps cases.
 *
 * Each program adds one to its own slot of `runs`, so user space waits on the event it needs
 * (the verdict ran) instead of sleeping. The redirect programs send to key 1 of their own map
 * with BPF_F_INGRESS: the bytes are queued on that socket's psock, where a reader finds them.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

enum { RUN_SKB_PASS, RUN_SKB_REDIRECT, RUN_MSG_REDIRECT, RUN_MSG_PASS, RUN_SLOTS };

#define SOCKMAP_OF_TWO(name)				\
	struct {					\
		__uint(type, BPF_MAP_TYPE_SOCKMAP);	\
		__uint(max_entries, 2);			\
		__type(key, __u32);			\
		__type(value, __u64);			\
	} name SEC(".maps")

SOCKMAP_OF_TWO(pass_map);
SOCKMAP_OF_TWO(skb_redirect_map);
SOCKMAP_OF_TWO(msg_redirect_map);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RUN_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} runs SEC(".maps");

/* No fetching atomics: 5.10's verifier has none, and the value is not needed here. */
static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&runs, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("sk_skb/stream_verdict")
int prog_skb_pass(struct __sk_buff *skb)
{
	count(RUN_SKB_PASS);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int prog_skb_redirect_ingress(struct __sk_buff *skb)
{
	count(RUN_SKB_REDIRECT);
	return bpf_sk_redirect_map(skb, &skb_redirect_map, 1, BPF_F_INGRESS);
}

SEC("sk_msg")
int prog_msg_redirect_ingress(struct sk_msg_md *msg)
{
	count(RUN_MSG_REDIRECT);
	return bpf_msg_redirect_map(msg, &msg_redirect_map, 1, BPF_F_INGRESS);
}

SEC("sk_msg")
int prog_msg_pass(struct sk_msg_md *msg)
{
	count(RUN_MSG_PASS);
	return SK_PASS;
}

/* A second msg verdict, so a socket can be offered two different programs of one kind. */
SEC("sk_msg")
int prog_msg_pass_other(struct sk_msg_md *msg)
{
	return SK_PASS;
}

char _license[] SEC("license") = "GPL";
