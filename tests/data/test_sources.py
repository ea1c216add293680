"""One contract suite for every source: file://, s3:// (moto on loopback), http:// (Range server), memory://."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from swell.core.errors import ConfigError, DataError, NotFound
from swell.data.config import DatasetConfig
from swell.data.sources import MemorySource, Source, open_source
from tests.data.servers import range_server, s3_server

FILES = {"model.safetensors": bytes(range(256)) * 4099, "sub/config.json": b'{"a": 1}', "empty.bin": b""}


def _write(root: Path) -> None:
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


@pytest.fixture(scope="module", params=["file", "s3", "http", "memory"])
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    root = tmp_path_factory.mktemp(request.param)
    _write(root)
    if request.param == "file":
        yield open_source(DatasetConfig(source=f"file://{root}"))
    elif request.param == "http":
        with range_server(root) as (url, _):
            yield open_source(DatasetConfig(source=f"{url}/"))
    elif request.param == "memory":
        yield MemorySource("memory://contract", FILES)
    else:
        with s3_server("models") as endpoint:
            src = open_source(
                DatasetConfig(
                    source="s3://models/org/m",
                    endpoint=endpoint,
                    region="us-east-1",
                    access_key_id="testing",
                    secret_access_key="testing",
                )
            )
            _put_all(src)
            yield src


def _put_all(src: Source) -> None:
    import obstore

    for name, data in FILES.items():
        obstore.put(src._store, name, data)  # type: ignore[attr-defined]


def test_info_gives_size(source: Source) -> None:
    for name, data in FILES.items():
        info = source.info(name)
        assert (info.path, info.size) == (name, len(data))


MODEL = FILES["model.safetensors"]


def read_range(source: Source, path: str, start: int, length: int) -> bytes:
    """Bytes [start, start + length) through `read_into` (fewer at the end of the file)."""
    buf = bytearray(length)
    return bytes(buf[: source.read_into(path, start, memoryview(buf))])


@pytest.mark.parametrize(("start", "length"), [(0, 10), (1000, 70_000), (len(MODEL) - 5, 5)])
def test_read_range(source: Source, start: int, length: int) -> None:
    assert read_range(source, "model.safetensors", start, length) == MODEL[start : start + length]


def test_read_range_of_nothing(source: Source) -> None:
    assert read_range(source, "model.safetensors", 10, 0) == b""


def test_read_into_fills_the_buffer_and_is_short_only_at_the_end(source: Source) -> None:
    buf = bytearray(b"x" * 100_000)
    assert source.read_into("model.safetensors", 500, memoryview(buf)[10:80_010]) == 80_000
    assert buf[10:80_010] == MODEL[500:80_500] and buf[:10] == b"x" * 10 and buf[80_010:] == b"x" * 19_990
    tail = bytearray(64)
    assert source.read_into("model.safetensors", len(MODEL) - 16, memoryview(tail)[:16]) == 16
    assert tail[:16] == MODEL[-16:]


def test_missing_file_is_not_found(source: Source) -> None:
    with pytest.raises(NotFound):
        source.info("nope.bin")
    with pytest.raises((NotFound, DataError)):
        read_range(source, "nope.bin", 0, 10)


def test_list_or_refuse(source: Source) -> None:
    if not source.can_list:
        with pytest.raises(DataError, match="cannot list"):
            source.list()
        return
    listed = {o.path: o.size for o in source.list()}
    assert listed == {name: len(data) for name, data in FILES.items()}
    assert [o.path for o in source.list("sub/")] == ["sub/config.json"]


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="source must start with"):
        DatasetConfig(source="ftp://x/y")
    with pytest.raises(ConfigError, match="unknown source scheme"):
        open_source(DatasetConfig.model_construct(source="gopher://x"))


def test_s3_endpoint_and_credentials_from_the_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    with s3_server("envbucket") as endpoint:
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # plain http on loopback, as with MinIO
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        src = open_source(DatasetConfig(source="s3://envbucket/org/m"))  # nothing but the URI
        _put_all(src)
        assert src.info("model.safetensors").size == len(MODEL)
        assert read_range(src, "model.safetensors", 7, 9) == MODEL[7:16]
        assert {o.path for o in src.list()} == set(FILES)
