// SPDX-License-Identifier: GPL-2.0
/* Programs for the sockmap/sockhash cases: parsers, verdicts and redirects.
 *
 * The redirect programs read their target from `cfg` so one object serves every direction:
 * user space writes {key, flags, use_hash} before sending, and reads back what the helper
 * returned from `results`.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} sock_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} sock_hash SEC(".maps");

struct redirect_cfg {
	__u32 key;
	__u32 flags;
	__u32 use_hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redirect_cfg);
} cfg SEC(".maps");

/* results[0]: last helper return value, results[1]: number of program runs */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __s64);
} results SEC(".maps");

static __always_inline void record(__s64 ret)
{
	__u32 k = 0;
	__s64 *slot = bpf_map_lookup_elem(&results, &k);

	if (slot)
		*slot = ret;
	k = 1;
	slot = bpf_map_lookup_elem(&results, &k);
	if (slot)
		__sync_fetch_and_add(slot, 1);
}

/* The doc's sample parser: the whole skb is one message. */
SEC("sk_skb/stream_parser")
int prog_parser(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("sk_skb/stream_verdict")
int prog_verdict_pass(struct __sk_buff *skb)
{
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int prog_verdict_drop(struct __sk_buff *skb)
{
	return SK_DROP;
}

/* Redirect as `cfg` says; shared by the stream_verdict and skb_verdict programs below. */
static __always_inline int skb_redirect_from_cfg(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct redirect_cfg *c = bpf_map_lookup_elem(&cfg, &zero);
	__u32 key;
	long ret;

	if (!c)
		return SK_DROP;
	key = c->key;
	if (c->use_hash)
		ret = bpf_sk_redirect_hash(skb, &sock_hash, &key, c->flags);
	else
		ret = bpf_sk_redirect_map(skb, &sock_map, key, c->flags);
	record(ret);
	return ret;
}

SEC("sk_skb/stream_verdict")
int prog_skb_redirect(struct __sk_buff *skb)
{
	return skb_redirect_from_cfg(skb);
}

/* Plain "sk_skb": libbpf 1.1 does not know "sk_skb/verdict"; the attach type picks the role. */
SEC("sk_skb")
int prog_skb_verdict_pass(struct __sk_buff *skb)
{
	return SK_PASS;
}

/* The same redirect as an skb_verdict program: no parser, so any socket type may sit in the map. */
SEC("sk_skb")
int prog_skb_verdict_redirect(struct __sk_buff *skb)
{
	return skb_redirect_from_cfg(skb);
}

SEC("sk_msg")
int prog_msg_pass(struct sk_msg_md *msg)
{
	return SK_PASS;
}

SEC("sk_msg")
int prog_msg_redirect(struct sk_msg_md *msg)
{
	__u32 zero = 0;
	struct redirect_cfg *c = bpf_map_lookup_elem(&cfg, &zero);
	__u32 key;
	long ret;

	if (!c)
		return SK_DROP;
	key = c->key;
	if (c->use_hash)
		ret = bpf_msg_redirect_hash(msg, &sock_hash, &key, c->flags);
	else
		ret = bpf_msg_redirect_map(msg, &sock_map, key, c->flags);
	record(ret);
	return ret;
}

char _license[] SEC("license") = "GPL";
