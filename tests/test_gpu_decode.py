"""GPU decoding (pretrain.decoder: torchcodec-cuda): the error that names what is missing,
the configured CPU fallback, and, on a machine with a GPU, frames equal to the CPU reader's."""

from __future__ import annotations

import pytest
import torch

from conftest import make_video
from svt.loader import VideoDataset, check_gpu_decoder, loader_workers, read_frames
from svt.manifest import ManifestRow, write_rows
from svt.pretrain import gpu_decoder_or_fallback

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-decode")
    make_video(root / "a.mp4", size=(96, 64), fps=30, seconds=1.0, extra=["-g", "16"])
    manifest = root / "train.csv"
    write_rows(manifest, [ManifestRow("a.mp4", 0, "a", "train", 30, 30.0, 1.0, 96, 64, "a.mp4")],
               ManifestRow)
    return VideoDataset(manifest, root, lambda n, fps, g: [[0, 1]], backend="torchcodec-cuda")


def test_gpu_readers_decode_in_the_training_process():
    assert loader_workers("torchcodec-cuda", 8) == 0
    assert loader_workers("pyav", 8) == 8


@pytest.mark.cpu_only
@pytest.mark.skipif(HAS_CUDA, reason="checks the message for a machine without a CUDA device")
def test_without_a_gpu_the_job_stops_naming_what_is_missing(dataset, capsys):
    with pytest.raises(RuntimeError, match="torchcodec-cuda.*no CUDA device"):
        check_gpu_decoder("torchcodec-cuda", dataset.videos_root / "a.mp4")
    with pytest.raises(SystemExit, match="svt.pretrain: decoder 'torchcodec-cuda'.*no CUDA device"):
        gpu_decoder_or_fallback({"decoder": "torchcodec-cuda"}, dataset, rank=0)
    pc = {"decoder": "torchcodec-cuda", "decoder_fallback": "none"}
    with pytest.raises(SystemExit):
        gpu_decoder_or_fallback(pc, dataset, rank=0)
    # the CPU fallback only when the config asks for it, and said out loud
    pc["decoder_fallback"] = "pyav"
    assert gpu_decoder_or_fallback(pc, dataset, rank=0) == "pyav"
    assert "WARNING" in capsys.readouterr().err
    assert gpu_decoder_or_fallback({"decoder": "pyav"}, dataset, rank=0) == "pyav"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_gpu_decode_matches_the_cpu_reader(dataset):
    path = dataset.videos_root / "a.mp4"
    try:
        check_gpu_decoder("torchcodec-cuda", path)
    except RuntimeError as exc:  # a GPU host without NVDEC support: the message must say why
        assert "NVDEC" in str(exc)
        pytest.skip(str(exc))
    idx = [29, 0, 16, 15, 3, 3]
    gpu = read_frames(path, idx, "torchcodec-cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    cpu = read_frames(path, idx, "pyav")
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert diff.float().mean() < 2.0, diff.float().mean()  # YUV->RGB may round differently
    item = dataset[0]
    assert item["clips"][0].device.type == "cuda"
