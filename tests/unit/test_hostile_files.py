"""Hostile files are data: GGUFs and YAML documents made by the tests claim absurd counts, lengths,
depths and expansions; each is refused with one BadInputError naming the file, within a second and
a few MB (issue 11). Property tests (hypothesis) feed random and mutated input to both readers:
nothing but BadInputError may come out."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.core import config
from toolchain.core.config import load_yaml
from toolchain.core.errors import BadInputError
from toolchain.models import gguf_reader, synthetic
from toolchain.models.gguf_reader import read_gguf

TIME_LIMIT_S = 1.0
MEMORY_LIMIT = 32 << 20  # "a few tens of MB"
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- GGUF built byte by byte ----------------------------------------------------------------------
U8, U32, F32, STRING, ARRAY, U64 = 0, 4, 6, 8, 9, 10


def gstr(b: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes, order: str = "<") -> bytes:
    return gstr(key.encode(), order) + struct.pack(order + "I", vtype) + payload


def u32(key: str, value: int, order: str = "<") -> bytes:
    return kv(key, U32, struct.pack(order + "I", value), order)


def text(key: str, value: str, order: str = "<") -> bytes:
    return kv(key, STRING, gstr(value.encode(), order), order)


def array_header(key: str, itype: int, count: int, order: str = "<") -> bytes:
    return kv(key, ARRAY, struct.pack(order + "IQ", itype, count), order)


def tensor(name: str, dims: list[int], ttype: int = 0, offset: int = 0, order: str = "<") -> bytes:
    return gstr(name.encode(), order) + struct.pack(f"{order}I{len(dims)}QIQ", len(dims), *dims, ttype, offset)


def gguf(kvs: list[bytes], tensors: list[bytes], *, n_kv: int | None = None, n_tensors: int | None = None,
         data: int = 0, order: str = "<", version: int = 3) -> bytes:
    head = b"GGUF" + struct.pack(order + "IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32) + b"\0" * data


def valid_kvs(order: str = "<", **extra: int) -> list[bytes]:
    values = {"block_count": 2, "embedding_length": 4, "attention.head_count": 2, **extra}
    return [text("general.architecture", "llama", order), text("general.name", "tiny", order),
            u32("general.file_type", 0, order)] + [u32(f"llama.{k}", v, order) for k, v in values.items()]


def valid_file(order: str = "<") -> bytes:
    return gguf(valid_kvs(order), [tensor("token_embd.weight", [4, 4], 0, 0, order)], data=64, order=order)


@pytest.fixture()
def write(tmp_path: Path) -> Iterator[Callable[[bytes], Path]]:
    n = iter(range(1_000_000))

    def _write(content: bytes) -> Path:
        path = tmp_path / f"hostile-{next(n)}.gguf"
        path.write_bytes(content)
        return path

    yield _write


def bounded(fn: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, peak traced bytes) of fn(), asserting both limits: timed alone first, then run
    again under tracemalloc (which slows allocation-heavy code several times over)."""
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s"
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.1f} MiB"
    return elapsed, peak


