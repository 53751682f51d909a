// SPDX-License-Identifier: GPL-2.0
/* Programs that update or delete sockmap entries with the generic map helpers, loaded one at a
 * time: which program types the verifier lets do it is the behaviour under test.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} src_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} dst_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} dst_hash SEC(".maps");

/* tc: copy the socket at src_map[0] into dst_map[0] and dst_hash[0] (kernel BPF
 * bpf_map_lookup_elem() then bpf_map_update_elem() with the socket as value). */
SEC("tc")
int prog_tc_copy(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct bpf_sock *sk = bpf_map_lookup_elem(&src_map, &key);
	long r1, r2;

	if (!sk)
		return TC_ACT_SHOT;
	r1 = bpf_map_update_elem(&dst_map, &key, sk, BPF_ANY);
	r2 = bpf_map_update_elem(&dst_hash, &key, sk, BPF_ANY);
	bpf_sk_release(sk);
	return (r1 || r2) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* tc: look up an empty slot; the helper gives NULL. */
SEC("tc")
int prog_tc_lookup_empty(struct __sk_buff *skb)
{
	__u32 key = 1;
	struct bpf_sock *sk = bpf_map_lookup_elem(&src_map, &key);

	if (!sk)
		return TC_ACT_OK;
	bpf_sk_release(sk);
	return TC_ACT_SHOT;
}

/* sock_ops must use bpf_sock_map_update(); the generic helper with skops->sk is refused. */
SEC("sockops")
int prog_sockops_generic_update(struct bpf_sock_ops *skops)
{
	__u32 key = 0;
	struct bpf_sock *sk = skops->sk;

	if (sk)
		bpf_map_update_elem(&dst_map, &key, sk, BPF_ANY);
	return 1;
}

/* A kprobe deleting from a sockmap: the deletion can run in any context. */
SEC("kprobe/tcp_close")
int prog_kprobe_delete(void *ctx)
{
	__u32 key = 0;

	bpf_map_delete_elem(&dst_map, &key);
	return 0;
}

char _license[] SEC("license") = "GPL";
