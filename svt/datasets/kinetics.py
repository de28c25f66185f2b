"""Kinetics 400/600/700: CSV files with columns label,youtube_id,time_start,time_end,split."""

from __future__ import annotations

from pathlib import Path

from svt.datasets import (
    AnnotationError,
    DatasetError,
    Index,
    RowCollector,
    check_relpath,
    parse_split,
    read_csv,
)

DEFAULT_TEMPLATE = "{split}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
# "label" is optional: some releases ship test.csv without that column.
REQUIRED = ("youtube_id", "time_start", "time_end", "split")


def load(annotations: Path, path_template: str | None = None) -> Index:
    template = path_template or DEFAULT_TEMPLATE
    if annotations.is_dir():
        files = sorted(p for p in annotations.glob("*.csv") if p.is_file())
        if not files:
            raise DatasetError(f"no *.csv files in annotations folder '{annotations}'")
    else:
        files = [annotations]

    rows = RowCollector()
    for file in files:
        for line_no, record in read_csv(file, REQUIRED):
            raw_split = record["split"]
            split = parse_split(raw_split, file, line_no)
            label = record.get("label", "")
            if not label and split != "test":
                raise AnnotationError(file, line_no, f"{raw_split} row without a label")
            if not record["youtube_id"]:
                raise AnnotationError(file, line_no, "empty youtube_id")
            fields = dict(
                record,
                label=label,
                split=raw_split,  # the folder name as the downloader wrote it, e.g. "validate"
                time_start=_seconds(record["time_start"], "time_start", file, line_no),
                time_end=_seconds(record["time_end"], "time_end", file, line_no),
            )
            rows.add(check_relpath(_render(template, fields), file, line_no), label, split, file, line_no)
    return rows.index(rows.label_names())


def _seconds(text: str, what: str, file: Path, line: int) -> int:
    # Some releases write "12.0"; anything that is not a whole number of seconds is an error.
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(file, line, f"{what} '{text}' is not a number") from None
    if not value.is_integer() or value < 0:
        raise AnnotationError(file, line, f"{what} '{text}' is not a whole, non-negative number of seconds")
    return int(value)


def _render(template: str, fields: dict) -> str:
    try:
        return template.format(**fields)
    except KeyError as e:
        available = ", ".join(fields)
        raise DatasetError(f"path_template {template!r} uses unknown field {e} (available: {available})") from None
    except (ValueError, IndexError) as e:
        raise DatasetError(f"path_template {template!r} is invalid: {e}") from None
