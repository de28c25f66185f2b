"""Tests for svt.curate: motion energy, dominant frequency, sharpness, duplicate and leakage
search, and the command line, on real encoded videos (svt.demo_data renders, ffmpeg encodes).

Expected values come from how the clips are made (a still image, a brightness oscillating at
2 Hz, a copy cut at frame 20), not from the code under test.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from svt import curate
from svt.demo_data import render_clip, write_video
from svt.manifest import ManifestRow, read_rows, write_rows
from conftest import INSTALL_PYTHON_DEPS, REPO, ffprobe, missing

FPS = 25
SIZE = (128, 96)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([7, *key])


def _still(frames: int = 48, noise: float = 2.0) -> np.ndarray:
    """A still textured image (a demo frame) with light independent noise on every frame."""
    image = render_clip("TranslateLeft", _rng(1), 1, SIZE)[0].astype(np.float32)
    noisy = image[None] + _rng(2).normal(0, noise, (frames,) + image.shape)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def _oscillating(hz: float, frames: int, fps: float) -> np.ndarray:
    """A still texture whose brightness oscillates at ``hz``."""
    image = render_clip("ZoomIn", _rng(3), 1, SIZE)[0].astype(np.float32)
    gain = 1 + 0.3 * np.sin(2 * np.pi * hz * np.arange(frames) / fps)
    return np.clip(image[None] * gain[:, None, None, None] + 0.5, 0, 255).astype(np.uint8)


def _frames_fps(path: Path) -> tuple[int, float]:
    video = ffprobe(path)["video"]
    num, den = (int(x) for x in video["r_frame_rate"].split("/"))
    return int(video["nb_read_frames"]), num / den


def _trim(src: Path, dst: Path, start: int) -> Path:
    """Cut ``src`` from frame ``start`` on and re-encode with another codec and quality."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-vf",
                    f"trim=start_frame={start},setpts=PTS-STARTPTS", "-c:v", "libx264", "-crf", "28",
                    "-preset", "fast", "-pix_fmt", "yuv420p", str(dst)], check=True)
    return dst


