// SPDX-License-Identifier: GPL-2.0
/* The "Examples / Kernel BPF" snippets of map_sockmap.rst, as the doc writes them (only the
 * program names differ, so both verdicts can live in one object).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sock_map_rx SEC(".maps");

SEC("sk_skb/stream_parser")
int bpf_prog_parser(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("sk_skb/stream_verdict")
int bpf_prog_verdict(struct __sk_buff *skb)
{
	__u32 lport = skb->local_port;
	__u32 idx = 0;

	if (lport == 10000)
		return bpf_sk_redirect_map(skb, &sock_map_rx, idx, 0);

	return SK_PASS;
}

struct socket_key {
	__u32 src_ip;
	__u32 dst_ip;
	__u32 src_port;
	__u32 dst_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, struct socket_key);
	__type(value, __u64);
} sock_hash_rx SEC(".maps");

static inline
void extract_socket_key(struct __sk_buff *skb, struct socket_key *key)
{
	key->src_ip = skb->remote_ip4;
	key->dst_ip = skb->local_ip4;
	key->src_port = skb->remote_port >> 16;
	key->dst_port = (bpf_htonl(skb->local_port)) >> 16;
}

SEC("sk_skb/stream_verdict")
int bpf_prog_verdict_hash(struct __sk_buff *skb)
{
	struct socket_key key;

	extract_socket_key(skb, &key);

	return bpf_sk_redirect_hash(skb, &sock_hash_rx, &key, 0);
}

char _license[] SEC("license") = "GPL";
