// SPDX-License-Identifier: (GPL-2.0-only OR MIT)

/*
 * IP-in-IP for tunl0 on kernels without the ipip module, in the kernel's own
 * wire format so that a node running this and a node running the kernel's
 * ipip device talk to each other.
 *
 * Two modes, switched by the agent through config.fast, and a half-way one:
 *
 * Observable (fast == 0), while a packet socket (tcpdump) is open on tunl0
 * or on every device: calyx_encap runs at tc ingress of tunl0-encap, the
 * veth peer of tunl0, so whatever the node routes to tunl0 crosses the pair
 * (tcpdump on tunl0 sees it, inner headers only), gets an outer IPv4 header
 * and leaves through the underlay NIC with bpf_redirect_neigh. calyx_decap
 * at tc ingress of the underlay NIC takes the outer header off IPIP from a
 * cluster node and hands the packet to tunl0 as if tunl0 had received it
 * (bpf_redirect with BPF_F_INGRESS: tcpdump on tunl0 sees it, the kernel
 * routes it to the pod).
 *
 * Fast (fast == 1), when nobody is looking: calyx_encap_fast at tc egress
 * of tunl0 encapsulates before the pair and redirects to the NIC, and
 * calyx_decap lets the decapsulated packet go on up the NIC's own receive
 * path. Either way the packet has passed, or then passes, netfilter's
 * hooks exactly once, as in the observable mode; what it skips is one
 * device pass each way (a veth transmit and a backlog queue), and with it
 * tunl0's capture point.
 *
 * Fast out only (fast == 2), when nobody is looking but rp_filter is strict
 * on the NIC: calyx_encap_fast as in the fast mode, calyx_decap as in the
 * observable one. A strict reverse-path check would drop the decapsulated
 * packet on the NIC, since its source is routed via tunl0; entering tunl0,
 * it passes.
 *
 * In every mode IPIP from anyone but a cluster node is dropped and counted,
 * and everything else passes untouched.
 *
 * The Go side (agent/tunnel/ebpf.go) creates tunl0, loads these programs,
 * fills the maps and finds them again after an agent restart.
 */

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN 14
#define ETH_ALEN 6
#define ETH_P_IP 0x0800
#define IPPROTO_IPIP 4
#define IPV4_HLEN 20

#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define ECN_MASK 0x3
#define ECN_NOT_ECT 0x0
#define ECN_ECT_0 0x2
#define ECN_CE 0x3

/* Byte-wise headers: no bitfields, so one source serves both endiannesses. */
struct eth {
	__u8 dst[ETH_ALEN];
	__u8 src[ETH_ALEN];
	__be16 proto;
} __attribute__((packed));

