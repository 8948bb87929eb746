"""Fabric probes: readers of /sys/class/infiniband and /sys/class/net, counter windows,
and the allocation-wide peer probe. The check functions live in `nodecheck.checks.fabric`.
"""
