"""Kernel and file layouts as struct.Struct constants, named after the kernel's and pcap's fields."""

from __future__ import annotations

import struct

# <linux/if_packet.h> socket options and values.
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_RESERVE = 12
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_LOCK_FILTER = 44
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

# struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov, sizeof_priv,
# feature_req_word.
TPACKET_REQ3 = struct.Struct("=7I")
# struct tpacket_block_desc + tpacket_hdr_v1: version, offset_to_priv, block_status, num_pkts,
# offset_to_first_pkt, blk_len, seq_num, ts_first_pkt {sec, nsec}, ts_last_pkt {sec, nsec}.
TPACKET_BLOCK_DESC = struct.Struct("=IIIIIIQIIII")
BLOCK_STATUS_OFFSET = 8
BLOCK_NUM_PKTS_OFFSET = 12
BLOCK_FIRST_PKT_OFFSET = 16
BLOCK_LEN_OFFSET = 20
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac,
# tp_net, then hv1 {tp_rxhash, tp_vlan_tci, tp_vlan_tpid, tp_padding}.
TPACKET3_HDR = struct.Struct("=IIIIIIHHIIHH8x")
TPACKET3_HDR_NEXT = struct.Struct("=I")
# Field offsets inside tpacket3_hdr, for vectorised gathers.
TP_NEXT_OFFSET, TP_SEC, TP_NSEC, TP_SNAPLEN, TP_LEN, TP_STATUS = 0, 4, 8, 12, 16, 20
TP_MAC, TP_NET, TP_RXHASH, TP_VLAN_TCI, TP_VLAN_TPID = 24, 26, 28, 32, 36
# struct sockaddr_ll follows the (aligned) tpacket3_hdr: family, protocol, ifindex, hatype,
# pkttype, halen, addr.
SOCKADDR_LL = struct.Struct("=HHiHBB8s")
SLL_OFFSET_IN_FRAME = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
SLL_PKTTYPE = 10
# struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt.
TPACKET_STATS_V3 = struct.Struct("=III")
# struct packet_mreq: mr_ifindex, mr_type, mr_alen, mr_address.
PACKET_MREQ = struct.Struct("=iHH8s")
# struct sock_filter: code, jt, jf, k; struct sock_fprog: len, (pad), filter pointer.
# linux/sockios.h, linux/ethtool.h: the link speed of an interface, asked on any socket of its namespace.
SIOCETHTOOL = 0x8946
ETHTOOL_GSET = 0x00000001
SPEED_UNKNOWN = 0xFFFFFFFF
# struct ethtool_cmd: cmd, supported, advertising, speed, duplex, port, phy_address, transceiver, autoneg,
# mdio_support, maxtxpkt, maxrxpkt, speed_hi, eth_tp_mdix, eth_tp_mdix_ctrl, lp_advertising, reserved[2].
ETHTOOL_CMD = struct.Struct("=IIIHBBBBBBIIHBBI8x")
# struct ifreq with ifr_data (64-bit): the interface's name, then a pointer, in a 24-byte union.
IFREQ_DATA = struct.Struct("=16sQ16x")
SOCK_FILTER = struct.Struct("=HBBI")
SOCK_FPROG = struct.Struct("=H6xQ")

# pcap file header: magic, version_major, version_minor, thiszone, sigfigs, snaplen, linktype.
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_FILE_HEADER_LE = struct.Struct("<IHHiIII")
PCAP_FILE_HEADER_BE = struct.Struct(">IHHiIII")
# pcap record header: ts_sec, ts_usec (or ts_nsec), incl_len, orig_len.
PCAP_RECORD_LE = struct.Struct("<IIII")
PCAP_RECORD_BE = struct.Struct(">IIII")

# pcapng: every block is block_type, block_total_length, body, block_total_length.
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D

# pcap record header's incl_len alone, for the sequential walk over records.
PCAP_RECORD_INCL_LE = struct.Struct("<8xI")
PCAP_RECORD_INCL_BE = struct.Struct(">8xI")
PCAP_FILE_HEADER_LEN = 24
PCAP_RECORD_LEN = 16
# pcapng block header: block_type, block_total_length.
PCAPNG_BLOCK_HDR_LE = struct.Struct("<II")
PCAPNG_BLOCK_HDR_BE = struct.Struct(">II")
# The trailing block_total_length alone.
PCAPNG_U32_LE = struct.Struct("<I")
PCAPNG_U32_BE = struct.Struct(">I")
# IDB body: linktype, reserved, snaplen (then options from byte 16 of the block).
PCAPNG_IDB_BODY_LE = struct.Struct("<HHI")
PCAPNG_IDB_BODY_BE = struct.Struct(">HHI")
PCAPNG_IDB_OPTIONS_OFFSET = 16
# Option header: option_code, option_length (value padded to 4).
PCAPNG_OPT_HDR_LE = struct.Struct("<HH")
PCAPNG_OPT_HDR_BE = struct.Struct(">HH")
PCAPNG_OPT_I64_LE = struct.Struct("<q")
PCAPNG_OPT_I64_BE = struct.Struct(">q")
PCAPNG_OPT_ENDOFOPT = 0
PCAPNG_OPT_IF_NAME = 2
PCAPNG_OPT_IF_TSRESOL = 9
PCAPNG_OPT_IF_TSOFFSET = 14
# EPB: interface_id, ts_high, ts_low, caplen, len at these 32-bit word indexes of the block; data
# at byte 28. SPB: len at word 2; data at byte 12.
PCAPNG_EPB_IFID, PCAPNG_EPB_TS_HIGH, PCAPNG_EPB_TS_LOW, PCAPNG_EPB_CAPLEN, PCAPNG_EPB_LEN = 2, 3, 4, 5, 6
PCAPNG_EPB_DATA = 28
PCAPNG_SPB_LEN = 2
PCAPNG_SPB_DATA = 12
# Smallest legal block_total_length per block type (12 for any other type).
PCAPNG_MIN_BLOCK_LEN = {PCAPNG_SHB: 28, PCAPNG_IDB: 20, PCAPNG_SPB: 16, PCAPNG_EPB: 32}
