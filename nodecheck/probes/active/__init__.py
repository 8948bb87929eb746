"""Active measurements for the deep tier: what GPUs, memory, links and the fabric deliver.

Measurement only, no judgement: each module returns figures (TFLOP/s, GB/s, microseconds,
digests) and the deep checks (`nodecheck.checks.deep`) judge them. PyTorch is imported
lazily through `device.load_torch`, only inside the probe child that runs a deep check.
"""
