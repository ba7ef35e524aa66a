import sys

import pytest

from minidl import memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_tunes_glibc_and_can_be_turned_off(monkeypatch):
    assert memory.keep_freed_memory() is True
    monkeypatch.setenv("MINIDL_KEEP_MEMORY", "0")
    assert memory.keep_freed_memory() is False
