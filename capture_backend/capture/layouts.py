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
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1
# PACKET_FANOUT's value: the group id (16 bits) | mode << 16 | flags << 16. Hash mode spreads by the
# packet's symmetric flow hash, so both directions of a flow reach the same socket.
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # with id 0: the kernel picks an unused id (read back with getsockopt)
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

# pcap record header's incl_len alone, for the sequential walk over records.
PCAP_RECORD_INCL_LE = struct.Struct("<8xI")
PCAP_RECORD_INCL_BE = struct.Struct(">8xI")
PCAP_FILE_HEADER_LEN = 24
PCAP_RECORD_LEN = 16
# pcap record header's incl_len alone, for the sequential walk over records.
PCAP_RECORD_INCL_LE = struct.Struct("<8xI")
PCAP_RECORD_INCL_BE = struct.Struct(">8xI")
PCAP_FILE_HEADER_LEN = 24
PCAP_RECORD_LEN = 16

# pcapng (draft-ietf-opsawg-pcapng): every block is block_type, block_total_length, body, block_total_length.
# Each block's fixed part is declared once, below, by the spec's field names; the reader's structs,
# offsets and smallest lengths and the writer's headers are all derived from these declarations.
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_MAJOR_VERSION, PCAPNG_MINOR_VERSION = 1, 0
PCAPNG_SECTION_LENGTH_UNKNOWN = -1

Fields = tuple[tuple[str, str], ...]  # (spec field name, struct format code)
PCAPNG_BLOCK_FIELDS: Fields = (("block_type", "I"), ("block_total_length", "I"))
PCAPNG_SHB_FIELDS: Fields = (
    *PCAPNG_BLOCK_FIELDS,
    ("byte_order_magic", "I"),
    ("major_version", "H"),
    ("minor_version", "H"),
    ("section_length", "q"),
)
PCAPNG_IDB_FIELDS: Fields = (*PCAPNG_BLOCK_FIELDS, ("linktype", "H"), ("reserved", "H"), ("snaplen", "I"))
PCAPNG_EPB_FIELDS: Fields = (
    *PCAPNG_BLOCK_FIELDS,
    ("interface_id", "I"),
    ("timestamp_upper", "I"),
    ("timestamp_lower", "I"),
    ("captured_packet_length", "I"),
    ("original_packet_length", "I"),
)
PCAPNG_SPB_FIELDS: Fields = (*PCAPNG_BLOCK_FIELDS, ("original_packet_length", "I"))
PCAPNG_OPTION_FIELDS: Fields = (("option_code", "H"), ("option_length", "H"))  # the value follows, padded to 4
PCAPNG_TRAILER_LEN = 4  # the closing block_total_length


def fields_struct(order: str, fields: Fields) -> struct.Struct:
    """The struct of a declared layout in one byte order ('<' or '>')."""
    return struct.Struct(order + "".join(code for _, code in fields))


def field_offset(fields: Fields, name: str) -> int:
    """Byte offset of a declared field."""
    names = [n for n, _ in fields]
    return struct.calcsize("<" + "".join(code for _, code in fields[: names.index(name)]))


PCAPNG_SHB_LE = fields_struct("<", PCAPNG_SHB_FIELDS)
PCAPNG_IDB_LE = fields_struct("<", PCAPNG_IDB_FIELDS)
PCAPNG_EPB_LE = fields_struct("<", PCAPNG_EPB_FIELDS)
PCAPNG_OPT_HDR_LE = fields_struct("<", PCAPNG_OPTION_FIELDS)
PCAPNG_OPT_HDR_BE = fields_struct(">", PCAPNG_OPTION_FIELDS)
# Block header alone; the trailing block_total_length alone.
PCAPNG_BLOCK_HDR_LE = fields_struct("<", PCAPNG_BLOCK_FIELDS)
PCAPNG_BLOCK_HDR_BE = fields_struct(">", PCAPNG_BLOCK_FIELDS)
PCAPNG_U32_LE = struct.Struct("<I")
PCAPNG_U32_BE = struct.Struct(">I")
# IDB body after the block header: linktype, reserved, snaplen; options from the end of the fixed part.
PCAPNG_IDB_BODY_LE = fields_struct("<", PCAPNG_IDB_FIELDS[2:])
PCAPNG_IDB_BODY_BE = fields_struct(">", PCAPNG_IDB_FIELDS[2:])
PCAPNG_IDB_OPTIONS_OFFSET = PCAPNG_IDB_LE.size
PCAPNG_OPT_I64_LE = struct.Struct("<q")
PCAPNG_OPT_I64_BE = struct.Struct(">q")
# Option codes: any block's, the SHB's, the IDB's.
PCAPNG_OPT_ENDOFOPT = 0
PCAPNG_OPT_COMMENT = 1
PCAPNG_OPT_SHB_USERAPPL = 4
PCAPNG_OPT_IF_NAME = 2
PCAPNG_OPT_IF_TSRESOL = 9
PCAPNG_OPT_IF_TSOFFSET = 14
# EPB: interface_id, timestamp_upper, timestamp_lower, captured_packet_length, original_packet_length as
# 32-bit word indexes of the block; data after the fixed part. SPB: original_packet_length; data after it.
PCAPNG_EPB_IFID, PCAPNG_EPB_TS_HIGH, PCAPNG_EPB_TS_LOW, PCAPNG_EPB_CAPLEN, PCAPNG_EPB_LEN = (
    field_offset(PCAPNG_EPB_FIELDS, name) // 4
    for name in (
        "interface_id",
        "timestamp_upper",
        "timestamp_lower",
        "captured_packet_length",
        "original_packet_length",
    )
)
PCAPNG_EPB_DATA = PCAPNG_EPB_LE.size
PCAPNG_SPB_LEN = field_offset(PCAPNG_SPB_FIELDS, "original_packet_length") // 4
PCAPNG_SPB_DATA = fields_struct("<", PCAPNG_SPB_FIELDS).size
# Smallest legal block_total_length per block type (12 for any other type): the fixed part and the trailer.
PCAPNG_MIN_BLOCK_LEN = {
    btype: fields_struct("<", fields).size + PCAPNG_TRAILER_LEN
    for btype, fields in (
        (PCAPNG_SHB, PCAPNG_SHB_FIELDS),
        (PCAPNG_IDB, PCAPNG_IDB_FIELDS),
        (PCAPNG_SPB, PCAPNG_SPB_FIELDS),
        (PCAPNG_EPB, PCAPNG_EPB_FIELDS),
    )
}