def _analyse(path: Path, **kw) -> curate.VideoResult:
    frames, fps = _frames_fps(path)
    return curate.analyse_video(path, frames, fps, **kw)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Real encoded clips: a static one, moving demo clips, a trimmed re-encoded copy."""
    d = tmp_path_factory.mktemp("curate")
    v = {"static": write_video(d / "static.avi", _still(), FPS)}
    for k, cls in enumerate(["TranslateLeft", "RotateClockwise", "ZoomOut", "Oscillate"]):
        v[cls] = write_video(d / f"{cls}.avi", render_clip(cls, _rng(10 + k), 48, SIZE), FPS)
    v["source"] = write_video(d / "source.avi", render_clip("TranslateRight", _rng(20), 96, SIZE), FPS)
    v["trimmed"] = _trim(v["source"], d / "trimmed.mp4", 20)
    for k, cls in enumerate(["TranslateRight", "TranslateDown", "Oscillate"]):
        v[f"other{k}"] = write_video(d / f"other{k}.avi", render_clip(cls, _rng(30 + k), 96, SIZE), FPS)
    return v


@pytest.fixture(scope="module")
def analysed(videos) -> dict[str, curate.VideoResult]:
    return {name: _analyse(path) for name, path in videos.items()}


# --------------------------------------------------------------------------------------
# per-video statistics
# --------------------------------------------------------------------------------------

def test_static_clip_is_near_zero_and_moving_clips_are_well_above_the_threshold(analysed):
    static = analysed["static"].motion_energy
    assert 0 <= static < min(2e-4, curate.MOTION_THRESHOLD / 2)  # measured 1.1e-4
    for cls in ["TranslateLeft", "RotateClockwise", "ZoomOut", "Oscillate", "source"]:
        assert analysed[cls].motion_energy > 2 * curate.MOTION_THRESHOLD, cls
        assert analysed[cls].motion_energy > 20 * static, cls


def test_motion_energy_is_energy_outside_dc_over_total():
    rng = np.random.default_rng(0)
    small = rng.random((12, 3, 4, 4))
    motion, _ = curate.temporal_stats(small, 8.0, top=1.0)
    x = small.reshape(12, 3, 16)
    var = x.var(axis=0).sum(axis=0)  # per patch, channels summed
    total = (x ** 2).mean(axis=0).sum(axis=0)
    assert motion == pytest.approx(var.sum() / total.sum(), rel=1e-9)
    # top=0.25: the quarter of the patches with most energy outside DC, as a ratio of sums
    sel = np.argsort(-var)[:4]
    assert curate.temporal_stats(small, 8.0, top=0.25)[0] == pytest.approx(var[sel].sum() / total[sel].sum())
    # a constant clip has no energy outside DC, a single frame no spectrum at all
    assert curate.temporal_stats(np.full((10, 3, 4, 4), 0.4), 8.0) == (0.0, 0.0)
    assert curate.temporal_stats(small[:1], 8.0) == (0.0, 0.0)


def test_dominant_frequency_of_a_periodic_clip(tmp_path):
    # in memory, sampled at 10 Hz, 1.5 Hz
    stats = curate.video_stats(_oscillating(1.5, 40, 10), 10)
    assert stats["dominant_hz"] == pytest.approx(1.5, abs=0.1)
    assert stats["motion_energy"] > 10 * curate.MOTION_THRESHOLD
    # a real file at 25 fps, brightness at 2 Hz: 3-frame blocks, 8.33 samples per second
    path = write_video(tmp_path / "osc.avi", _oscillating(2.0, 100, FPS), FPS)
    res = _analyse(path)
    assert res.step == 3 and res.rate == pytest.approx(25 / 3)
    assert res.dominant_hz == pytest.approx(2.0, abs=0.15)
    # the same clip at 30 fps is sampled with 4-frame blocks (7.5 Hz); still 2 Hz
    path30 = write_video(tmp_path / "osc30.avi", _oscillating(2.0, 120, 30), 30)
    res30 = _analyse(path30)
    assert res30.step == 4 and res30.dominant_hz == pytest.approx(2.0, abs=0.15)


def test_sharpness_is_lower_for_a_blurred_copy(tmp_path, analysed):
    clip = render_clip("TranslateUp", _rng(40), 24, SIZE)
    blurred = np.stack([gaussian_filter(f.astype(np.float32), sigma=(1.5, 1.5, 0)) for f in clip])
    blurred = np.clip(blurred + 0.5, 0, 255).astype(np.uint8)
    mem_sharp = curate.video_stats(clip, FPS)["sharpness"]
    mem_blur = curate.video_stats(blurred, FPS)["sharpness"]
    assert 0 < mem_blur < 0.5 * mem_sharp
    sharp = _analyse(write_video(tmp_path / "sharp.avi", clip, FPS, **{"q:v": 2})).sharpness
    blur = _analyse(write_video(tmp_path / "blur.avi", blurred, FPS, **{"q:v": 2})).sharpness
    assert 0 < blur < 0.5 * sharp
    # a flat frame has no spectrum above DC
    assert curate.sharpness(np.full((2, 40, 40), 0.5, dtype=np.float32)) == 0.0


# --------------------------------------------------------------------------------------
# duplicates
# --------------------------------------------------------------------------------------

def test_overlap_correlation_matches_direct_pearson():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((13, 5)), rng.standard_normal((9, 5))
    lags, score = curate.overlap_correlation(a, b, min_overlap=3, min_overlap_fraction=0)
    assert lags.tolist() == list(range(-8, 13))
    for lag, s in zip(lags, score):
        lo, hi = max(0, -lag), min(len(b), len(a) - lag)
        if hi - lo < 3:
            assert np.isnan(s)
            continue
        x, y = a[lo + lag:hi + lag], b[lo:hi]
        x, y = x - x.mean(0), y - y.mean(0)
        assert s == pytest.approx((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()), abs=1e-9)


def test_align_finds_a_planted_offset_and_is_brightness_invariant():
    rng = np.random.default_rng(2)
    a = np.cumsum(rng.standard_normal((50, 6)), axis=0)
    b = 0.5 * a[17:41] + 3.0  # other contrast and brightness
    offset, score = curate.align(a, b)
    assert offset == pytest.approx(17, abs=0.01) and score == pytest.approx(1.0)
    offset, score = curate.align(b, a)  # the other way round: negative offset
    assert offset == pytest.approx(-17, abs=0.01) and score == pytest.approx(1.0)
    unrelated = curate.align(a, np.cumsum(rng.standard_normal((30, 6)), axis=0))[1]
    assert unrelated < 0.9


def test_trimmed_reencoded_copy_is_found_with_its_frame_offset(videos, analysed):
    names = ["source", "trimmed", "other0", "other1", "other2", "TranslateLeft", "Oscillate"]
    res = [analysed[n] for n in names]
    assert _frames_fps(videos["trimmed"]) == (96 - 20, FPS)
    stats = {}
    dups = curate.find_duplicates([r.signature for r in res], [r.rate for r in res],
                                  fine=[r.fine for r in res], fine_rates=[r.fps for r in res],
                                  stats=stats)
    assert [(names[d.i], names[d.j]) for d in dups] == [("source", "trimmed")]
    d = dups[0]
    assert abs(d.offset_frames - 20) <= 1
    assert d.offset_seconds == pytest.approx(d.offset_frames / FPS)
    assert curate.DUPLICATE_THRESHOLD <= d.score <= 1
    # the coarse alignment alone is already within a sample (3 frames) of the truth
    steps, score = curate.align(analysed["source"].signature, analysed["trimmed"].signature)
    assert abs(steps * analysed["source"].step - 20) <= 3 and score == pytest.approx(d.score)
    # every unrelated pair scores well below the threshold, even when aligned by force
    for x, y in itertools.combinations(range(len(res)), 2):
        if {names[x], names[y]} != {"source", "trimmed"}:
            assert curate.align(res[x].signature, res[y].signature)[1] < curate.DUPLICATE_THRESHOLD


def _random_signature(rng, length: int, channels: int = 48) -> np.ndarray:
    """Smooth random multichannel signal (a moving average of noise), normalised."""
    noise = rng.standard_normal((length + 4, channels))
    smooth = sum(noise[k:k + length] for k in range(5))
    return curate._normalise(smooth)


def test_candidates_do_not_compare_all_pairs_but_find_planted_duplicates(monkeypatch):
    rng = np.random.default_rng(3)
    sigs = [_random_signature(rng, int(rng.integers(30, 60))) for _ in range(54)]
    planted = {}
    for src in (0, 10, 20, 30, 40, 50):  # 6 trimmed copies with 10% noise: N = 60
        start = int(rng.integers(1, 12))
        part = sigs[src][start:start + 16]
        planted[src, len(sigs)] = start
        sigs.append(part + 0.1 * part.std() * rng.standard_normal(part.shape))
    calls = []
    real_align = curate.align

    def counting_align(a, b, **kw):
        calls.append(1)
        return real_align(a, b, **kw)

    monkeypatch.setattr(curate, "align", counting_align)
    stats = {}
    dups = curate.find_duplicates(sigs, stats=stats)
    n = len(sigs)
    assert n == 60 and stats["all_pairs"] == n * (n - 1) // 2 == 1770
    assert len(calls) == stats["aligned"] == stats["candidates"]
    assert len(calls) <= 60  # far fewer than 1770
    assert {(d.i, d.j): round(d.offset_seconds) for d in dups} == planted


def test_candidate_pairs_validates_and_skips_short_signatures():
    rng = np.random.default_rng(4)
    a = _random_signature(rng, 30)
    stats = {}
    assert curate.candidate_pairs([a, a.copy(), a[:5]], window=8, stats=stats) == {(0, 1)}
    assert stats["indexed"] == 2
    with pytest.raises(ValueError, match="channel counts"):
        curate.candidate_pairs([a, a[:, :3]])
    assert curate.candidate_pairs([]) == set()


def test_duplicate_kinds():
    assert curate.duplicate_kind("demo/train", "demo/train", "demo/train") == "within-split"
    assert curate.duplicate_kind("demo/test", "demo/test", "demo/train") == "within-split"
    assert curate.duplicate_kind("demo/train", "demo/test", "demo/train") == "leakage"
    assert curate.duplicate_kind("demo/test", "demo/train", "demo/train") == "leakage"
    assert curate.duplicate_kind("demo/val", "demo/test", "demo/train") == "cross-split"
    assert curate.tsv_name("demo/train") == "videos-demo-train.tsv"


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

def _row(path: Path, root: Path, label: str, split: str) -> ManifestRow:
    frames, fps = _frames_fps(path)
    return ManifestRow(path=path.relative_to(root).as_posix(), label=0, label_name=label, split=split,
                       frames=frames, fps=fps, duration=frames / fps, width=SIZE[0], height=SIZE[1],
                       source=path.name)


@pytest.fixture(scope="module")
def dataset(videos, tmp_path_factory):
    """train: static, source, other0, other1; test: trimmed copy of source, other2, a broken file."""
    root = videos["source"].parent
    broken = root / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    d = tmp_path_factory.mktemp("manifests")
    train = [_row(videos[n], root, n, "train") for n in ("static", "source", "other0", "other1")]
    test = [_row(videos[n], root, n, "test") for n in ("trimmed", "other2")]
    test.append(ManifestRow("broken.mp4", 0, "broken", "test", 40, 25.0, 1.6, 128, 96, "broken.mp4"))
    write_rows(d / "train.csv", train, ManifestRow)
    write_rows(d / "test.csv", test, ManifestRow)
    return {"root": root, "train": d / "train.csv", "test": d / "test.csv"}


def _cli(dataset, out: Path, *extra: str) -> list[str]:
    return ["--manifest", f"demo/train={dataset['train']}", "--manifest", f"demo/test={dataset['test']}",
            "--videos-root", f"demo={dataset['root']}", "--pretrain", "demo/train",
            "--out-dir", str(out), "--no-progress", *extra]


def _tsv(path: Path) -> list[dict]:
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]


OUTPUTS = ["videos-demo-train.tsv", "videos-demo-test.tsv", "duplicates.tsv", "pretrain_manifest.csv",
           "summary.json", "motion_energy.png", "duplicates.png"]


def test_cli_end_to_end(dataset, tmp_path):
    out = tmp_path / "out"
    assert curate.main(_cli(dataset, out, "--jobs", "2")) == 0
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("motion_energy.png", "duplicates.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    train = {r["path"]: r for r in _tsv(out / "videos-demo-train.tsv")}
    assert set(train) == {"static.avi", "source.avi", "other0.avi", "other1.avi"}
    assert train["static.avi"]["static"] == "1"
    assert [r["static"] for p, r in train.items() if p != "static.avi"] == ["0"] * 3
    assert float(train["static.avi"]["motion_energy"]) < curate.MOTION_THRESHOLD
    assert train["source.avi"]["frames"] == "96" and train["source.avi"]["label_name"] == "source"
    assert all(float(r["sharpness"]) > 0 and float(r["dominant_hz"]) >= 0 for r in train.values())
    test = {r["path"]: r for r in _tsv(out / "videos-demo-test.tsv")}
    assert set(test) == {"trimmed.mp4", "other2.avi"}  # broken.mp4 skipped, reported below

    pretrain = read_rows(out / "pretrain_manifest.csv", ManifestRow)
    assert [r.path for r in pretrain] == ["source.avi", "other0.avi", "other1.avi"]
    assert pretrain == [r for r in read_rows(dataset["train"], ManifestRow) if r.path != "static.avi"]
    assert (dataset["root"] / "static.avi").is_file()  # reported, never deleted

    dups = _tsv(out / "duplicates.tsv")
    assert len(dups) == 1
    d = dups[0]
    assert (d["a"], d["b"], d["split_a"], d["split_b"], d["kind"]) == \
        ("source.avi", "trimmed.mp4", "demo/train", "demo/test", "leakage")
    assert abs(int(d["offset_frames"]) - 20) <= 1 and float(d["score"]) >= curate.DUPLICATE_THRESHOLD

    summary = json.loads((out / "summary.json").read_text())
    assert summary["manifests"]["demo/train"] == {"videos": 4, "analysed": 4, "unreadable": 0, "static": 1}
    assert summary["manifests"]["demo/test"] == {"videos": 3, "analysed": 2, "unreadable": 1, "static": 0}
    assert summary["pretrain"] == {"manifest": "demo/train", "rows": 4, "kept": 3,
                                   "removed_static": 1, "removed_unreadable": 0}
    assert [s["path"] for s in summary["static"]] == ["static.avi"]
    (bad,) = summary["unreadable"]
    assert bad["path"] == "broken.mp4" and str(dataset["root"] / "broken.mp4") in bad["error"]
    dup = summary["duplicates"]
    assert dup["pairs"] == dup["leakage"] == 1 and dup["within-split"] == dup["cross-split"] == 0
    assert dup["all_pairs"] == 15 and dup["aligned"] < dup["all_pairs"]


def test_cli_switches_off(dataset, tmp_path):
    out = tmp_path / "off"
    assert curate.main(_cli(dataset, out, "--static", "off", "--duplicates", "off")) == 0
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert all(r["static"] == "0" for r in _tsv(out / "videos-demo-train.tsv"))
    assert [r.path for r in read_rows(out / "pretrain_manifest.csv", ManifestRow)] == \
        ["static.avi", "source.avi", "other0.avi", "other1.avi"]
    assert _tsv(out / "duplicates.tsv") == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["static"] == [] and summary["duplicates"]["enabled"] is False
    assert summary["duplicates"]["pairs"] == summary["duplicates"]["aligned"] == 0
    # a threshold above every clip flags them all; pretraining then keeps nothing
    out2 = tmp_path / "all-static"
    assert curate.main(_cli(dataset, out2, "--motion-threshold", "1.1", "--duplicates", "off")) == 0
    assert read_rows(out2 / "pretrain_manifest.csv", ManifestRow) == []


def test_cli_logs_to_mlflow(dataset, tmp_path):
    pytest.importorskip("mlflow", reason=missing("mlflow", INSTALL_PYTHON_DEPS))
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = _cli(dataset, tmp_path / "tracked", "--duplicates", "off", "--tracking-uri", uri,
                "--experiment", "curate-test")
    assert curate.main(args) == 0
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("curate-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["curate.static"] == 1 and run.data.metrics["curate.unreadable"] == 1
    assert run.data.tags["svt.stage"] == "curate"
    logged = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "curation")}
    assert set(OUTPUTS) <= logged
    # into an existing run (e.g. the pipeline's): logged there, its status left as it was
    other = client.create_run(client.get_experiment_by_name("curate-test").experiment_id)
    client.set_terminated(other.info.run_id, "FINISHED")
    again = _cli(dataset, tmp_path / "again", "--duplicates", "off", "--tracking-uri", uri,
                 "--run-id", other.info.run_id)
    assert curate.main(again) == 0
    after = client.get_run(other.info.run_id)
    assert after.info.status == "FINISHED" and after.data.metrics["curate.pretrain_kept"] == 3
    assert "summary.json" in {Path(f.path).name for f in client.list_artifacts(other.info.run_id, "curation")}


def test_cli_errors(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        curate.main(["--manifest", f"demo/train={dataset['train']}", "--videos-root", "other=/x",
                     "--out-dir", str(tmp_path)])
    assert "no --videos-root for manifest 'demo/train'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        curate.main(_cli(dataset, tmp_path) + ["--pretrain", "demo/val"])
    assert "--pretrain 'demo/val'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        curate.main(["--manifest", "no-equals-sign", "--videos-root", "a=b", "--out-dir", str(tmp_path)])
    assert "expected NAME=PATH" in capsys.readouterr().err
    assert curate.main(["--manifest", f"x={tmp_path / 'missing.csv'}", "--videos-root", "x=.",
                        "--out-dir", str(tmp_path / "o")]) == 2
    assert "cannot read manifest x=" in capsys.readouterr().err


def test_module_entry_point_prints_usage():
    res = subprocess.run([sys.executable, "-m", "svt.curate", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert "--duplicate-threshold" in res.stdout and "--pretrain" in res.stdout
