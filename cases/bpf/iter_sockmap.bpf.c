// SPDX-License-Identifier: GPL-2.0
/* An iter/sockmap program that counts what the iterator hands it: one call per slot (sockmap)
 * or element (sockhash), with or without a socket, and a final call with a NULL key.
 *
 * The context type comes from kernel BTF; declaring it with preserve_access_index lets libbpf
 * relocate the field offsets against the running kernel, so no vmlinux.h is needed.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpf_iter_meta {
	void *seq;
	__u64 session_id;
	__u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__sockmap {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	void *key;
	struct sock *sk;
} __attribute__((preserve_access_index));

/* counts[0]: calls with a key, [1]: calls with a socket, [2]: final calls (NULL key) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void bump(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&counts, &k);

	if (v)
		*v += 1;
}

SEC("iter/sockmap")
int prog_iter_count(struct bpf_iter__sockmap *ctx)
{
	if (!ctx->key) {
		bump(2);
		return 0;
	}
	bump(0);
	if (ctx->sk)
		bump(1);
	return 0;
}

char _license[] SEC("license") = "GPL";
