"""Part T2 of issue 14: the guest side's ctypes binding says to mypy what ctypes is told.

mypy sees libbpf through the _Libbpf protocol (ctypes types every foreign function as taking and
returning anything), and ctypes calls it through _SIGNATURES. Nothing but a real guest runs the
calls, so a protocol that drifts from the table (a function left out, an argument too many, an
int read where a pointer comes back) would be believed by mypy and found only on a guest: held
to each other here, on the host.
"""
from __future__ import annotations

import ctypes
import inspect
from typing import TYPE_CHECKING

import pytest

from harness.agent import libbpf

if TYPE_CHECKING:
    from _ctypes import _CData

# What a ctypes restype hands back to Python, as the protocol writes it.
RETURNED: dict[type[_CData] | None, str] = {
    ctypes.c_int: "int", ctypes.c_int32: "int", ctypes.c_void_p: "int | None",
    ctypes.c_char_p: "bytes | None", None: "None"}


def _protocol_functions() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(libbpf._Libbpf).items()
            if inspect.isfunction(member) and not name.startswith("_")}


def test_the_protocol_names_every_declared_function_and_no_other() -> None:
    assert sorted(_protocol_functions()) == sorted(libbpf._SIGNATURES)


@pytest.mark.parametrize("name", sorted(libbpf._SIGNATURES))
def test_each_function_takes_as_many_arguments_as_declared(name: str) -> None:
    signature = _protocol_functions().get(name)
    assert signature is not None, f"{name} is declared for ctypes but not in _Libbpf"
    parameters = list(signature.parameters)[1:]  # self
    assert len(parameters) == len(libbpf._SIGNATURES[name][1]), parameters


@pytest.mark.parametrize("name", sorted(libbpf._SIGNATURES))
def test_each_function_returns_what_its_restype_gives(name: str) -> None:
    signature = _protocol_functions().get(name)
    assert signature is not None, f"{name} is declared for ctypes but not in _Libbpf"
    restype = libbpf._SIGNATURES[name][0]
    assert signature.return_annotation == RETURNED[restype]


def test_a_type_is_taken_by_name_or_number_and_an_unknown_name_is_named() -> None:
    assert libbpf._number(libbpf.MAP_TYPES, "sockhash", "map type") == 18
    assert libbpf._number(libbpf.ATTACH_TYPES, 38, "attach type") == 38
    with pytest.raises(KeyError, match="unknown map type 'sockmapp'"):
        libbpf._number(libbpf.MAP_TYPES, "sockmapp", "map type")
