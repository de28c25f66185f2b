"""The config schema is complete and strict; config.yaml and the demo preset satisfy it."""

from __future__ import annotations

import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import REPO
from svt.config import load_config

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load(path):
    return yaml.safe_load((REPO / path).read_text())


def object_nodes(node, path="config"):
    """Every object schema with properties, with its dotted path ($defs included)."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
            for key, sub in node["properties"].items():
                yield from object_nodes(sub, f"{path}.{key}")
        for key, sub in node.get("$defs", {}).items():
            yield from object_nodes(sub, f"$defs.{key}")


def test_every_key_has_description_and_default_and_rejects_unknown_keys():
    schema = yaml.safe_load(SCHEMA.read_text())
    nodes = list(object_nodes(schema))
    assert len(nodes) >= 10
    for path, node in nodes:
        assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
        for key, sub in node["properties"].items():
            assert sub.get("description"), f"{path}.{key} has no description"
            assert "default" in sub, f"{path}.{key} has no default"


def test_schema_defaults_equal_config_yaml():
    """A key dropped from config.yaml must not silently change the recipe."""
    schema = yaml.safe_load(SCHEMA.read_text())
    config = load("config.yaml")
    for section, node in schema["properties"].items():
        if "properties" not in node or section == "data":
            if "properties" not in node:
                assert config[section] == node["default"], section
            continue
        for key, sub in node["properties"].items():
            assert config[section][key] == sub["default"], f"{section}.{key}"


@pytest.mark.parametrize("preset", [[], ["config/demo.yaml"], ["config/demo-motion.yaml"],
                                    ["config/demo.yaml", "config/demo-gpu.yaml"],
                                    ["config/demo.yaml", "config/demo-long.yaml"],
                                    ["config/demo.yaml", "config/demo-sweep.yaml"]])
def test_config_and_presets_validate(preset):
    config = load_config(REPO / "config.yaml", [REPO / p for p in preset], validate=True)
    assert config["decode"]["short_side"] > 0


def test_defaults_filled_in_for_missing_sections():
    config = {"data": {"datasets": {}}}
    validate(config, str(SCHEMA))
    assert config["decode"]["shards"] == 64 and config["optim"]["epochs"] == 20


@pytest.mark.parametrize("path,value", [
    (("decode", "short_sid"), 64),                    # typo of a key
    (("typo_section",), {}),                           # unknown section
    (("decode", "shards"), 0),                         # out of range
    (("decode", "preset"), "warp"),                    # not an x264 preset
    (("data", "datasets", "ucf101", "fold"), 4),       # no such official split
    (("data", "datasets", "ucf101", "colour"), "red"), # unknown dataset key
    (("experiment",), "../escape"),                    # would write outside results/
])
def test_malformed_config_is_rejected(path, value):
    config = load("config.yaml")
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(WorkflowError):
        validate(config, str(SCHEMA))


def test_every_key_in_config_yaml_is_commented():
    lines = (REPO / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z0-9_]+:", line):
            assert "#" in line or lines[i - 1].strip().startswith("#"), f"config.yaml:{i + 1} {line!r}"


def test_load_config_merges_presets_and_overrides_as_snakemake_does(tmp_path):
    """svt.config.load_config: the one loader of the benches and tests."""
    preset = tmp_path / "p.yaml"
    preset.write_text("optim:\n  lr: 0.01\nviews:\n  local_frames: [2, 2]\n")
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = load_config(REPO / "config.yaml", [preset], ["optim.epochs=3", "model.init=none"],
                      validate=True)
    assert cfg["optim"]["lr"] == 0.01 and cfg["optim"]["epochs"] == 3  # merged key by key
    assert cfg["optim"]["warmup_epochs"] == base["optim"]["warmup_epochs"]
    assert cfg["views"]["local_frames"] == [2, 2]  # a list replaces, never merges
    with pytest.raises(ValueError, match="no key 'lrr'"):
        load_config(REPO / "config.yaml", overrides=["optim.lrr=1"])
    preset.write_text("optim:\n  lr: -1.0\n")
    with pytest.raises(WorkflowError):
        load_config(REPO / "config.yaml", [preset], validate=True)
