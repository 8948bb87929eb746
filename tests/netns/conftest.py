"""The `lab` fixture: network-namespace test hosts (tests/netns/lab.py), always torn down."""

from __future__ import annotations

import pytest
from lab import Lab


@pytest.fixture
def lab():
    labs: list[Lab] = []

    def make(hosts: int) -> Lab:
        built = Lab(hosts)
        labs.append(built)
        return built.build()

    try:
        yield make
    finally:
        for built in labs:
            built.destroy()
