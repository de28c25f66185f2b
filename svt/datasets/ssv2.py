"""Something-Something v2: labels.json plus train/validation(/test) JSON lists of videos.

JSON has no useful line numbers per entry, so errors give the 1-based entry number as the
"line" and say "entry N" in the reason.
"""

from __future__ import annotations

from pathlib import Path

from svt.datasets import AnnotationError, Index, RowCollector, check_relpath, read_json, require_file

_LISTS = (("train", "train.json", True), ("val", "validation.json", True), ("test", "test.json", False))


def load(annotations: Path) -> Index:
    classes = _read_labels(require_file(annotations / "labels.json"))
    known = set(classes)
    rows = RowCollector()
    for split, name, required in _LISTS:
        file = annotations / name
        if not required and not file.exists():
            continue
        entries = read_json(require_file(file))
        if not isinstance(entries, list):
            raise AnnotationError(file, 1, "expected a JSON list of video entries")
        for n, entry in enumerate(entries, 1):

            def bad(reason: str) -> AnnotationError:
                return AnnotationError(file, n, f"entry {n}: {reason}")

            if not isinstance(entry, dict):
                raise bad("expected an object")
            video_id = entry.get("id")
            if not isinstance(video_id, (str, int)) or isinstance(video_id, bool) or not str(video_id).strip():
                raise bad("missing or invalid 'id'")
            template = entry.get("template")
            if template is None:
                if split != "test":  # only the test list is unlabelled
                    raise bad("missing 'template'")
                label = ""
            else:
                # labels.json keys are the templates without the placeholder brackets.
                label = template.replace("[", "").replace("]", "") if isinstance(template, str) else None
                if label not in known:
                    raise bad(f"unknown template {template!r} (not in labels.json)")
            try:
                path = check_relpath(f"{str(video_id).strip()}.webm", file, n)
            except AnnotationError as e:
                raise bad(e.reason) from None
            rows.add(path, label, split, file, n, unit="entry")
    return rows.index(classes)


def _read_labels(file: Path) -> list[str]:
    """Class names ordered by their index, from {"<label>": "<index>"}."""
    labels = read_json(file)
    if not isinstance(labels, dict):
        raise AnnotationError(file, 1, "expected a JSON object mapping label -> class index")
    by_index: dict[int, str] = {}
    for n, (name, value) in enumerate(labels.items(), 1):
        try:
            if isinstance(value, (bool, float)):
                raise ValueError
            index = int(value)
        except (TypeError, ValueError):
            raise AnnotationError(file, n, f"entry {n}: class index {value!r} for {name!r} is not an integer") from None
        if index in by_index:
            raise AnnotationError(file, n, f"entry {n}: class index {index} already used for {by_index[index]!r}")
        by_index[index] = name
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing or not by_index:
        expected = f"0..{len(by_index) - 1}"
        raise AnnotationError(file, None, f"class indices must run {expected} without gaps (missing {missing})")
    return [by_index[i] for i in range(len(by_index))]
