/* Two programs that let every packet pass, for tests/test_datapath.py: one for XDP (section "xdp"),
 * one for a tc filter (section "tc"). They only have to exist where Cilium's and Calico's would. */
#include <linux/bpf.h>

__attribute__((section("xdp"), used)) int ng_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

__attribute__((section("tc"), used)) int ng_tc_pass(struct __sk_buff *skb)
{
	return -1; /* TC_ACT_UNSPEC: on to the next filter, then the stack */
}

char _license[] __attribute__((section("license"), used)) = "GPL";
