// SPDX-License-Identifier: GPL-2.0
/* A sock_ops program that adds sockets to a sockmap or sockhash with bpf_sock_map_update() /
 * bpf_sock_hash_update() from the three callbacks the doc's helpers are meant for.
 *
 * Only sockets on the port user space writes into `ops_cfg` are added, so other TCP traffic in
 * the guest is left alone. Keys: 0 the listener (TCP_LISTEN_CB), 1 the accepted socket
 * (PASSIVE_ESTABLISHED_CB), 2 the connecting socket (ACTIVE_ESTABLISHED_CB).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} sock_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} sock_hash SEC(".maps");

struct ops_cfg {
	__u32 port;
	__u32 use_hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ops_cfg);
} ops_cfg SEC(".maps");

/* Per key: the helper's return value, and whether the callback ran at all. */
struct ops_result {
	__s64 ret;
	__u32 ran;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct ops_result);
} ops_results SEC(".maps");

SEC("sockops")
int prog_sockops_update(struct bpf_sock_ops *skops)
{
	__u32 zero = 0, key, port;
	struct ops_cfg *c = bpf_map_lookup_elem(&ops_cfg, &zero);
	struct ops_result *res;
	long ret;

	if (!c || !c->port)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		key = 0;
		port = skops->local_port;
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		key = 1;
		port = skops->local_port;
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		key = 2;
		port = bpf_ntohl(skops->remote_port);
		break;
	default:
		return 1;
	}
	if (port != c->port)
		return 1;
	if (c->use_hash)
		ret = bpf_sock_hash_update(skops, &sock_hash, &key, BPF_NOEXIST);
	else
		ret = bpf_sock_map_update(skops, &sock_map, &key, BPF_NOEXIST);
	res = bpf_map_lookup_elem(&ops_results, &key);
	if (res) {
		res->ret = ret;
		res->ran = 1;
	}
	return 1;
}

char _license[] SEC("license") = "GPL";
