import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest


@pytest.fixture
def fresh_nvml_cache():
    """NVML snapshots are cached per process: every GPU test starts and ends without one."""
    from nodecheck.probes import nvml

    nvml.clear_cache()
    yield
    nvml.clear_cache()
