"""What is made of the packets: decode, the bounded tables, TCP health, application latency, processes."""