struct ipv4 {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

/* Written by the agent; one entry. Addresses in network byte order. */
struct config {
	__be32 underlay_ip;  /* outer source, and the only outer destination decapsulated */
	__u32 nic_ifindex;   /* underlay NIC: where encapsulated packets leave */
	__u32 tunl0_ifindex; /* where decapsulated packets enter */
	__u8 tunl0_mac[ETH_ALEN];
	__u8 fast; /* FAST_BOTH: nobody captures on tunl0, skip its device passes; FAST_OUT: on the way out only */
	__u8 pad;
};

#define FAST_BOTH 1
#define FAST_OUT 2

struct lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

/* Per CPU; the agent sums them. Packets count GSO segments, bytes count the
 * inner IP packets. */
struct counters {
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 tx_drops;	 /* no peer for the destination, or encapsulation failed */
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 rx_drops;	 /* IPIP from an address that is not a cluster node */
	__u64 rx_errors; /* IPIP from a node that could not be decapsulated */
};

/* Remote pod blocks -> underlay address of the node that owns them. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, __be32);
} remote_blocks SEC(".maps");

/* Underlay addresses of the cluster's nodes: the only accepted outer sources. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __u32);
} node_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} calyx_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} calyx_stats SEC(".maps");

static __always_inline __u32 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/* One's complement sum of an option-less IPv4 header. */
static __always_inline __u32 ipv4_sum(const struct ipv4 *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma clang loop unroll(full)
	for (int i = 0; i < IPV4_HLEN / 2; i++)
		sum += w[i];
	return fold(sum);
}

static __always_inline __u64 segments(const struct __sk_buff *skb)
{
	return skb->gso_segs ? skb->gso_segs : 1;
}

static __always_inline int encap(struct __sk_buff *skb, struct counters *c,
				 const struct config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct eth *eth = data;
	struct ipv4 *inner = data + ETH_HLEN;

	if ((void *)(inner + 1) > data_end) {
		/* Not linear this far: only then pay for a pull. */
		if (bpf_skb_pull_data(skb, ETH_HLEN + IPV4_HLEN))
			goto drop;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		eth = data;
		inner = data + ETH_HLEN;
		if ((void *)(inner + 1) > data_end)
			goto drop;
	}
	if (eth->proto != bpf_htons(ETH_P_IP) || (inner->ver_ihl >> 4) != 4)
		goto drop;
	if (!cfg->underlay_ip || !cfg->nic_ifindex)
		goto drop;

	struct lpm_key key = {.prefixlen = 32, .addr = inner->daddr};
	__be32 *node = bpf_map_lookup_elem(&remote_blocks, &key);
	if (!node)
		goto drop;

	__u32 inner_len = skb->len - ETH_HLEN;
	/* Only a BIG TCP super-packet is this long; the outer length field
	 * cannot hold it. */
	if (inner_len + IPV4_HLEN > 0xffff)
		goto drop;

	/*
	 * The outer header is the one the kernel's fallback tunl0 writes
	 * ("ipip any remote any local any ttl inherit nopmtudisc", which is
	 * what Calico runs):
	 *  - TTL inherited from the inner packet, which the forwarding path
	 *    has already decremented;
	 *  - DF copied from the inner packet (nopmtudisc): what the pod let
	 *    routers fragment stays fragmentable, and nothing else is;
	 *  - TOS 0 with the inner ECN bits, CE sent as ECT(0)
	 *    (INET_ECN_encapsulate), so that congestion marks added on the
	 *    underlay reach the receiver (see calyx_decap);
	 *  - a random ID: the kernel draws one from a hashed counter; any value
	 *    is valid on the wire, and a random one keeps fragments of
	 *    different inner flows from sharing IDs.
	 */
	__u8 ecn = inner->tos & ECN_MASK;
	struct ipv4 outer = {
		.ver_ihl = 0x45,
		.tos = ecn == ECN_CE ? ECN_ECT_0 : ecn,
		.tot_len = bpf_htons(inner_len + IPV4_HLEN),
		.id = (__be16)bpf_get_prandom_u32(),
		.frag_off = inner->frag_off & bpf_htons(IP_DF),
		.ttl = inner->ttl,
		.protocol = IPPROTO_IPIP,
		.saddr = cfg->underlay_ip,
		.daddr = *node,
	};
	outer.check = ~ipv4_sum(&outer) & 0xffff;

	__u64 segs = segments(skb);
	__u32 nic = cfg->nic_ifindex;

	/*
	 * ENCAP_L3_IPV4 marks the skb as encapsulated and adds SKB_GSO_IPXIP4
	 * to a GSO packet, so the NIC (or the kernel's software GSO, which
	 * handles IPIP without the ipip module) cuts a 64 KB TCP super-packet
	 * into segments that each carry a copy of this outer header, with
	 * consecutive IDs and their own lengths and checksums. FIXED_GSO keeps the
	 * segment size: the pod's MTU (tunl0's) already leaves room for the
	 * outer 20 bytes, and shrinking the MSS here would send segments the
	 * pod never asked for. This is what lwt-bpf's bpf_lwt_push_encap
	 * cannot do: it refuses GSO packets, and bulk TCP stalls.
	 */
	if (bpf_skb_adjust_room(skb, IPV4_HLEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO))
		goto drop;
	/* A direct write: ~80 ns a packet less than bpf_skb_store_bytes
	 * (BenchmarkPrograms); adjust_room has made the new room writable. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + sizeof(outer) > data_end)
		goto drop;
	__builtin_memcpy(data + ETH_HLEN, &outer, sizeof(outer));

	c->tx_packets += segs;
	c->tx_bytes += inner_len;

	/* The kernel routes the outer packet out of the NIC (resolving a
	 * gateway when the peer node is on another subnet) and fills in the
	 * Ethernet header from its neighbour table. */
	return bpf_redirect_neigh(nic, NULL, 0, 0);

drop:
	c->tx_drops++;
	return TC_ACT_SHOT;
}

SEC("tc")
int calyx_encap(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct counters *c = bpf_map_lookup_elem(&calyx_stats, &zero);
	struct config *cfg = bpf_map_lookup_elem(&calyx_config, &zero);

	if (!c || !cfg)
		return TC_ACT_SHOT;
	return encap(skb, c, cfg);
}

/* At tc egress of tunl0: in the fast modes (both ways, or out only) the
 * packet is encapsulated here, after the forwarding path and netfilter's
 * POSTROUTING, and never crosses the pair; in the observable mode it goes
 * on to the pair, where tcpdump's tap on tunl0 sees it, and calyx_encap
 * takes it on the other side. */
SEC("tc")
int calyx_encap_fast(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&calyx_config, &zero);

	if (!cfg || !cfg->fast)
		return TC_ACT_OK;
	struct counters *c = bpf_map_lookup_elem(&calyx_stats, &zero);
	if (!c)
		return TC_ACT_OK;
	return encap(skb, c, cfg);
}