def refused(path: Path, match: str, reader: Callable[[Path], object] = lambda p: read_gguf(p, use_cache=False)) -> None:
    def attempt() -> None:
        with pytest.raises(BadInputError, match=match) as info:
            reader(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message

    bounded(attempt)


def test_the_builder_makes_a_readable_file(write: Callable[[bytes], Path]) -> None:
    info = read_gguf(write(valid_file()), use_cache=False)
    assert info.architecture == "llama" and info.file_type == "F32" and info.arch["n_layer"] == 2
    assert info.params == 16 and info.weights_bytes == 64 and info.arch["head_dim"] == 2


def test_a_big_endian_file_reads_the_same(write: Callable[[bytes], Path]) -> None:
    little, big = read_gguf(write(valid_file()), use_cache=False), read_gguf(write(valid_file(">")), use_cache=False)
    assert (little.tensors, little.arch, little.file_type) == (big.tensors, big.arch, big.file_type)


@pytest.mark.parametrize("itype", [U8, U64, STRING])
def test_array_claiming_2_to_the_61_elements(write: Callable[[bytes], Path], itype: int) -> None:
    content = gguf([array_header("tokenizer.ggml.tokens", itype, 1 << 61)], [], n_tensors=1)
    assert len(content) < 200
    refused(write(content), r"claims 2305843009213693952 (elements|strings)")


def test_4m_empty_strings_claimed(write: Callable[[bytes], Path]) -> None:
    refused(write(gguf([array_header("tokenizer.ggml.tokens", STRING, 4 << 20)], [], n_tensors=1)), r"claims 4194304 strings")


def test_more_strings_than_an_array_may_hold(write: Callable[[bytes], Path]) -> None:
    count = gguf_reader.MAX_STRINGS + 1  # each 8 bytes: the file holds them all, the cap refuses them
    content = gguf([*valid_kvs(), array_header("tokenizer.ggml.tokens", STRING, count) + b"\0" * (8 * count)],
                   [tensor("token_embd.weight", [4, 4])], data=64)
    refused(write(content), rf"claims {count} strings at byte \d+ \(at most {gguf_reader.MAX_STRINGS},")


def test_strings_in_all_arrays_are_capped(write: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_reader, "MAX_STRINGS_TOTAL", 1000)
    arrays = [array_header(f"tokenizer.ggml.a{i}", STRING, 600) + b"\0" * (8 * 600) for i in range(2)]
    refused(write(gguf(valid_kvs() + arrays, [tensor("token_embd.weight", [4, 4])], data=64)), r"more than 1000 entries in all")


def test_a_large_vocabulary_of_empty_strings_is_walked_not_kept(write: Callable[[bytes], Path]) -> None:
    count = 200_000  # the genuine case, scaled down: every string read past, none materialised
    content = gguf([*valid_kvs(), array_header("tokenizer.ggml.tokens", STRING, count) + b"\0" * (8 * count)],
                   [tensor("token_embd.weight", [4, 4])], data=64)
    path = write(content)
    assert read_gguf(path, use_cache=False).arch["n_vocab"] == count
    _, peak = bounded(lambda: read_gguf(path, use_cache=False))
    assert peak < 4 << 20  # the 1.6 MB of strings never sit in memory as 200k objects


def test_block_count_2e8(write: Callable[[bytes], Path]) -> None:
    content = gguf(valid_kvs(block_count=200_000_000), [tensor("token_embd.weight", [4, 4])], data=64)
    refused(write(content), r"block_count 200000000")


def test_n_dims_1e9(write: Callable[[bytes], Path]) -> None:
    bad = gstr(b"token_embd.weight") + struct.pack("<I", 1_000_000_000) + b"\0" * 64
    refused(write(gguf(valid_kvs(), [bad])), r"claims 1000000000 dimensions")


def test_shape_bigger_than_the_file(write: Callable[[bytes], Path]) -> None:
    content = gguf(valid_kvs(), [tensor("token_embd.weight", [1 << 40, 1 << 40, 1 << 40, 1 << 40])], data=64)
    refused(write(content), r"holds more elements than the file")


@pytest.mark.parametrize(("content", "match"), [
    (b"GGML" + b"\0" * 40, r"not a GGUF file"),
    (b"GG", r"not a GGUF file"),
    (b"", r"not a GGUF file"),
    (gguf([], [], n_tensors=1 << 60), r"claims 1152921504606846976 tensors \(at most 65536\)"),
    (gguf([], [], n_tensors=1, n_kv=1 << 60), r"claims 1152921504606846976 metadata keys \(at most 65536\)"),
    (gguf([], [], n_tensors=0, n_kv=0), r"no tensors"),
    (gguf([struct.pack("<Q", 1 << 63)], [], n_tensors=1, n_kv=1, data=64), r"claims 9223372036854775808 bytes"),
    (gguf([kv("general.x", 99, b"\0" * 16)], [], n_tensors=1), r"unknown value type 99"),
    (gguf([array_header("general.x", ARRAY, 2) + b"\0" * 40], [], n_tensors=1), r"arrays of arrays"),
    (gguf([u32("general.x", 1), u32("general.x", 2)], [], n_tensors=1), r"duplicate metadata key"),
    (gguf([gstr(b"general.\xff") + struct.pack("<I", U8) + b"\0"], [], n_tensors=1), r"not UTF-8"),
    (gguf([*valid_kvs(), u32("general.alignment", 3)], [tensor("token_embd.weight", [4, 4])], data=64), r"not a power of two"),
    (gguf([*valid_kvs(), u32("general.alignment", 0)], [tensor("token_embd.weight", [4, 4])], data=64), r"not a power of two"),
    (gguf([*valid_kvs(), kv("general.alignment", F32, struct.pack("<f", 32))], [tensor("token_embd.weight", [4, 4])], data=64),
     r"alignment should be a uint32"),
    (gguf(valid_kvs(), [tensor("token_embd.weight", [4, 4], ttype=99)], data=64), r"unknown ggml type 99"),
    (gguf(valid_kvs(), [tensor("a", [4]), tensor("a", [4])], data=64), r"duplicate tensor a"),
    (gguf(valid_kvs(), [tensor("token_embd.weight", [4, 4], offset=1 << 40)], data=64), r"past the end"),
    (gguf(valid_kvs(), [tensor("token_embd.weight", [4, 4])], data=63), r"past the end"),
    (gguf(valid_kvs(), [gstr(b"x" * 5000) + struct.pack("<I", 0)]), r"longer than 4096 bytes"),
    (gguf(valid_kvs(), [tensor("token_embd.weight", [4, 4])], data=64, version=1), r"version 1 is not supported"),
])
def test_damaged_headers(write: Callable[[bytes], Path], content: bytes, match: str) -> None:
    refused(write(content), match)


def test_every_truncation_of_a_header_is_refused(write: Callable[[bytes], Path]) -> None:
    whole = valid_file()
    for n in range(len(whole)):
        refused(write(whole[:n]), r"truncated|not a GGUF|past the end")


def test_the_cache_is_keyed_by_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDEPLOY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    path.write_bytes(valid_file())
    first = read_gguf(path)
    assert len(list((tmp_path / "cache" / "gguf-index").glob("*.json"))) == 1
    assert read_gguf(path) == first  # from the index
    path.write_bytes(valid_file()[:-1])  # changed: size and mtime differ, so it is read again
    with pytest.raises(BadInputError, match="past the end"):
        read_gguf(path)
    path.write_bytes(valid_file())
    next(iter((tmp_path / "cache" / "gguf-index").glob("*.json"))).write_text("{not json")
    assert read_gguf(path) == first  # a damaged index entry is a miss, never an error


# -- YAML -----------------------------------------------------------------------------------------
BOMB = "".join(f"{a}: &{a} [{','.join([f'*{p}'] * 9)}]\n" for p, a in zip("abcdefgh", "bcdefghi", strict=True))
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + BOMB


@pytest.fixture()
def yaml_file(tmp_path: Path) -> Callable[[bytes], Path]:
    def _write(content: bytes) -> Path:
        path = tmp_path / "target.yaml"
        path.write_bytes(content)
        return path

    return _write


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure-python"])
@pytest.mark.parametrize(("content", "match"), [
    (BOMB.encode(), r"aliases expand to more than"),
    (b"a: &a [*a]\n", r"refers to the node that contains it"),
    (b"a: " + b"[" * 20_000 + b"]" * 20_000, r"nested deeper than 64 levels"),
    (b"a: " + b"{b: " * 20_000 + b"1" + b"}" * 20_000, r"nested deeper than 64 levels"),
    (b"".join(b" " * i + b"k:\n" for i in range(100)), r"nested deeper than 64 levels"),
    ("name: caf\xe9\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 on line 1\)"),
    (b"a: " + b"x" * (config.MAX_YAML_BYTES + 1), r"larger than 256 KiB"),
    (b"a: 2024-13-01\n", r"not valid YAML"),
    (b"a: [\n", r"not valid YAML"),
    (b"- 1\n", r"expected a mapping"),
])
def test_hostile_yaml(yaml_file: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch, content: bytes, match: str, libyaml: bool) -> None:
    if not libyaml:
        if b"1," * 1000 in content:
            pytest.skip("pure-Python PyYAML takes seconds to parse 256 KiB: the byte cap bounds it, not this limit")
        if content.count(b"[") > 1000 or content.count(b"{") > 1000:
            content = content.replace(b"[" * 20_000, b"[" * 500).replace(b"]" * 20_000, b"]" * 500)
            content = content.replace(b"{b: " * 20_000, b"{b: " * 500).replace(b"}" * 20_000, b"}" * 500)
        monkeypatch.setattr(yaml, "__with_libyaml__", False)
    refused(yaml_file(content), match, reader=load_yaml)


def test_documents_with_too_many_values(yaml_file: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "MAX_YAML_NODES", 1000)  # the real cap (100,000) needs ~200 KB of YAML
    refused(yaml_file(b"a: [" + b"1," * 1200 + b"]"), r"more than 1000 values", reader=load_yaml)
    assert len(load_yaml(yaml_file(b"a: [" + b"1," * 900 + b"]"))["a"]) == 900


def test_the_272_byte_bomb_is_refused_fast(yaml_file: Callable[[bytes], Path]) -> None:
    assert len(BOMB) < 400
    refused(yaml_file(BOMB.encode()), r"alias bomb", reader=load_yaml)


def test_shared_blocks_still_load(yaml_file: Callable[[bytes], Path]) -> None:
    data = load_yaml(yaml_file(b"defaults: &d {user: pi, timeout: 30}\nboards:\n  a: {<<: *d, host: a}\n  b: *d\n"))
    assert data["boards"] == {"a": {"user": "pi", "timeout": 30, "host": "a"}, "b": {"user": "pi", "timeout": 30}}


# -- property tests -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def real_header(fuzz_dir: Path) -> bytes:
    spec = synthetic.SyntheticSpec("synth-fuzz", n_layer=1, n_embd=32, n_head=2, n_head_kv=1, n_ff=64, n_vocab=300, context_length=64)
    return synthetic.write_f16(spec, fuzz_dir / "F16.gguf").read_bytes()


def _read_or_refuse(path: Path) -> None:
    try:
        read_gguf(path, use_cache=False)
    except BadInputError as exc:
        assert str(exc).startswith(f"{path}: ")


@FUZZ
@given(prefix=st.sampled_from([b"", b"GGUF", b"GGUF\x03\0\0\0", b"GGUF\x03\0\0\0\x01" + b"\0" * 7]), body=st.binary(max_size=600))
def test_random_bytes_are_read_or_refused(fuzz_dir: Path, prefix: bytes, body: bytes) -> None:
    path = fuzz_dir / "random.gguf"
    path.write_bytes(prefix + body)
    _read_or_refuse(path)


@FUZZ
@given(data=st.data())
def test_mutated_real_headers_are_read_or_refused(fuzz_dir: Path, real_header: bytes, data: st.DataObject) -> None:
    content = bytearray(real_header)
    span = min(len(content), 16_384)  # the header and the first tensor data
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, span - 1))
        content[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        content = content[: data.draw(st.integers(0, len(content)))]
    path = fuzz_dir / "mutated.gguf"
    path.write_bytes(bytes(content))
    _read_or_refuse(path)


YAMLISH = st.text(alphabet=st.sampled_from([*"ab1 :-,[]{}&*!|>'\"#?<\n\t.\\%@`~=", "\xe9", "\0", "\ufeff"]), max_size=200)


@FUZZ
@given(doc=YAMLISH)
def test_random_yaml_is_loaded_or_refused(fuzz_dir: Path, doc: str) -> None:
    path = fuzz_dir / "random.yaml"
    path.write_bytes(doc.encode("utf-8", "surrogatepass"))
    try:
        assert isinstance(load_yaml(path), dict)
    except BadInputError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_random_bytes_as_yaml_are_loaded_or_refused(fuzz_dir: Path, raw: bytes) -> None:
    path = fuzz_dir / "bytes.yaml"
    path.write_bytes(raw)
    try:
        assert isinstance(load_yaml(path), dict)
    except BadInputError as exc:
        assert str(exc).startswith(f"{path}: ")


# --- what a target prints ------------------------------------------------------------------------


def test_a_command_that_prints_without_end_is_stopped(tmp_path: Path) -> None:
    """The local transport (the same reader as adb's) stops a command past MAX_OUTPUT_BYTES: one
    line, the target error's exit code, the process group killed; stdin still reaches the command."""
    from toolchain.core.errors import EXIT_TARGET, TargetError
    from toolchain.transports.local import LocalTransport

    pidfile = tmp_path / "pid"
    with LocalTransport() as t:
        start = time.monotonic()
        with pytest.raises(TargetError, match="printed more than 16 MiB") as info:
            t.run(["sh", "-c", f'echo $$ > {pidfile}; yes edgedeploy & yes edgedeploy >&2; wait'], timeout=120)
        assert info.value.exit_code == EXIT_TARGET and "\n" not in info.value.message
        assert time.monotonic() - start < 30
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the printing command survived"
        data = b"x" * (1 << 20)  # more than a pipe buffer: written while output is read
        assert t.run(["wc", "-c"], stdin=data).stdout.strip() == str(len(data))
        big = tmp_path / "runaway.jsonl"
        big.write_bytes(b"{}\n" * 100_000)
        with pytest.raises(TargetError, match="more than the 1000 expected"):
            t.get(str(big), tmp_path / "copy.jsonl", max_bytes=1000)
        assert not (tmp_path / "copy.jsonl").exists()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_plan_for_a_board_loads_neither_the_database_nor_numpy() -> None:
    """Nothing measured yet: a plan must not pay for SQLAlchemy (~0.3 s) or numpy (~0.2 s) (the 3x
    start-up goal of bench/plan_speed.py rests on it)."""
    import subprocess
    import sys

    code = ("import sys\nfrom toolchain.plan.request import build_plan_request, plan_for\n"
            "p = plan_for(None, build_plan_request(budget='120ms', board='rpi5-8gb'))\n"
            "assert p.selected is not None\n"
            "print(sorted(m for m in ('sqlalchemy', 'numpy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_parsed_yaml_is_kept_by_content_and_a_damaged_index_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_index", None)
    monkeypatch.setattr(config, "_index_added", {})
    monkeypatch.setattr(config, "_index_path", lambda: tmp_path / "cache" / "yaml-index.json")
    monkeypatch.setattr(config.atexit, "register", lambda fn: None)  # saved by hand below
    f = tmp_path / "board.yaml"
    f.write_text("id: a\nram: 8\nwhen: 2024-01-01\n")  # a date: JSON cannot hold it, so it is not kept
    g = tmp_path / "other.yaml"
    g.write_text("id: b\nram: 4\n")
    assert load_yaml(g) == {"id": "b", "ram": 4}
    load_yaml(f)
    config._save_index()
    kept = json.loads((tmp_path / "cache" / "yaml-index.json").read_text())
    assert list(kept.values()) == ['{"id":"b","ram":4}']
    monkeypatch.setattr(config, "_index", None)  # a new process: served from the index, not parsed
    monkeypatch.setattr(config, "_parse_yaml", lambda path, raw: pytest.fail(f"{path} parsed again"))
    assert load_yaml(g) == {"id": "b", "ram": 4}
    monkeypatch.undo()
    monkeypatch.setattr(config, "_index", None)
    monkeypatch.setattr(config, "_index_added", {})
    monkeypatch.setattr(config, "_index_path", lambda: tmp_path / "cache" / "yaml-index.json")
    monkeypatch.setattr(config.atexit, "register", lambda fn: None)
    g.write_text("id: b\nram: 16\n")  # an edit is new content: parsed
    assert load_yaml(g) == {"id": "b", "ram": 16}
    (tmp_path / "cache" / "yaml-index.json").write_text("[" * 100_000)
    monkeypatch.setattr(config, "_index", None)
    assert load_yaml(g) == {"id": "b", "ram": 16}
    digest = next(iter(kept))
    monkeypatch.setattr(config, "_index", {digest: "[" * 100_000})
    g.write_text("id: b\nram: 4\n")
    assert load_yaml(g) == {"id": "b", "ram": 4}
