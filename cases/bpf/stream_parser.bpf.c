// SPDX-License-Identifier: GPL-2.0
/* A stream parser that says how long a message is, and a verdict that records what it got.
 *
 * map_sockmap.rst: "The parser program determines how much data has been parsed and therefore
 * how much data needs to be queued to come to a verdict." User space sets the message length in
 * `parser_cfg`; the parser returns it whatever it is shown, so a length below what one send
 * carries splits the bytes into messages and one above it joins sends into one message. Each
 * program records its calls and the skb->len it saw in `seen`, which user space reads back:
 * the number of verdict runs is the number of messages, counted without timing.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_CALLS 8

/* key 0: the socket whose stream is parsed; key 1: where its verdict redirects each message */
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
	__type(value, __u32);
} parser_cfg SEC(".maps");

struct calls {
	__u32 count;
	__u32 len[MAX_CALLS];
};

/* seen[0]: the parser's calls, seen[1]: the verdict's */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct calls);
} seen SEC(".maps");

/* Plain increments, no atomics: strparser runs both programs under the socket's lock, one call
 * at a time, and 5.10's verifier has no fetching atomics. */
static __always_inline void record(__u32 who, __u32 len)
{
	struct calls *c = bpf_map_lookup_elem(&seen, &who);
	__u32 i;

	if (!c)
		return;
	i = c->count;
	if (i < MAX_CALLS)
		c->len[i] = len;
	c->count = i + 1;
}

SEC("sk_skb/stream_parser")
int prog_parser(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u32 *length = bpf_map_lookup_elem(&parser_cfg, &zero);
	/* Read once: `length ? *length : skb->len` lets clang load from either pointer in one
	 * instruction, which the 5.10, 6.1 and 6.12 verifiers refuse ("same insn cannot be used with
	 * different pointers"). */
	__u32 len = skb->len;

	record(0, len);
	if (length)
		return *length;
	return len;
}

/* A redirect into another socket, not SK_PASS: SK_PASS out of a stream parser deadlocks
 * 5.10.223-5.10.232 and 6.1.91-6.1.119 (CVE-2024-56694), which E1 and E3 check already; a
 * redirect queues the message on the target's backlog instead, on every kernel. */
SEC("sk_skb/stream_verdict")
int prog_verdict(struct __sk_buff *skb)
{
	record(1, skb->len);
	return bpf_sk_redirect_map(skb, &sock_map, 1, BPF_F_INGRESS);
}

char _license[] SEC("license") = "GPL";