SEC("tc")
int calyx_decap(struct __sk_buff *skb)
{
	__u32 zero = 0;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv4 *outer = data + ETH_HLEN;

	if ((void *)(outer + 1) > data_end) {
		/* Not linear this far: only then pay for a pull. */
		if (bpf_skb_pull_data(skb, ETH_HLEN + 2 * IPV4_HLEN))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		outer = data + ETH_HLEN;
		if ((void *)(outer + 1) > data_end)
			return TC_ACT_OK;
	}
	if (outer->protocol != IPPROTO_IPIP)
		return TC_ACT_OK;

	struct config *cfg = bpf_map_lookup_elem(&calyx_config, &zero);
	struct counters *c = bpf_map_lookup_elem(&calyx_stats, &zero);
	if (!cfg || !c || !cfg->tunl0_ifindex)
		return TC_ACT_OK;
	/* IPIP to another address of this node, or passing through: not ours. */
	if (outer->daddr != cfg->underlay_ip)
		return TC_ACT_OK;

	__be32 src = outer->saddr;
	if (!bpf_map_lookup_elem(&node_ips, &src)) {
		c->rx_drops++;
		return TC_ACT_SHOT;
	}

	/* Everything a kernel node sends passes these checks; the kernel
	 * would reassemble outer fragments first, which tc cannot. */
	if (outer->ver_ihl != 0x45 || ipv4_sum(outer) != 0xffff ||
	    (outer->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		goto error;

	/* A pull costs ~40 ns even when the headers are linear already. */
	struct ipv4 *inner = (void *)(outer + 1);
	if ((void *)(inner + 1) > data_end) {
		if (bpf_skb_pull_data(skb, ETH_HLEN + 2 * IPV4_HLEN))
			goto error;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		outer = data + ETH_HLEN;
		inner = (void *)(outer + 1);
		if ((void *)(inner + 1) > data_end)
			goto error;
	}
	if ((inner->ver_ihl >> 4) != 4)
		goto error;

	/*
	 * ECN as the kernel's ip_tunnel_rcv (INET_ECN_decapsulate): CE on the
	 * outer header is copied to an ECN-capable inner packet; a not-ECT
	 * inner packet under an outer CE is dropped, since the congestion mark
	 * cannot be delivered.
	 */
	if ((outer->tos & ECN_MASK) == ECN_CE) {
		__u8 inner_ecn = inner->tos & ECN_MASK;

		if (inner_ecn == ECN_NOT_ECT)
			goto error;
		if (inner_ecn != ECN_CE) {
			__u16 old = *(__u16 *)inner;
			struct ipv4 marked = *inner;

			marked.tos |= ECN_CE;
			__u16 new = *(__u16 *)&marked;
			__u32 tos_off = ETH_HLEN + IPV4_HLEN + __builtin_offsetof(struct ipv4, tos);
			__u32 check_off = ETH_HLEN + IPV4_HLEN + __builtin_offsetof(struct ipv4, check);

			if (bpf_skb_store_bytes(skb, tos_off, &marked.tos, 1, 0) ||
			    bpf_l3_csum_replace(skb, check_off, old, new, sizeof(__u16)))
				goto error;
		}
	}

	__u32 inner_len = skb->len - ETH_HLEN - IPV4_HLEN;
	__u64 segs = segments(skb);

	/*
	 * FIXED_GSO: a GRO'd or GSO super-packet keeps the segment size it
	 * arrived with. NO_CSUM_RESET: a NIC's CHECKSUM_UNNECESSARY for IPIP
	 * vouches for the inner TCP/UDP checksum (the outer header has none),
	 * which stays valid, so the receiver need not checksum in software.
	 */
	if (bpf_skb_adjust_room(skb, -IPV4_HLEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET))
		goto error;

	c->rx_packets += segs;
	c->rx_bytes += inner_len;

	/* Fast: the inner packet continues up the NIC's receive path (the
	 * Ethernet header still names this node), to PREROUTING, the routing
	 * decision and FORWARD, as it would after entering tunl0; only the
	 * device it came in on says the NIC instead of tunl0. */
	if (cfg->fast == FAST_BOTH)
		return TC_ACT_OK;

	/* tunl0 takes the frame only if it is addressed to tunl0's MAC
	 * (eth_type_trans would mark it for another host otherwise). A
	 * CHECKSUM_COMPLETE sum stays right: the redirect adds the Ethernet
	 * header to it before tunl0 pulls it again (bpf_push_mac_rcsum). */
	if (bpf_skb_store_bytes(skb, 0, cfg->tunl0_mac, ETH_ALEN, 0))
		goto error;
	return bpf_redirect(cfg->tunl0_ifindex, BPF_F_INGRESS);

error:
	c->rx_errors++;
	return TC_ACT_SHOT;
}

char __license[] SEC("license") = "Dual MIT/GPL";
