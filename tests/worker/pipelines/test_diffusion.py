"""Loading real families offline: a tiny random model of the same class, saved into a Hugging Face cache
layout (models--org--name/snapshots/<rev>/ + refs/main), loads by repo id with no network, and runs a job."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from podstream.jobspec import Params
from tests.worker.support import collect, decode_video, png_base64, reassemble
from worker.handler import make_handler
from worker.pipelines import UnknownModel, diffusion, load_model, ltx, sdxl, svd, tiny
from worker.pipelines.diffusion import ModelNotFound

REVISION = "0123456789abcdef0123456789abcdef01234567"


def save_to_hf_cache(pipe: Any, cache: Path, repo: str) -> Path:
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    snapshot = root / "snapshots" / REVISION
    pipe.save_pretrained(snapshot)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PODSTREAM_DEVICE", "cpu")
    monkeypatch.delenv("PODSTREAM_DTYPE", raising=False)
    monkeypatch.delenv("PODSTREAM_VARIANT", raising=False)
    return cache


async def run_job(model: Any, job_input: dict[str, Any]) -> Any:
    got = reassemble(await collect(make_handler(model)({"id": "j", "input": job_input})), "j")
    assert got.problems == []
    assert not got.assembler.failed, got.assembler.failed
    return got


async def test_svd_loads_offline_from_the_hf_cache(hf_cache: Path) -> None:
    save_to_hf_cache(tiny.svd_pipeline(), hf_cache, "podstream-test/tiny-svd")
    model = svd.load("podstream-test/tiny-svd")
    assert isinstance(model, svd.SVDModel) and model.tasks == {"image-to-video"}
    params = {"frames": 8, "width": 64, "height": 64, "steps": 2}
    got = await run_job(
        model, {"task": "image-to-video", "items": [{"image": png_base64()}], "params": params}
    )
    assert decode_video(got.file(0)) == (8, 64, 64, "h264")


async def test_sdxl_loads_offline_from_the_hf_cache(hf_cache: Path) -> None:
    save_to_hf_cache(tiny.sdxl_pipeline(), hf_cache, "podstream-test/tiny-sdxl")
    model = load_model("sdxl", "podstream-test/tiny-sdxl")
    assert isinstance(model, sdxl.TextToImageModel)
    params = {"width": 64, "height": 64, "steps": 2}
    got = await run_job(model, {"task": "text-to-image", "items": [{"prompt": "a cat"}], "params": params})
    with PILImage.open(io.BytesIO(got.file(0))) as picture:
        assert picture.size == (64, 64)


async def test_ltx_loads_offline_from_a_local_directory_and_the_cache(hf_cache: Path, tmp_path: Path) -> None:
    pipe = tiny.ltx_pipeline()
    save_to_hf_cache(pipe, hf_cache, "podstream-test/tiny-ltx")
    pipe.save_pretrained(tmp_path / "ltx-dir")
    for source in ("podstream-test/tiny-ltx", str(tmp_path / "ltx-dir")):
        model = ltx.load(source)
        assert isinstance(model, ltx.LTXModel)
    model.max_sequence_length = 32
    params = {"frames": 9, "width": 32, "height": 32, "steps": 2}
    got = await run_job(model, {"task": "text-to-video", "items": [{"prompt": "waves"}], "params": params})
    assert decode_video(got.file(0)) == (9, 32, 32, "h264")


def test_a_missing_model_says_where_it_looked(hf_cache: Path) -> None:
    with pytest.raises(ModelNotFound) as info:
        svd.load("nobody/not-there")
    message = str(info.value)
    assert "'nobody/not-there'" in message and str(hf_cache) in message and "(offline)" in message
    assert "podstream prefetch nobody/not-there" in message


def test_unknown_family() -> None:
    with pytest.raises(UnknownModel, match="unknown model 'dalle'; choose one of tiny, svd, sdxl, ltx"):
        load_model("dalle")


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert diffusion.hf_cache_dir() == str(tmp_path / "hub")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setattr(diffusion, "VOLUME", tmp_path)
    assert diffusion.hf_cache_dir() == str(tmp_path / "huggingface-cache" / "hub")
    monkeypatch.setattr(diffusion, "VOLUME", tmp_path / "not-mounted")
    assert diffusion.hf_cache_dir() is None


def test_dtype_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("PODSTREAM_DTYPE", raising=False)
    assert diffusion.dtype("cpu") is torch.float32
    assert diffusion.dtype("cuda") is torch.float16
    assert diffusion.dtype("cuda:0", "bfloat16") is torch.bfloat16
    monkeypatch.setenv("PODSTREAM_DTYPE", "float64")
    assert diffusion.dtype("cuda") is torch.float64
    monkeypatch.setenv("PODSTREAM_DTYPE", "nonsense")
    with pytest.raises(ValueError, match="not a torch dtype"):
        diffusion.dtype("cpu")


def test_shape_rules_are_checked_before_a_job_runs() -> None:
    model = ltx.LTXModel.__new__(ltx.LTXModel)  # rules only: no pipeline needed
    model.check("text-to-video", Params(frames=17, width=64, height=32))
    with pytest.raises(ValueError, match="width: must be a multiple of 32"):
        model.check("text-to-video", Params(width=48))
    with pytest.raises(ValueError, match=r"frames: must be 8k\+1"):
        model.check("text-to-video", Params(frames=16))
