"""What collab_core.wire refuses: malformed or hostile input, unknown types and tags, limits."""

from __future__ import annotations

import datetime as dt
import enum
import os
import random
import struct
import subprocess
import sys
import textwrap

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collab_core import wire
from collab_core.wire import Limits, WireError, dumps, loads

TAGGED = 2  # ext code of a serializer record with a bytes payload


def tagged(name: bytes, payload: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(TAGGED, bytes([len(name)]) + name + payload)


def array_record(dtype: bytes, shape: tuple[int, ...], index: int = 0, flags: int = 0, extra: bytes = b"") -> bytes:
    head = struct.pack("<BBBI", flags, len(shape), len(dtype), index)
    return head + dtype + struct.pack(f"<{len(shape)}q", *shape) + extra


def header_of(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# -- sender side ------------------------------------------------------------------------------------


class Point:
    def __init__(self, x: int, y: int):
        self.x, self.y = x, y


def test_unknown_type_fails_at_sender_naming_it():
    with pytest.raises(WireError) as info:
        dumps({"p": [Point(1, 2)]})
    msg = str(info.value)
    assert f"{__name__}.Point" in msg
    assert "register_type" in msg and "collab_register_serializers" in msg


def test_no_silent_str_or_pickle_for_scalar_subclasses():
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    for value in (Color.RED, Name("x"), dt.datetime(2024, 1, 1), object(), lambda: 1, {1: Point(0, 0)}):
        with pytest.raises(WireError, match="cannot encode object of type"):
            dumps(value)
    with pytest.raises(WireError, match="tzinfo"):
        dumps(dt.datetime(2024, 1, 1))


def test_cycles_and_deep_values_fail_at_sender():
    a: list = []
    a.append(a)
    with pytest.raises(WireError, match="deeply|cycle"):
        dumps(a)
    d: dict = {}
    d["self"] = d
    with pytest.raises(WireError):
        dumps(d)


# -- receiver side: tags and types ------------------------------------------------------------------


def test_unknown_tag_at_receiver_names_it_and_the_fix():
    header = header_of([msgpack.ExtType(1, b"mylib.Point"), {"x": 1}])
    with pytest.raises(WireError) as info:
        loads(header, [])
    msg = str(info.value)
    assert "mylib.Point" in msg and "plugin" in msg and "register_type" in msg
    with pytest.raises(WireError, match="mylib.Point"):
        loads(header_of(tagged(b"mylib.Point", b"\x00")), [])


def test_torch_tag_without_torch_serializer_says_install_torch():
    header = header_of({"t": tagged(b"torch.Tensor", array_record(b"float32", (1,)))})
    with pytest.raises(WireError, match="torch"):
        loads(header, [b"\x00" * 4], serializers=[])


def test_decoding_never_imports_what_the_peer_names():
    victim = "xml.dom.minidom"
    code = textwrap.dedent(
        f"""
        import sys, msgpack
        from collab_core.wire import loads, WireError
        assert {victim!r} not in sys.modules
        for name in [b"xml.dom.minidom.Document", b"xml.dom.minidom", b"os.system"]:
            for header in [msgpack.packb([msgpack.ExtType(1, name), {{}}]),
                           msgpack.packb(msgpack.ExtType(2, bytes([len(name)]) + name))]:
                try:
                    loads(header, [])
                except WireError:
                    pass
                else:
                    raise SystemExit("decoded an unknown tag")
        assert {victim!r} not in sys.modules, "a peer-named module was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unknown_ext_code_and_stray_markers():
    with pytest.raises(WireError, match="extension code 99"):
        loads(header_of(msgpack.ExtType(99, b"")), [])
    with pytest.raises(WireError, match="marker"):
        loads(header_of({"a": msgpack.ExtType(3, b"")}), [])  # a tuple marker outside a list
    with pytest.raises(WireError, match="marker"):
        loads(header_of([msgpack.ExtType(3, b""), msgpack.ExtType(3, b"")]), [])
    with pytest.raises(WireError):
        loads(header_of([msgpack.ExtType(8, b""), 1, 2]), [])  # malformed exception record


# -- receiver side: arrays --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [b"object", b"O", b"<U3", b"float128", b"V8", b"datetime64", b"f4", b"\xff\xfe"])
def test_numpy_dtype_whitelist(dtype):
    header = header_of(tagged(b"numpy.ndarray", array_record(dtype, (2,))))
    with pytest.raises(WireError, match="dtype"):
        loads(header, [b"\x00" * 16])


@pytest.mark.parametrize("dtype", [b"qint8", b"float32; import os", b"Tensor", b"__class__"])
def test_torch_dtype_whitelist(dtype):
    pytest.importorskip("torch")
    header = header_of(tagged(b"torch.Tensor", array_record(dtype, (2,))))
    with pytest.raises(WireError, match="dtype"):
        loads(header, [b"\x00" * 16])


@pytest.mark.parametrize("tag", [b"numpy.ndarray", b"torch.Tensor"])
@pytest.mark.parametrize(
    "shape, nbytes",
    [((4,), 8), ((2, 2), 20), ((0,), 4), ((), 0), ((2**61, 2**61), 16), ((1 << 40,), 8), ((3,), 0)],
    ids=str,
)
def test_shape_must_match_buffer_length(tag, shape, nbytes):
    if tag == b"torch.Tensor":
        pytest.importorskip("torch")
    header = header_of(tagged(tag, array_record(b"float32", shape)))
    with pytest.raises(WireError, match="needs .* bytes"):
        loads(header, [bytearray(nbytes)])


@pytest.mark.parametrize(
    "record",
    [
        array_record(b"float32", (-1,)),
        array_record(b"float32", (2,), index=1),
        array_record(b"float32", (2,), index=2**32 - 1),
        array_record(b"float32", (2,), flags=0x80),
        array_record(b"float32", (2,))[:-3],
        array_record(b"float32", (2,), extra=b"junk"),
        array_record(b"float32", (1,) * 65),
        b"",
        b"\x00",
    ],
    ids=range(9),
)
def test_malformed_array_records(record):
    header = header_of(tagged(b"numpy.ndarray", record))
    with pytest.raises(WireError):
        loads(header, [bytearray(8)])


def test_a_buffer_cannot_be_used_twice():
    rec = array_record(b"float32", (2,))
    header = header_of([tagged(b"numpy.ndarray", rec), tagged(b"numpy.ndarray", rec)])
    with pytest.raises(WireError, match="twice"):
        loads(header, [bytearray(8)])


def test_numpy_scalar_records_checked():
    for payload in [b"", b"\x07float32\x00\x00\x00", b"\x06object\x00" * 2, b"\xff"]:
        with pytest.raises(WireError):
            loads(header_of(tagged(b"numpy.scalar", payload)), [])


# -- limits -----------------------------------------------------------------------------------------


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_depth_limit():
    lim = Limits(max_depth=10)
    assert loads(*dumps(nested_lists(10)), limits=lim) == nested_lists(10)
    with pytest.raises(WireError, match="max_depth"):
        loads(*dumps(nested_lists(11)), limits=lim)
    deep_dict: dict = {}
    for _ in range(11):
        deep_dict = {"k": deep_dict}
    with pytest.raises(WireError, match="max_depth"):
        loads(*dumps(deep_dict), limits=lim)
    deep_tuple: tuple = ()
    for _ in range(11):
        deep_tuple = (deep_tuple,)
    with pytest.raises(WireError, match="max_depth"):
        loads(*dumps(deep_tuple), limits=lim)
    with pytest.raises(WireError, match="max_depth"):  # default limit is about 100
        loads(*dumps(nested_lists(150)))
    assert loads(*dumps(nested_lists(90))) == nested_lists(90)


def test_depth_limit_counts_nesting_not_width():
    wide = [[i, (i, [i])] for i in range(5000)]
    assert loads(*dumps(wide), limits=Limits(max_depth=4)) == wide
    with pytest.raises(WireError):
        loads(*dumps(wide), limits=Limits(max_depth=3))


def test_hostile_deep_header_is_wire_error():
    with pytest.raises(WireError):
        loads(b"\x91" * 5000 + b"\xc0", [])  # deeper than msgpack's own stack
    with pytest.raises(WireError):
        loads(b"\x91" * 500 + b"\xc0", [])


def test_header_and_buffer_count_limits():
    header, buffers = dumps({"s": "x" * 1000, "a": [np.zeros(1)] * 3})
    with pytest.raises(WireError, match="max_header_bytes"):
        loads(header, buffers, limits=Limits(max_header_bytes=100))
    with pytest.raises(WireError, match="max_buffers"):
        loads(header, buffers, limits=Limits(max_buffers=2))
    with pytest.raises(ValueError):
        Limits(max_depth=0)


def test_bad_argument_types_are_wire_errors():
    with pytest.raises(WireError):
        loads(12345, [])  # type: ignore[arg-type]
    with pytest.raises(WireError):
        loads(b"\x90", [object()])  # type: ignore[list-item]
    with pytest.raises(WireError):
        loads(b"", [])
    with pytest.raises(WireError):
        loads(b"\xc1", [])  # never-used msgpack byte
    with pytest.raises(WireError):
        loads(b"\x01\x02", [])  # trailing data


# -- fuzzing ----------------------------------------------------------------------------------------


def _sample_messages() -> list[tuple[bytes, list[memoryview]]]:
    out = []
    try:
        raise ValueError("sample")
    except ValueError as exc:
        err = exc
    from collab_core.fl_model import FLModel

    for value in [
        {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [np.float64(2.5), (1, 2**80)]},
        FLModel({"x": np.ones((2, 2), dtype=np.complex64)}, metrics={"acc": 0.5}, current_round=2),
        [err, {(1, 2): {3, 4}, "s": "text" * 5}, frozenset({1.5}), 3 + 4j],
        np.asfortranarray(np.ones((3, 2), dtype=np.int16)),
    ]:
        out.append(dumps(value))
    return out


MESSAGES = _sample_messages()


def _loads_only_wire_errors(header: bytes, buffers: list) -> None:
    try:
        loads(header, buffers, limits=Limits(max_depth=20))
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.binary(max_size=64), max_size=4))
def test_fuzz_random_bytes_to_loads(header, buffers):
    _loads_only_wire_errors(header, [bytearray(b) for b in buffers])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(MESSAGES))), st.data())
def test_fuzz_mutated_headers_to_loads(which, data):
    header, buffers = MESSAGES[which]
    mutated = bytearray(header)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(mutated) - 1))
        kind = data.draw(st.sampled_from(["flip", "byte", "cut", "dup"]))
        if kind == "flip":
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "byte":
            mutated[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del mutated[pos:]
            if not mutated:
                mutated = bytearray(b"\x00")
        else:
            mutated[pos:pos] = mutated[pos : pos + data.draw(st.integers(1, 8))]
    bufs = [bytearray(b) for b in buffers]
    if bufs and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(bufs) - 1))
        bufs[i] = bufs[i][: data.draw(st.integers(0, len(bufs[i])))]
    _loads_only_wire_errors(bytes(mutated), bufs)


def test_fuzz_every_single_bit_flip_of_a_header():
    header, buffers = MESSAGES[0]
    for pos in range(len(header)):
        for bit in range(8):
            mutated = bytearray(header)
            mutated[pos] ^= 1 << bit
            _loads_only_wire_errors(bytes(mutated), [bytearray(b) for b in buffers])


def test_fuzz_random_valid_msgpack_documents():
    rng = random.Random(1234)

    def rand_value(depth: int = 0):
        r = rng.random()
        if depth > 4 or r < 0.4:
            return rng.choice([None, True, 1, -5, 2.5, "s", b"b", msgpack.ExtType(rng.randrange(-1, 12), rng.randbytes(rng.randrange(0, 20)))])
        if r < 0.7:
            items = [rand_value(depth + 1) for _ in range(rng.randrange(0, 4))]
            if rng.random() < 0.5:
                items.insert(0, msgpack.ExtType(rng.choice([1, 3, 4, 5, 8]), rng.choice([b"", b"collab.FLModel", b"numpy.ndarray", b"x"])))
            return items
        return {rng.choice(["a", 1, 2.5, None]): rand_value(depth + 1) for _ in range(rng.randrange(0, 3))}

    for _ in range(3000):
        try:
            header = msgpack.packb(rand_value(), use_bin_type=True)
        except (ValueError, TypeError):
            continue
        _loads_only_wire_errors(header, [bytearray(8), bytearray(16)])


# -- import hygiene ---------------------------------------------------------------------------------


def test_wire_does_not_import_torch_for_numpy_messages():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import collab_core.wire as wire
        header, buffers = wire.dumps({"a": np.zeros(3), "b": [np.float32(1)], "t": (1, 2)})
        out = wire.loads(header, [bytearray(b) for b in buffers])
        assert out["a"].shape == (3,)
        assert "torch" not in sys.modules, "collab_core.wire imported torch"
        """
    )
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


def test_wire_import_does_not_import_numpy():
    code = "import sys, collab_core.wire as w; w.loads(*w.dumps({'a': (1, 2)})); assert 'numpy' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serializer_table_is_cached():
    from collab_core.wire import _codec

    dumps({"a": np.zeros(1)})
    first = _codec._codec(None)
    dumps({"a": np.zeros(1)})
    assert _codec._codec(None) is first
    wire.register_type(_Cached)
    try:
        assert _codec._codec(None) is not first  # a registration invalidates it
    finally:
        wire.unregister_type(_Cached)


import attrs  # noqa: E402


@attrs.define
class _Cached:
    x: int = 0
