// SPDX-License-Identifier: GPL-2.0
/* A program the verifier must refuse, for the fault tests (tests/faultcases/inject.py): it reads
 * the packet without checking data_end. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("sk_skb")
int read_past_the_packet(struct __sk_buff *skb)
{
	unsigned char *data = (void *)(long)skb->data;

	return data[0] ? SK_PASS : SK_DROP;
}

char _license[] SEC("license") = "GPL";
