"""Every OS and hardware boundary: NVML, sysfs (InfiniBand, net), the kernel log, PCI topology."""
