"""Probe and re-encode real files with the real ffmpeg; every output is checked by ffprobe."""

from __future__ import annotations

import pytest

from conftest import ffprobe, make_video, real_clip
from svt.video import EncodeSettings, VideoError, output_name, probe, target_size, transcode

SMALL = EncodeSettings(short_side=64, fps=30, gop=16, min_frames=16)


def check_encoded(path, width, height, frames, fps=30):
    info = ffprobe(path)
    v = info["video"]
    assert (int(v["width"]), int(v["height"])) == (width, height)
    assert int(v["nb_read_frames"]) == frames
    assert v["avg_frame_rate"] == f"{fps}/1"
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert info["audio_streams"] == 0
    return v


def keyframe_positions(path):
    import subprocess
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=flags",
         "-of", "csv=p=0", "file:" + str(path)], check=True, capture_output=True, text=True)
    return [i for i, line in enumerate(res.stdout.split()) if line.startswith("K")]


def test_probe_reports_stream_facts(video_factory):
    info = probe(video_factory(size=(160, 120), fps=25, seconds=2))
    assert (info.width, info.height, info.fps, info.frames) == (160, 120, 25.0, 50)
    assert info.duration == pytest.approx(2.0, abs=0.05) and info.rotation == 0


def test_landscape_resized_to_short_side_with_fps_and_keyframes(video_factory, tmp_path):
    src = video_factory(size=(160, 120), fps=25, seconds=2, audio=True)
    out = transcode(src, tmp_path / "out.mp4", SMALL)
    check_encoded(tmp_path / "out.mp4", 86, 64, 60)  # 160x120 -> short side 64, even width
    assert (out.width, out.height, out.frames, out.fps) == (86, 64, 60, 30.0)
    assert keyframe_positions(tmp_path / "out.mp4") == [0, 16, 32, 48]


def test_portrait_keeps_aspect(video_factory, tmp_path):
    src = video_factory(size=(120, 200), fps=30, seconds=1)
    transcode(src, tmp_path / "out.mp4", SMALL)
    check_encoded(tmp_path / "out.mp4", 64, 106, 30)


def test_rotation_is_applied(video_factory, tmp_path):
    src = video_factory(size=(160, 96), fps=30, seconds=1, rotate=90)
    assert probe(src).rotation in (90, 270)
    assert (probe(src).width, probe(src).height) == (96, 160)  # displayed size
    transcode(src, tmp_path / "out.mp4", SMALL)
    v = check_encoded(tmp_path / "out.mp4", 64, 106, 30)
    assert not v.get("side_data_list")  # no rotation flag left to apply twice


def test_real_camera_clip(tmp_path):
    src = real_clip("bikes.mp4")  # 640x272, 25 fps, 10 s of street traffic
    info = probe(src)
    assert (info.width, info.height, info.fps) == (640, 272, 25.0)
    transcode(src, tmp_path / "bikes.mp4", EncodeSettings(short_side=96, fps=30))
    check_encoded(tmp_path / "bikes.mp4", 226, 96, round(info.duration * 30))


def test_target_size_even_and_aspect():
    assert target_size(1920, 1080, 256) == (456, 256)
    assert target_size(1080, 1920, 256) == (256, 456)
    assert target_size(176, 144, 256) == (312, 256)


@pytest.mark.parametrize("name", ["with space.mp4", "qu'o\"te.mp4", "dollar $HOME.mp4",
                                  "back`tick`.mp4", "ünïcødé 视频.mp4", "-dash.mp4",
                                  "concat:x.mp4"])
def test_hostile_file_names(tmp_path, name):
    src = make_video(tmp_path / "in" / name, size=(64, 48), seconds=1)
    out = tmp_path / "out" / output_name(name)
    transcode(src, out, SMALL)
    assert out.exists() and out.name == name
    assert not list(out.parent.glob(".*part"))


def reject_reason(src, tmp_path):
    with pytest.raises(VideoError) as err:
        transcode(src, tmp_path / "out.mp4", SMALL)
    assert str(src) in str(err.value)
    assert not (tmp_path / "out.mp4").exists()
    return err.value.reason


def test_rejects_empty_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert reject_reason(tmp_path / "empty.mp4", tmp_path) == "empty file (0 bytes)"


def test_rejects_missing_file(tmp_path):
    assert reject_reason(tmp_path / "nope.mp4", tmp_path) == "file not found"


def test_rejects_garbage(tmp_path):
    (tmp_path / "garbage.mp4").write_bytes(bytes(range(256)) * 64)
    assert reject_reason(tmp_path / "garbage.mp4", tmp_path).startswith("unreadable:")


def test_rejects_audio_only(tmp_path):
    import subprocess
    src = tmp_path / "song.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
                    "-c:a", "aac", str(src)], check=True)
    assert reject_reason(src, tmp_path) == "no video stream (audio only)"


def test_rejects_too_short(video_factory, tmp_path):
    src = video_factory(seconds=0.3)
    assert reject_reason(src, tmp_path).startswith("too short:")


@pytest.mark.parametrize("container,codec", [("mp4", "libx264"), ("avi", "mpeg4")])
def test_rejects_truncated(video_factory, tmp_path, container, codec):
    src = video_factory(f"full.{container}", seconds=4, codec=codec,
                        extra=["-movflags", "+faststart"] if container == "mp4" else [])
    data = src.read_bytes()
    cut = tmp_path / f"cut.{container}"
    cut.write_bytes(data[: len(data) * 4 // 10])
    assert reject_reason(cut, tmp_path).startswith(("truncated:", "unreadable:"))


def test_output_name_never_collides():
    assert output_name("a/b.mp4") == "a/b.mp4"
    assert output_name("a/b.avi") == "a/b.avi.mp4"
    assert output_name("a/b") == "a/b.mp4"
    assert len({output_name(n) for n in ("x.mp4", "x.avi", "x.webm")}) == 3
    # "x" and "x.mp4" do map to one name: the decode shard rejects the second (test_decode)


@pytest.mark.parametrize("fast", [True, False])
def test_fast_decode_encoding(video_factory, tmp_path, fast):
    """decode.fast_decode: CAVLC and B-frames no frame references (the loader skips those);
    x264 records its options in the stream, so read them back from the file."""
    src = video_factory(size=(160, 120), fps=25, seconds=2)
    out = tmp_path / "out.mp4"
    transcode(src, out, EncodeSettings(short_side=64, fps=30, gop=16, min_frames=16, fast_decode=fast))
    check_encoded(out, 86, 64, 60)
    assert keyframe_positions(out) == [0, 16, 32, 48]
    options = out.read_bytes().split(b"x264 - core", 1)[1][:2000]
    assert (b"cabac=0" in options) == fast and (b"cabac=1" in options) != fast
    assert (b"b_pyramid=0" in options) == fast and (b"b_pyramid=2" in options) != fast
    assert b"bframes=3" in options  # still B-frames: they are what the loader can skip
