"""Readers of what the kernel and the driver say: log formats, XID lines, the XID catalogue."""
