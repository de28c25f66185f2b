"""Dataset adapters: every annotation format becomes the same sorted list of IndexRow."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svt.datasets import (
    FORMATS,
    VIDEO_EXTENSIONS,
    AnnotationError,
    DatasetError,
    check_relpath,
    load_index,
)
from svt.manifest import SPLITS, IndexRow, read_rows

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def triples(index) -> list[tuple[str, str, int, str]]:
    return [(r.split, r.path, r.label, r.label_name) for r in index.rows]


def assert_error_at(excinfo, file: Path, line: int | None, *words: str) -> None:
    """The error names the file and the line, and says why."""
    err = excinfo.value
    msg = str(err)
    assert file.name in msg
    assert err.file == str(file)
    assert err.line == line
    if line is not None:
        assert f"{file.name}:{line}:" in msg
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"


def assert_sorted(index) -> None:
    keys = [(SPLITS.index(r.split), r.path) for r in index.rows]
    assert keys == sorted(keys)
    for r in index.rows:
        assert r.split in SPLITS
        assert r.label == -1 and r.label_name == "" or index.classes[r.label] == r.label_name


# --------------------------------------------------------------------------------------
# Common behaviour


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_root_is_named(tmp_path, fmt):
    root = tmp_path / "no_such_videos"
    ann = write(tmp_path / "ann.csv", "path,label\na.mp4,x\n")
    with pytest.raises(DatasetError) as excinfo:
        load_index(fmt, root, ann)
    assert str(excinfo.value) == f"dataset root '{root}' does not exist"


def test_root_that_is_a_file(tmp_path):
    root = write(tmp_path / "videos", "not a folder")
    with pytest.raises(DatasetError, match="is not a directory") as excinfo:
        load_index("folder", root)
    assert str(root) in str(excinfo.value)


def test_unknown_format_lists_formats(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        load_index("imagenet", tmp_path)
    for fmt in FORMATS:
        assert fmt in str(excinfo.value)


@pytest.mark.parametrize("fmt", ["ucf101", "hmdb51"])
@pytest.mark.parametrize("fold", [0, 4, -1])
def test_bad_fold(tmp_path, fmt, fold):
    with pytest.raises(DatasetError, match="fold must be 1, 2 or 3"):
        load_index(fmt, tmp_path, tmp_path, fold=fold)


@pytest.mark.parametrize("fmt", ["ucf101", "hmdb51", "ssv2", "kinetics", "csv"])
def test_missing_annotations_are_named(tmp_path, fmt):
    root = tmp_path / "videos"
    root.mkdir()
    ann = tmp_path / "no_such_annotations"
    with pytest.raises(DatasetError) as excinfo:
        load_index(fmt, root, ann)
    assert str(ann) in str(excinfo.value)
    assert "does not exist" in str(excinfo.value)


@pytest.mark.parametrize("fmt", ["kinetics", "csv"])
def test_csv_formats_need_annotations(tmp_path, fmt):
    with pytest.raises(DatasetError, match="needs annotations"):
        load_index(fmt, tmp_path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a/b.mp4", "a/b.mp4"),
        ("./a//b.mp4", "a/b.mp4"),
        ("a\\b c.mp4", "a/b c.mp4"),
        ("  clé/vidéo.mp4 ", "clé/vidéo.mp4"),
        ("a/..b.mp4", "a/..b.mp4"),  # '..b' is a name, not a parent reference
    ],
)
def test_check_relpath_normalises(text, expected):
    assert check_relpath(text, Path("list.txt"), 3) == expected


@pytest.mark.parametrize("text", ["../a.mp4", "a/../../b.mp4", "/abs/a.mp4", "C:\\v\\a.mp4", "", "./"])
def test_check_relpath_refuses_paths_outside_root(text):
    with pytest.raises(AnnotationError) as excinfo:
        check_relpath(text, Path("list.txt"), 7)
    assert str(excinfo.value).startswith("list.txt:7: ")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "x y", "é"]), min_size=1, max_size=6))
def test_check_relpath_never_escapes(parts):
    try:
        out = check_relpath("/".join(parts), Path("f"), 1)
    except AnnotationError:
        assert ".." in parts or not [p for p in parts if p not in ("", ".")] or parts[0] == ""
        return
    assert not out.startswith("/")
    assert ".." not in out.split("/")
    assert "" not in out.split("/")


def test_invalid_utf8_reports_line(tmp_path):
    ann = tmp_path / "list.csv"
    ann.write_bytes(b"path,label\na.mp4,x\nb.mp4,caf\xe9\n")
    with pytest.raises(AnnotationError) as excinfo:
        load_index("csv", tmp_path, ann)
    assert_error_at(excinfo, ann, 3, "UTF-8")


# --------------------------------------------------------------------------------------
# UCF101

UCF_CLASSES = "1 ApplyEyeMakeup\r\n2 Archery\r\n3 BabyCrawling\r\n"


@pytest.fixture
def ucf(tmp_path):
    root = tmp_path / "UCF-101"
    ann = tmp_path / "ucfTrainTestlist"
    root.mkdir()
    # BOM, CRLF, blank lines and trailing spaces are all tolerated.
    write(ann / "classInd.txt", "\ufeff" + UCF_CLASSES + "\r\n")
    write(
        ann / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "BabyCrawling/v_BabyCrawling_g08_c02.avi 3  \n"
        "\n"
        "Archery/v_Archery_g09_c01.avi 2\n",
    )
    write(
        ann / "testlist01.txt",
        "Archery/v_Archery_g01_c01.avi\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n",
    )
    write(ann / "trainlist02.txt", "Archery/v_Archery_g01_c01.avi 2\n")
    write(ann / "testlist02.txt", "BabyCrawling/v_BabyCrawling_g08_c02.avi\n")
    return root, ann


def test_ucf101_fold1(ucf):
    root, ann = ucf
    index = load_index("ucf101", root, ann)
    assert index.classes == ["ApplyEyeMakeup", "Archery", "BabyCrawling"]
    assert triples(index) == [
        ("train", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "ApplyEyeMakeup"),
        ("train", "Archery/v_Archery_g09_c01.avi", 1, "Archery"),
        ("train", "BabyCrawling/v_BabyCrawling_g08_c02.avi", 2, "BabyCrawling"),
        ("test", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0, "ApplyEyeMakeup"),
        ("test", "Archery/v_Archery_g01_c01.avi", 1, "Archery"),
    ]
    assert index.splits() == ["train", "test"]
    assert all(isinstance(r, IndexRow) for r in index.rows)


def test_ucf101_fold2_selects_other_lists(ucf):
    root, ann = ucf
    index = load_index("ucf101", root, ann, fold=2)
    assert triples(index) == [
        ("train", "Archery/v_Archery_g01_c01.avi", 1, "Archery"),
        ("test", "BabyCrawling/v_BabyCrawling_g08_c02.avi", 2, "BabyCrawling"),
    ]


def test_ucf101_missing_fold_file_is_named(ucf):
    root, ann = ucf
    with pytest.raises(DatasetError) as excinfo:
        load_index("ucf101", root, ann, fold=3)
    assert "trainlist03.txt" in str(excinfo.value)


def test_ucf101_classes_follow_classind_order_not_alphabet(ucf):
    root, ann = ucf
    write(ann / "classInd.txt", "1 BabyCrawling\n2 ApplyEyeMakeup\n3 Archery\n")
    write(ann / "trainlist01.txt", "BabyCrawling/v_BabyCrawling_g08_c02.avi 1\nArchery/v_Archery_g09_c01.avi 3\n")
    index = load_index("ucf101", root, ann)
    assert index.classes == ["BabyCrawling", "ApplyEyeMakeup", "Archery"]
    assert {r.path: r.label for r in index.rows if r.split == "train"} == {
        "BabyCrawling/v_BabyCrawling_g08_c02.avi": 0,
        "Archery/v_Archery_g09_c01.avi": 2,
    }


def test_ucf101_annotations_default_to_root(tmp_path):
    root = tmp_path / "UCF-101"
    write(root / "classInd.txt", UCF_CLASSES)
    write(root / "trainlist01.txt", "Archery/v_Archery_g09_c01.avi 2\n")
    write(root / "testlist01.txt", "Archery/v_Archery_g01_c01.avi\n")
    index = load_index("ucf101", root)
    assert [r.path for r in index.rows] == ["Archery/v_Archery_g09_c01.avi", "Archery/v_Archery_g01_c01.avi"]


def test_ucf101_same_video_in_train_and_test_is_allowed(ucf):
    root, ann = ucf
    write(ann / "testlist01.txt", "Archery/v_Archery_g09_c01.avi\n")
    index = load_index("ucf101", root, ann)
    assert [r.split for r in index.rows if r.path == "Archery/v_Archery_g09_c01.avi"] == ["train", "test"]


@pytest.mark.parametrize(
    "name, text, line, words",
    [
        # label agrees with classInd but not with the folder
        ("trainlist01.txt", "Archery/v_Archery_g09_c01.avi 2\nArchery/v_Archery_g10_c01.avi 3\n", 2,
         ["label 3", "BabyCrawling", "Archery"]),
        ("trainlist01.txt", "Archery/v_Archery_g09_c01.avi 2\n\nArchery/v_Archery_g10_c01.avi\n", 3,
         ["found 1 fields"]),
        ("trainlist01.txt", "Archery/v_Archery_g09_c01.avi 2 extra\n", 1, ["found 3 fields"]),
        ("trainlist01.txt", "Archery/v_Archery_g09_c01.avi two\n", 1, ["label 'two' is not an integer"]),
        ("trainlist01.txt", "Archery/v_Archery_g09_c01.avi 2\nArchery/v_Archery_g10_c01.avi 102\n", 2,
         ["outside", "1..3"]),
        ("trainlist01.txt", "Archery/v_Archery_g09_c01.avi 2\nArchery/v_Archery_g09_c01.avi 2\n", 2,
         ["duplicate", "line 1"]),
        ("trainlist01.txt", "Archery/../../etc/passwd 2\n", 1, ["escapes"]),
        ("trainlist01.txt", "/data/Archery/v_Archery_g09_c01.avi 2\n", 1, ["absolute"]),
        ("trainlist01.txt", "v_Archery_g09_c01.avi 2\n", 1, ["no class folder"]),
        ("testlist01.txt", "Archery/v_Archery_g01_c01.avi\nBasketball/v_Basketball_g01_c01.avi\n", 2,
         ["unknown class 'Basketball'"]),
        ("testlist01.txt", "Archery/v_Archery_g01_c01.avi 3\n", 1, ["label 3", "BabyCrawling"]),
        ("testlist01.txt", "Archery/a.avi\r\nArchery/b.avi\r\nArchery/a.avi\r\n", 3, ["duplicate test video"]),
        ("classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n2 BabyCrawling\n", 3, ["class index 2 already used"]),
        ("classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n3 Archery\n", 3, ["already listed at line 2"]),
        ("classInd.txt", "1 ApplyEyeMakeup\nx Archery\n", 2, ["class index 'x'"]),
        ("classInd.txt", "1 ApplyEyeMakeup\n2 Apply Eye Makeup\n", 2, ["found 4 fields"]),
        ("classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n4 BabyCrawling\n", None, ["without gaps", "3"]),
    ],
)
def test_ucf101_malformed(ucf, name, text, line, words):
    root, ann = ucf
    file = write(ann / name, text)
    with pytest.raises(AnnotationError) as excinfo:
        load_index("ucf101", root, ann)
    assert_error_at(excinfo, file, line, *words)


# --------------------------------------------------------------------------------------
# HMDB51

HMDB = {
    "brush_hair": {
        1: "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1\nApril_09_brush_hair_u_nm_np1_ba_goo_1.avi 2\n"
        "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 0\n",
        2: "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2\nApril_09_brush_hair_u_nm_np1_ba_goo_1.avi 1\n"
        "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 0\n",
    },
    "shoot_ball": {
        1: "3_Pointer_Contest_shoot_ball_f_cm_np1_ba_med_0.avi 2 \r\n\r\n"
        "AHF_basketball_shoot_ball_f_nm_np1_fr_med_0.avi 1 \r\n",
        2: "3_Pointer_Contest_shoot_ball_f_cm_np1_ba_med_0.avi 0\nAHF_basketball_shoot_ball_f_nm_np1_fr_med_0.avi 1\n",
    },
    "cartwheel": {
        1: "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 1\n",
        2: "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi 2\n",
    },
}


@pytest.fixture
def hmdb(tmp_path):
    root = tmp_path / "hmdb51"
    ann = tmp_path / "testTrainMulti_7030_splits"
    root.mkdir()
    for cls, folds in HMDB.items():
        for fold, text in folds.items():
            write(ann / f"{cls}_test_split{fold}.txt", text)
    write(ann / "README.txt", "not a split file\n")
    return root, ann


def test_hmdb51_fold1(hmdb):
    root, ann = hmdb
    index = load_index("hmdb51", root, ann)
    assert index.classes == ["brush_hair", "cartwheel", "shoot_ball"]
    assert triples(index) == [
        ("train", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0, "brush_hair"),
        ("train", "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi", 1, "cartwheel"),
        ("train", "shoot_ball/AHF_basketball_shoot_ball_f_nm_np1_fr_med_0.avi", 2, "shoot_ball"),
        ("test", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 0, "brush_hair"),
        ("test", "shoot_ball/3_Pointer_Contest_shoot_ball_f_cm_np1_ba_med_0.avi", 2, "shoot_ball"),
    ]
    # marker 0 means "not used in this split"
    assert not any("Blonde" in r.path for r in index.rows)


def test_hmdb51_fold2(hmdb):
    root, ann = hmdb
    index = load_index("hmdb51", root, ann, fold=2)
    assert [(r.split, r.path) for r in index.rows] == [
        ("train", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi"),
        ("train", "shoot_ball/AHF_basketball_shoot_ball_f_nm_np1_fr_med_0.avi"),
        ("test", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi"),
        ("test", "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi"),
    ]


def test_hmdb51_no_files_for_fold(hmdb):
    root, ann = hmdb
    with pytest.raises(DatasetError, match=r"_test_split3\.txt") as excinfo:
        load_index("hmdb51", root, ann, fold=3)
    assert str(ann) in str(excinfo.value)


def test_hmdb51_class_missing_its_fold_file(hmdb):
    root, ann = hmdb
    (ann / "cartwheel_test_split2.txt").unlink()
    with pytest.raises(DatasetError, match="cartwheel") as excinfo:
        load_index("hmdb51", root, ann, fold=2)
    assert "split2" in str(excinfo.value)
    # fold 1 still complete
    assert "cartwheel" in load_index("hmdb51", root, ann, fold=1).classes


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("a.avi 1\nb.avi 3\n", 2, ["marker '3'"]),
        ("a.avi 1\n\nb.avi train\n", 3, ["marker 'train'"]),
        ("a.avi\n", 1, ["found 1 fields"]),
        ("a.avi 1 extra\n", 1, ["found 3 fields"]),
        ("a.avi 1\nb.avi 2\na.avi 1\n", 3, ["duplicate train video 'shoot_ball/a.avi'", "line 1"]),
        ("../../secret.avi 1\n", 1, ["escapes"]),
        ("/tmp/x.avi 2\n", 1, ["absolute"]),
    ],
)
def test_hmdb51_malformed(hmdb, text, line, words):
    root, ann = hmdb
    file = write(ann / "shoot_ball_test_split1.txt", text)
    with pytest.raises(AnnotationError) as excinfo:
        load_index("hmdb51", root, ann)
    assert_error_at(excinfo, file, line, *words)


# --------------------------------------------------------------------------------------
# Kinetics

K_TRAIN = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    "abseiling,---QUuC4vJs,3,13,train,0\n"
    '"passing American football (in game)",-3wtiRE8ElQ,12.0,22.0,train,0\n'
    '"tying bow tie, \'formal\'",0Ax7rEhPkAQ,0,10,train,1\n'
    "\n"
    '"pretending ""to"" eat",1bdBGaQtb1E,85,95,train,0\n'
)
K_VAL = (
    "\ufefflabel,youtube_id,time_start,time_end,split\r\n"
    "abseiling,0wR5jVB-WPk,417,427,validate\r\n"
    "zumba,zzQ9J7Dj1gM,30,40,val\r\n"
)
# Some releases leave the test labels out entirely.
K_TEST = "youtube_id,time_start,time_end,split\n--abcdEFGhi,0,10,test\n"


@pytest.fixture
def kinetics(tmp_path):
    root = tmp_path / "kinetics400"
    ann = tmp_path / "k400_annotations"
    root.mkdir()
    write(ann / "train.csv", K_TRAIN)
    write(ann / "validate.csv", K_VAL)
    write(ann / "test.csv", K_TEST)
    write(ann / "notes.txt", "ignored\n")
    return root, ann


def test_kinetics_folder_of_csv(kinetics):
    root, ann = kinetics
    index = load_index("kinetics", root, ann)
    assert index.classes == [
        "abseiling",
        "passing American football (in game)",
        "pretending \"to\" eat",
        "tying bow tie, 'formal'",
        "zumba",
    ]
    assert triples(index) == [
        ("train", "train/---QUuC4vJs_000003_000013.mp4", 0, "abseiling"),
        ("train", "train/-3wtiRE8ElQ_000012_000022.mp4", 1, "passing American football (in game)"),
        ("train", "train/0Ax7rEhPkAQ_000000_000010.mp4", 3, "tying bow tie, 'formal'"),
        ("train", "train/1bdBGaQtb1E_000085_000095.mp4", 2, 'pretending "to" eat'),
        ("val", "val/zzQ9J7Dj1gM_000030_000040.mp4", 4, "zumba"),
        ("val", "validate/0wR5jVB-WPk_000417_000427.mp4", 0, "abseiling"),
        ("test", "test/--abcdEFGhi_000000_000010.mp4", -1, ""),
    ]
    assert_sorted(index)


def test_kinetics_single_file_and_test_rows_with_empty_label(tmp_path):
    ann = write(
        tmp_path / "kinetics_700_test.csv",
        "label,youtube_id,time_start,time_end,split\n,abc,1,11,test\nwaxing legs,def,2,12,train\n",
    )
    index = load_index("kinetics", tmp_path, ann)
    assert index.classes == ["waxing legs"]
    assert triples(index) == [
        ("train", "train/def_000002_000012.mp4", 0, "waxing legs"),
        ("test", "test/abc_000001_000011.mp4", -1, ""),
    ]


def test_kinetics_path_template_with_label_and_non_ascii(tmp_path):
    ann = write(
        tmp_path / "train.csv",
        "label,youtube_id,time_start,time_end,split\n"
        "café au lait,ñandú_01,5,15,train\n"
        '"跳舞, dancing",xyz,0,10,validation\n',
    )
    index = load_index("kinetics", tmp_path, ann, path_template="{label}/{youtube_id}_{time_start}.mp4")
    assert triples(index) == [
        ("train", "café au lait/ñandú_01_5.mp4", 0, "café au lait"),
        ("val", "跳舞, dancing/xyz_0.mp4", 1, "跳舞, dancing"),
    ]


def test_kinetics_path_template_unknown_field(kinetics):
    root, ann = kinetics
    with pytest.raises(DatasetError, match="unknown field 'clip'") as excinfo:
        load_index("kinetics", root, ann, path_template="{clip}.mp4")
    assert "youtube_id" in str(excinfo.value)  # lists what is available


def test_kinetics_no_csv_in_folder(tmp_path):
    ann = tmp_path / "ann"
    write(ann / "train.json", "[]")
    with pytest.raises(DatasetError, match=r"no \*\.csv"):
        load_index("kinetics", tmp_path, ann)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("label,youtube_id,time_start,split\nx,a,1,train\n", 1, ["missing column(s) ['time_end']"]),
        ("\n\nlabel,youtube_id,time_start,time_end\n", 3, ["missing column(s) ['split']"]),
        ("label,youtube_id,time_start,time_end,split,split\n", 1, ["duplicate column"]),
        ("", 1, ["empty file"]),
        ("label,youtube_id,time_start,time_end,split\nx,a,1,11,train\ny,b,one,11,train\n", 3,
         ["time_start 'one' is not a number"]),
        ("label,youtube_id,time_start,time_end,split\nx,a,1,11.5,train\n", 2, ["time_end '11.5'"]),
        ("label,youtube_id,time_start,time_end,split\nx,a,-1,9,train\n", 2, ["time_start '-1'"]),
        ("label,youtube_id,time_start,time_end,split\nx,a,1,11,training\n", 2, ["unknown split 'training'"]),
        ("label,youtube_id,time_start,time_end,split\nx,a,1,11\n", 2, ["expected 5 columns", "found 4"]),
        ("label,youtube_id,time_start,time_end,split\n,a,1,11,train\n", 2, ["train row without a label"]),
        ("label,youtube_id,time_start,time_end,split\nx,,1,11,train\n", 2, ["empty youtube_id"]),
        ("label,youtube_id,time_start,time_end,split\nx,../../a,1,11,train\n", 2, ["escapes"]),
        # the duplicate starts on line 4 even though the quoted label on line 2 spans two lines
        ('label,youtube_id,time_start,time_end,split\n"a\nb",a,1,11,train\nc,a,1,11,train\n', 4,
         ["duplicate train video 'train/a_000001_000011.mp4'", "line 2"]),
    ],
)
def test_kinetics_malformed(tmp_path, text, line, words):
    file = write(tmp_path / "ann" / "train.csv", text)
    with pytest.raises(AnnotationError) as excinfo:
        load_index("kinetics", tmp_path, tmp_path / "ann")
    assert_error_at(excinfo, file, line, *words)


def test_kinetics_duplicate_across_files_names_both(tmp_path):
    ann = tmp_path / "ann"
    write(ann / "a.csv", "label,youtube_id,time_start,time_end,split\nx,vid,1,11,val\n")
    b = write(ann / "b.csv", "label,youtube_id,time_start,time_end,split\n\nx,vid,1,11,val\n")
    with pytest.raises(AnnotationError) as excinfo:
        load_index("kinetics", tmp_path, ann, path_template="{youtube_id}.mp4")
    assert_error_at(excinfo, b, 3, "duplicate val video 'vid.mp4'", "a.csv:2")


# --------------------------------------------------------------------------------------
# Something-Something v2

PUT = "Putting [something] on a surface"
SSV2_LABELS = {
    "Approaching something with your camera": "0",
    "Holding something next to something": 2,
    "Putting something on a surface": "1",
}


@pytest.fixture
def ssv2(tmp_path):
    root = tmp_path / "20bn-something-something-v2"
    ann = tmp_path / "labels"
    root.mkdir()
    write(ann / "labels.json", json.dumps(SSV2_LABELS, indent=1))
    train = [
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
        {"id": "42326", "label": "putting a cup on a table", "template": "Putting [something] on a surface",
         "placeholders": ["a cup"]},
        {"id": 100, "label": "approaching a door with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a door"]},
    ]
    val = [{"id": "74225", "label": "x", "template": "Putting [something] on a surface", "placeholders": ["x"]}]
    write(ann / "train.json", json.dumps(train, indent=2))
    write(ann / "validation.json", json.dumps(val))
    write(ann / "test.json", json.dumps([{"id": "1420"}, {"id": "999"}]))
    return root, ann


def test_ssv2(ssv2):
    root, ann = ssv2
    index = load_index("ssv2", root, ann)
    assert index.classes == [
        "Approaching something with your camera",
        "Putting something on a surface",
        "Holding something next to something",
    ]
    assert triples(index) == [
        ("train", "100.webm", 0, "Approaching something with your camera"),
        ("train", "42326.webm", 1, "Putting something on a surface"),
        ("train", "78687.webm", 2, "Holding something next to something"),
        ("val", "74225.webm", 1, "Putting something on a surface"),
        ("test", "1420.webm", -1, ""),
        ("test", "999.webm", -1, ""),
    ]


def test_ssv2_test_list_is_optional(ssv2):
    root, ann = ssv2
    (ann / "test.json").unlink()
    assert load_index("ssv2", root, ann).splits() == ["train", "val"]


def test_ssv2_validation_list_is_required(ssv2):
    root, ann = ssv2
    (ann / "validation.json").unlink()
    with pytest.raises(DatasetError, match="validation.json"):
        load_index("ssv2", root, ann)


def test_ssv2_invalid_json_reports_decoder_line(ssv2):
    root, ann = ssv2
    file = write(ann / "validation.json", '[\n  {"id": "1", "template": "%s"},\n  {"id": "2",,}\n]' % PUT)
    with pytest.raises(AnnotationError) as excinfo:
        load_index("ssv2", root, ann)
    assert_error_at(excinfo, file, 3, "invalid JSON")


@pytest.mark.parametrize(
    "name, entries, line, words",
    [
        ("train.json", [{"id": "1", "template": PUT}, {"template": PUT}], 2, ["entry 2", "'id'"]),
        ("train.json", [{"id": "1", "template": "Juggling [something]"}], 1,
         ["entry 1", "unknown template", "Juggling"]),
        ("train.json", [{"id": "1"}], 1, ["entry 1", "missing 'template'"]),
        ("validation.json", [{"id": "5", "template": PUT}] * 3, 2,
         ["entry 2", "duplicate val video '5.webm'", "entry 1"]),
        ("validation.json", [{"id": "../5", "template": PUT}], 1, ["entry 1", "escapes"]),
        ("validation.json", ["5"], 1, ["entry 1", "expected an object"]),
        ("test.json", {"id": "5"}, 1, ["expected a JSON list"]),
        ("labels.json", {"A": "0", "B": "zero"}, 2, ["entry 2", "'zero'"]),
        ("labels.json", {"A": "0", "B": "1", "C": 1}, 3, ["entry 3", "class index 1 already used"]),
        ("labels.json", {"A": "0", "B": "2"}, None, ["without gaps", "[1]"]),
    ],
)
def test_ssv2_malformed(ssv2, name, entries, line, words):
    root, ann = ssv2
    file = write(ann / name, json.dumps(entries))
    with pytest.raises(AnnotationError) as excinfo:
        load_index("ssv2", root, ann)
    assert_error_at(excinfo, file, line, *words)


# --------------------------------------------------------------------------------------
# Plain CSV list


def test_csv_list(tmp_path):
    ann = write(
        tmp_path / "list.csv",
        "\ufeffpath,label,split,source\r\n"
        "walk/vidéo 1.mp4,walk,train,cam1\r\n"
        '"run, fast/a.mp4","run, fast",val,cam2\r\n'
        "sub\\dir\\b.mp4,walk,validation,cam1\r\n"
        "\r\n"
        "./c.mp4,,test,\r\n"
        "z.mp4,\"say \"\"hi\"\"\",TRAIN,\r\n",
    )
    index = load_index("csv", tmp_path, ann)
    assert index.classes == ["run, fast", 'say "hi"', "walk"]
    assert triples(index) == [
        ("train", "walk/vidéo 1.mp4", 2, "walk"),
        ("train", "z.mp4", 1, 'say "hi"'),
        ("val", "run, fast/a.mp4", 0, "run, fast"),
        ("val", "sub/dir/b.mp4", 2, "walk"),
        ("test", "c.mp4", -1, ""),
    ]


def test_csv_list_without_split_column_is_all_train(tmp_path):
    ann = write(tmp_path / "list.csv", "label,path\nb,x/2.avi\na,x/1.avi\n")
    index = load_index("csv", tmp_path, ann)
    assert index.classes == ["a", "b"]
    assert triples(index) == [("train", "x/1.avi", 0, "a"), ("train", "x/2.avi", 1, "b")]


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("path,class\na.mp4,x\n", 1, ["missing column(s) ['label']"]),
        ("path,label\na.mp4,x\nb.mp4\n", 3, ["expected 2 columns", "found 1"]),
        ("path,label\na.mp4,x,extra\n", 2, ["expected 2 columns", "found 3"]),
        ("path,label,split\na.mp4,x,train\nb.mp4,x,holdout\n", 3, ["unknown split 'holdout'"]),
        ("path,label\n../a.mp4,x\n", 2, ["escapes"]),
        ("path,label\n/videos/a.mp4,x\n", 2, ["absolute"]),
        ("path,label\n,x\n", 2, ["empty video path"]),
        ("path,label\na.mp4,\n", 2, ["train row without a label"]),
        ("path,label\na.mp4,x\n\n./a.mp4,y\n", 4, ["duplicate train video 'a.mp4'", "line 2"]),
    ],
)
def test_csv_list_malformed(tmp_path, text, line, words):
    file = write(tmp_path / "my list.csv", text)
    with pytest.raises(AnnotationError) as excinfo:
        load_index("csv", tmp_path, file)
    assert_error_at(excinfo, file, line, *words)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"), min_size=1, max_size=12)
        .map(str.strip)
        .filter(lambda s: s not in ("", ".", "..")),
        min_size=1,
        max_size=8,
        unique=True,
    )
)
def test_csv_list_round_trips_any_label(tmp_path_factory, labels):
    """Labels and file names with any printable characters survive the CSV unchanged."""
    folder = tmp_path_factory.mktemp("rt")
    with open(folder / "list.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for name in labels:
            writer.writerow([f"{name}/{name}.mp4", name])
    index = load_index("csv", folder, folder / "list.csv")
    assert index.classes == sorted(labels)
    assert {(r.path, r.label_name) for r in index.rows} == {(f"{n}/{n}.mp4", n) for n in labels}


# --------------------------------------------------------------------------------------
# Folder per class


def test_folder_without_splits(tmp_path):
    root = tmp_path / "videos"
    touch(
        root,
        "jump/b.mp4",
        "jump/A.MP4",  # extension case does not matter
        "jump/notes.txt",  # not a video
        "jump/._b.mp4",  # macOS resource fork, not a video
        "jump/day 2/c.webm",  # found recursively
        "café/vidéo.mkv",  # non-ASCII names
        "empty_class/readme.md",  # no videos: not a class
        "loose.mp4",  # not inside a class folder
        ".cache/x.mp4",  # hidden folder
    )
    index = load_index("folder", root)
    assert index.classes == ["café", "jump"]
    assert triples(index) == [
        ("train", "café/vidéo.mkv", 0, "café"),
        ("train", "jump/A.MP4", 1, "jump"),
        ("train", "jump/b.mp4", 1, "jump"),
        ("train", "jump/day 2/c.webm", 1, "jump"),
    ]


def test_folder_with_split_subfolders(tmp_path):
    root = tmp_path / "videos"
    touch(
        root,
        "train/run/1.avi",
        "train/walk/2.avi",
        "val/walk/3.avi",
        "test/swim/4.avi",  # a class only in test still gets an index
        "extras/dance/5.avi",  # outside the split folders: ignored
    )
    index = load_index("folder", root, annotations="ignored")
    assert index.classes == ["run", "swim", "walk"]
    assert triples(index) == [
        ("train", "train/run/1.avi", 0, "run"),
        ("train", "train/walk/2.avi", 2, "walk"),
        ("val", "val/walk/3.avi", 2, "walk"),
        ("test", "test/swim/4.avi", 1, "swim"),
    ]
    assert_sorted(index)


def test_folder_extension_filter(tmp_path):
    touch(tmp_path, "a/1.mp4", "a/2.avi", "b/3.AVI", "b/4.gif")
    index = load_index("folder", tmp_path, extensions=["avi"])
    assert [r.path for r in index.rows] == ["a/2.avi", "b/3.AVI"]
    index = load_index("folder", tmp_path, extensions=[".gif", ".MP4"])
    assert [(r.path, r.label) for r in index.rows] == [("a/1.mp4", 0), ("b/4.gif", 1)]
    assert ".webm" in VIDEO_EXTENSIONS and ".gif" not in VIDEO_EXTENSIONS


def test_folder_empty(tmp_path):
    touch(tmp_path, "a/readme.txt", "b.mp4")
    with pytest.raises(DatasetError, match="no videos") as excinfo:
        load_index("folder", tmp_path)
    assert str(tmp_path) in str(excinfo.value)


# --------------------------------------------------------------------------------------
# python -m svt.index


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "svt.index", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )


def test_cli_writes_index_and_classes(tmp_path):
    root = tmp_path / "videos"
    touch(root, "train/zébra/1.mp4", "train/ant/2.mp4", "val/ant/3.mp4")
    out = tmp_path / "out"
    result = run_cli("--format", "folder", "--root", str(root), "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "3 videos in 2 classes" in result.stdout
    assert (out / "classes.txt").read_text(encoding="utf-8") == "ant\nzébra\n"
    assert read_rows(out / "index.csv", IndexRow) == [
        IndexRow("train/ant/2.mp4", 0, "ant", "train"),
        IndexRow("train/zébra/1.mp4", 1, "zébra", "train"),
        IndexRow("val/ant/3.mp4", 0, "ant", "val"),
    ]


def test_cli_ucf101_fold_and_annotations(ucf, tmp_path):
    root, ann = ucf
    out = tmp_path / "out"
    result = run_cli("--format", "ucf101", "--root", str(root), "--annotations", str(ann), "--fold", "2",
                     "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    rows = read_rows(out / "index.csv", IndexRow)
    assert [(r.split, r.path, r.label) for r in rows] == [
        ("train", "Archery/v_Archery_g01_c01.avi", 1),
        ("test", "BabyCrawling/v_BabyCrawling_g08_c02.avi", 2),
    ]


def test_cli_kinetics_path_template(kinetics, tmp_path):
    root, ann = kinetics
    out = tmp_path / "out"
    result = run_cli("--format", "kinetics", "--root", str(root), "--annotations", str(ann / "validate.csv"),
                     "--path-template", "{label}/{youtube_id}.mp4", "--out-dir", str(out))
    assert result.returncode == 0, result.stderr
    paths = [r.path for r in read_rows(out / "index.csv", IndexRow)]
    assert paths == ["abseiling/0wR5jVB-WPk.mp4", "zumba/zzQ9J7Dj1gM.mp4"]


def test_cli_missing_root_exits_2(tmp_path):
    root = tmp_path / "nowhere"
    result = run_cli("--format", "folder", "--root", str(root), "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"dataset root '{root}' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_malformed_annotation_exits_2(tmp_path):
    ann = write(tmp_path / "list.csv", "path,label\na.mp4,x\n../b.mp4,y\n")
    result = run_cli("--format", "csv", "--root", str(tmp_path), "--annotations", str(ann), "--out-dir",
                     str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{ann}:3:" in result.stderr
    assert "escapes" in result.stderr
    assert "Traceback" not in result.stderr
