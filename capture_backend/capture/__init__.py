"""Where packets come from: AF_PACKET TPACKET_V3 rings, pcap/pcapng files, BPF filters, netlink link state."""
