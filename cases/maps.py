"""The map types a user-space case runs on: the doc gives sockmap and sockhash one contract, so
a case checks it on each (a behaviour whose outcome differs says so per map type)."""
import pytest

MAP_TYPES = ("sockmap", "sockhash")
EACH_MAP_TYPE = pytest.mark.parametrize("map_type", MAP_TYPES)
