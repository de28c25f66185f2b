# Helpers shared by the .smk files: stage folders named by config hashes, dataset checks,
# argument lists for `python -m svt.<step>`.
import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(workflow.basedir)
# Plan-time imports of svt work without `pip install -e .`. Jobs need nothing either: they
# run `python -m svt.<step>` from the repository root, and `-m` puts that folder on sys.path
# (which is what makes the package importable inside `--use-conda` environments).
sys.path.insert(0, str(REPO))

from svt.datasets import DatasetError, load_index

# Stage outputs are shared by every experiment: their folders are named by the hash of what
# they depend on (<results_dir>/data/<dataset>-<hash>/, pretrain/<dataset>-<hash>/, ...), never
# by the experiment, so two experiments with the same data and recipe decode and train once.
# The experiment's own folder holds what it is: its config, the outputs it used, its table.
RESULTS = str(config["results_dir"])
LOGS = str(config["logs_dir"])  # logs/<stage>/<same folder name as the output>/...
EXPERIMENT_DIR = str(Path(config["results_dir"], "experiments", config["experiment"]))


# ---- sweep variants -------------------------------------------------------------------------
# config `sweep:` names variants (partial overrides of the recipe). Every stage function
# below takes the config of one variant; the pretraining and evaluation rules find theirs
# from the hash in their output path (find_variant), so variants that agree on a stage share
# its job, and the data and curation stages, which no variant may change, run once.


def _variants() -> tuple[dict, dict]:
    """({name: the variant's config}, {name: its overrides}); without a sweep, the experiment
    alone under its own name."""
    from snakemake.utils import validate as validate_config
    from svt.sweep import SweepError, expand, variant_config

    try:
        overrides = expand(config.get("sweep"))
        variants = {name: variant_config(config, o) for name, o in overrides.items()}
    except SweepError as err:
        raise ValueError(f"config: {err}") from None
    for name, cfg in variants.items():
        try:
            validate_config(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
        except Exception as err:
            raise ValueError(f"config: sweep variant {name!r} is not a valid config: {err}") from None
    return (variants, overrides) if variants else ({config["experiment"]: config}, {})


VARIANTS, VARIANT_OVERRIDES = _variants()
SWEEP = bool(VARIANT_OVERRIDES)


def find_variant(match, what: str) -> dict:
    """The first variant config for which ``match(cfg)`` holds; an error naming ``what``
    (an output path) when none does: that folder belongs to another config."""
    for cfg in VARIANTS.values():
        if match(cfg):
            return cfg
    raise ValueError(f"{what} belongs to another config (no variant of this one makes it)")


def variant_dir(name: str) -> str:
    """A variant's record: the experiment's folder itself, or variants/<name>/ in a sweep."""
    return f"{EXPERIMENT_DIR}/variants/{name}" if SWEEP else EXPERIMENT_DIR


def stage_hash(obj) -> str:
    """Short hash of the config a stage depends on: its output folder's name."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def code_hash(entry: str) -> str:
    """Hash of the svt modules ``python -m <entry>`` imports (svt.code_hash), passed as a rule
    param so that editing a step's code reruns that step and what depends on it, and nothing
    else (Snakemake hashes only the shell string of `python -m` calls)."""
    from svt.code_hash import code_hash as imported_code_hash

    return imported_code_hash(entry, REPO / "svt")  # this checkout's code, wherever svt is installed


# ---- datasets ---------------------------------------------------------------------------


def used_datasets() -> list[str]:
    d = config["data"]
    names = list(dict.fromkeys([d["pretrain"], *d["evaluate"], *d["extra"]]))
    unknown = [n for n in names if n not in d["datasets"]]
    if unknown:
        raise ValueError(
            f"config: data.pretrain/evaluate/extra name {unknown}, which are not defined "
            f"under data.datasets (defined: {sorted(d['datasets'])})"
        )
    return names


def _index_dataset(name: str):
    spec = config["data"]["datasets"][name]
    try:
        return load_index(
            spec["format"], spec["root"], spec.get("annotations"), spec.get("fold", 1),
            spec.get("path_template"), tuple(spec.get("extensions") or ()) or None,
        )
    except DatasetError as err:
        raise ValueError(f"dataset '{name}': {err}") from None


@functools.cache
def dataset_index(name: str):
    """The dataset's parsed annotations, read once per Snakemake process while the DAG is
    built (input function of the default target): a missing root or a malformed line stops the
    workflow there, naming the file and line, before any job starts. Reading lazily keeps
    `snakemake --lint` independent of the data and cluster jobs from re-reading it."""
    return _index_dataset(name)


DECODE_KEYS = ("short_side", "fps", "gop", "crf", "preset", "fast_decode", "min_frames",
               "min_decoded_fraction")


def data_hash(name: str) -> str:
    if name not in config["data"]["datasets"]:
        used_datasets()  # raises, naming the undefined dataset
    spec = config["data"]["datasets"][name]
    return stage_hash({"dataset": spec, "decode": {k: config["decode"][k] for k in DECODE_KEYS}})


def data_dir(name: str) -> str:
    return f"{RESULTS}/data/{name}-{data_hash(name)}"


def dataset_of(wildcards) -> dict:
    """The dataset spec behind a data-stage path, refusing folders of another config."""
    if wildcards.dhash != data_hash(wildcards.dataset):
        raise ValueError(
            f"{RESULTS}/data/{wildcards.dataset}-{wildcards.dhash} belongs to another config "
            f"(the current one is {data_dir(wildcards.dataset)})"
        )
    return config["data"]["datasets"][wildcards.dataset]


def annotation_files(wildcards) -> list[str]:
    ann = dataset_of(wildcards).get("annotations")
    if not ann:
        return []
    p = Path(ann)
    return sorted(str(f) for f in p.iterdir() if f.is_file()) if p.is_dir() else [str(p)]


def index_args(wildcards) -> str:
    spec = dataset_of(wildcards)
    args = ["--format", spec["format"], "--root", spec["root"], "--fold", str(spec["fold"])]
    if spec.get("annotations"):
        args += ["--annotations", spec["annotations"]]
    if spec.get("path_template"):
        args += ["--path-template", spec["path_template"]]
    if spec.get("extensions"):
        args += ["--extensions", *spec["extensions"]]
    return shlex.join(args)


def decode_args(wildcards) -> str:
    spec, dec = dataset_of(wildcards), config["decode"]
    args = ["--raw-root", spec["root"], "--num-shards", str(dec["shards"])]
    for key in (*DECODE_KEYS, "timeout_s"):
        flag = "--timeout" if key == "timeout_s" else f"--{key.replace('_', '-')}"
        if isinstance(dec[key], bool):  # a switch: --fast-decode / --no-fast-decode
            args.append(flag if dec[key] else f"--no-{flag[2:]}")
        else:
            args += [flag, str(dec[key])]
    return shlex.join(args)


def shard_manifests(wildcards) -> list[str]:
    dataset_of(wildcards)
    base = f"{RESULTS}/data/{wildcards.dataset}-{wildcards.dhash}/shards"
    return [f"{base}/{k}.csv" for k in range(config["decode"]["shards"])]


def data_outputs(wildcards=None) -> list[str]:
    out = []
    for name in used_datasets():
        index, d = dataset_index(name), data_dir(name)
        out += [f"{d}/rejects.csv", f"{d}/summary.json"]
        out += [f"{d}/manifest/{split}.csv" for split in index.splits()]
    return out


# ---- curation ---------------------------------------------------------------------------


def curate_datasets() -> list[str]:
    d = config["data"]
    return list(dict.fromkeys([d["pretrain"], *d["evaluate"]]))


def curate_hash() -> str:
    return stage_hash({"data": {n: data_hash(n) for n in curate_datasets()},
                       "curate": config["curate"], "pretrain": config["data"]["pretrain"]})


def curate_dir() -> str:
    return f"{RESULTS}/curate/{curate_hash()}"


def curate_manifests(wildcards=None) -> dict:
    """Every split the checks look at: the pretraining split and the evaluation splits."""
    out = {f"{config['data']['pretrain']}/train": f"{data_dir(config['data']['pretrain'])}/manifest/train.csv"}
    for name in config["data"]["evaluate"]:
        for split in dataset_index(name).splits():
            out[f"{name}/{split}"] = f"{data_dir(name)}/manifest/{split}.csv"
    return out


def curate_args(wildcards, input) -> str:
    c = config["curate"]
    args = []
    for name, path in input.items():
        args += ["--manifest", f"{name}={path}"]
    for ds in curate_datasets():
        args += ["--videos-root", f"{ds}={data_dir(ds)}/videos"]
    args += ["--pretrain", f"{config['data']['pretrain']}/train",
             "--motion-threshold", str(c["motion_threshold"]),
             "--duplicate-threshold", str(c["duplicate_threshold"]),
             "--sample-fps", str(c["sample_fps"]), "--size", str(c["size"]),
             "--static", "on" if c["static"] else "off",
             "--duplicates", "on" if c["duplicates"] else "off",
             "--decoder", config["pretrain"]["decoder"]]
    return f"{shlex.join(args)} {tracking_args('curate')(wildcards)}"


# ---- pretraining ------------------------------------------------------------------------

PRETRAIN_SECTIONS = ("model", "views", "augment", "loss", "optim")


def pretrain_hash(cfg: dict | None = None) -> str:
    """Everything the trained weights depend on: the data and the recipe, not the runtime."""
    cfg = cfg or config
    recipe = {k: cfg[k] for k in PRETRAIN_SECTIONS}
    data = curate_hash() if config["curate"]["enabled"] else data_hash(config["data"]["pretrain"])
    # The number of processes sets the global batch (batch_size_per_gpu each), so it is recipe.
    world = config["pretrain"]["nodes"] * config["pretrain"]["devices_per_node"]
    return stage_hash({"data": data, **recipe, "world_size": world})


def pretrain_manifest(wildcards=None) -> str:
    """The curated manifest (static clips left out) or the decoded train manifest."""
    if config["curate"]["enabled"]:
        return f"{curate_dir()}/pretrain_manifest.csv"
    return f"{data_dir(config['data']['pretrain'])}/manifest/train.csv"


def pretrain_dir(cfg: dict | None = None) -> str:
    return f"{RESULTS}/pretrain/{config['data']['pretrain']}-{pretrain_hash(cfg)}"


def pretrain_config_json(wildcards) -> str:
    """The recipe for svt.pretrain (of the variant the output path names). Runtime keys
    (nodes, devices, workers, logging) reach the command through {config[pretrain][...]}
    instead of params: a params change reruns a job, and those keys must not restart a
    finished pretraining."""
    cfg = variant_of_pretrain(wildcards)
    return json.dumps({k: cfg[k] for k in PRETRAIN_SECTIONS}, sort_keys=True)


def variant_of_pretrain(wildcards) -> dict:
    """The config (one sweep variant's, or the experiment's) whose pretraining folder this is."""
    if wildcards.dataset != config["data"]["pretrain"]:
        raise ValueError(f"{RESULTS}/pretrain/{wildcards.dataset}-{wildcards.phash}: this config "
                         f"pretrains on {config['data']['pretrain']!r}")
    return find_variant(lambda cfg: pretrain_hash(cfg) == wildcards.phash,
                        f"{RESULTS}/pretrain/{wildcards.dataset}-{wildcards.phash}")


def tracking_uri() -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI (e.g. a server started with
    scripts/mlflow-server.sh), else the embedded sqlite store <results_dir>/mlflow.db."""
    uri = config["tracking"]["uri"] or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path(config['results_dir']).absolute() / 'mlflow.db'}"


def tracking_experiment() -> str:
    return config["tracking"]["experiment"] or config["experiment"]


# Jobs (local, or SLURM with sbatch --export=ALL) read the tracking URI from here.
TRACKING_ENV = "SVT_TRACKING_URI"
os.environ[TRACKING_ENV] = tracking_uri()
# the MLflow experiment too: outputs are shared by experiments, so naming another experiment
# must not rerun jobs through a changed param
EXPERIMENT_ENV = "SVT_MLFLOW_EXPERIMENT"
os.environ[EXPERIMENT_ENV] = tracking_experiment()


def tracking_args(rule_name: str):
    """Params function: where a step logs, and the tags of its MLflow child run (rule and
    wildcards). The parent run id, git commit and config hash reach the job through the
    environment (svt.tracking.PARENT_ENV ...), not through params, which would rerun jobs."""
    def args(wildcards) -> str:
        out = ["--tag", f"svt.rule={rule_name}"]
        wc = dict(wildcards.items())
        if wc:
            pairs = ",".join(f"{k}={v}" for k, v in sorted(wc.items()))
            out += ["--tag", f"svt.wildcards={pairs}"]
        # the URI comes from the environment (see TRACKING_ENV): pointing the workflow at a
        # tracking server must not rerun every job, as a changed param would
        return f'--tracking-uri "${TRACKING_ENV}" --experiment "${EXPERIMENT_ENV}" {shlex.join(out)}'

    return args


def start_tracking() -> None:
    """onstart: the MLflow store, experiment and this invocation's parent run."""
    from svt.tracking import start_workflow_run

    files = list(dict.fromkeys(str(f) for f in workflow.configfiles))
    run_id = start_workflow_run(tracking_uri(), tracking_experiment(), config, files)
    if run_id:
        print(f"MLflow: parent run {run_id} in experiment '{tracking_experiment()}' at "
              f"{tracking_uri()} (make dashboard)", file=sys.stderr)
    else:
        print(f"MLflow: {tracking_uri()} is unreachable; the stages run untracked",
              file=sys.stderr)


def end_tracking(status: str) -> None:
    """onsuccess / onerror: close the parent run."""
    from svt.tracking import end_workflow_run

    end_workflow_run(tracking_uri(), status)


# ---- cluster requests (used by the SLURM executor; local runs ignore them) ---------------


def cluster_resources(gpus: int = 0, nodes: int = 1, cpus_per_gpu: int = 0) -> dict:
    """SLURM resources of one rule: partition and account from config (empty: sbatch reads
    SBATCH_PARTITION / SBATCH_ACCOUNT), GPUs when cluster.gpus is on, and for several nodes one
    task per node, launched by the command itself (mpi="srun" so the job step does not wrap it)."""
    c = config["cluster"]
    res = {}
    if c["partition"]:
        res["slurm_partition"] = c["partition"]
    if c["account"]:
        res["slurm_account"] = c["account"]
    use_gpus = gpus if c["gpus"] else 0
    if nodes > 1:
        # --ntasks=nodes with one task per node; tasks_per_gpu=0 keeps the plugin from turning
        # `tasks` into --ntasks-per-gpu; GPUs per node as gres (--gpus would be a job total).
        res.update(nodes=nodes, tasks=nodes, mpi="srun")
        if use_gpus:
            model = f"{c['gpu_model']}:" if c["gpu_model"] else ""
            res.update(gres=gpu_request(f"gpu:{model}{use_gpus}"), tasks_per_gpu=gpu_request(0))
    elif use_gpus:
        res["gpu"] = gpu_request(use_gpus)
        if c["gpu_model"]:
            res["gpu_model"] = gpu_request(c["gpu_model"])
    if use_gpus and cpus_per_gpu:
        res["cpus_per_gpu"] = gpu_request(cpus_per_gpu)
    return res


@functools.cache
def local_gpu_count() -> int:
    """GPUs this machine shows (nvidia-smi -L); 0 without a driver."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def cluster_exec() -> bool:
    """Jobs go to a cluster executor (--profile slurm), also in its dry run: Snakemake runs
    every dry run through its local "dryrun" executor and keeps the intended one only as
    execution_settings.use_threads, which it forces on for remote executors (snakemake.api)."""
    if not workflow.local_exec:
        return True
    return workflow.dryrun and bool(workflow.execution_settings.use_threads)


def gpu_request(value):
    """A GPU resource, decided per job: a local run on a machine without GPUs does not claim
    it (a resource that evaluates to None is dropped), a cluster job always does (and so does
    the dry run of a cluster profile, on a login node without GPUs)."""
    return lambda wildcards: None if not cluster_exec() and local_gpu_count() == 0 else value


def pretrain_resources() -> dict:
    p, c = config["pretrain"], config["cluster"]
    devices = p["devices_per_node"]
    return dict(
        **cluster_resources(gpus=devices, nodes=p["nodes"], cpus_per_gpu=p["num_workers"] + 1),
        mem_mb=c["pretrain_mem_mb_per_device"] * devices,
        runtime=c["pretrain_runtime"],
    )


# ---- evaluation -------------------------------------------------------------------------

PROBE_KEYS = ("probe_epochs", "probe_lr", "probe_batch_size", "probe_momentum", "knn_k",
              "knn_temperature", "combine")


def backbone_kinds(cfg: dict | None = None) -> list[str]:
    """What gets evaluated side by side: the pretrained (or imported) backbone, as the baseline
    the same architecture with random weights and, as the upper bound, trained with labels."""
    ev = (cfg or config)["evaluate"]
    kinds = ["imported" if ev["backbone"] else "pretrained"]
    kinds += ["random"] if ev["random_baseline"] else []
    return kinds + (["supervised"] if ev["supervised_bound"] else [])


FEATURE_KEYS = ("slow_frames", "slow_size", "fast_frames", "fast_size", "clips", "crops")
BACKBONE_KINDS = ("pretrained", "imported", "random", "supervised")
# what the supervised bound's weights depend on besides its dataset: pretraining's init,
# architecture, views and optimiser (svt.supervised)
SUPERVISED_SECTIONS = ("model", "views", "augment", "optim")


def backbone_hash(kind: str, cfg: dict | None = None, dataset: str | None = None) -> str:
    """What one backbone's adapted weights and cached features depend on. Each backbone has its
    own folder, so a new pretraining re-extracts only its own features, never the random
    baseline's (which depends on the architecture, the seed and the views alone). The
    supervised bound is trained on one evaluation dataset's labels: one per ``dataset``."""
    cfg = cfg or config
    model = {k: v for k, v in cfg["model"].items() if k != "init"}
    views = {k: cfg["evaluate"][k] for k in FEATURE_KEYS}
    if kind == "pretrained":
        source = {"pretrain": pretrain_hash(cfg)}
    elif kind == "imported":
        source = {"backbone": cfg["evaluate"]["backbone"], "model": model}
    elif kind == "random":
        source = {"model": model, "seed": cfg["optim"]["seed"]}
    elif kind == "supervised":
        source = {"train": {k: cfg[k] for k in SUPERVISED_SECTIONS},
                  "dataset": dataset, "data": data_hash(dataset)}
    else:
        raise ValueError(f"unknown backbone kind {kind!r}; known: {', '.join(BACKBONE_KINDS)}")
    return stage_hash({"kind": kind, **source, "views": views})


def backbone_dir(kind: str, cfg: dict | None = None, dataset: str | None = None) -> str:
    return f"{RESULTS}/evaluate/{kind}-{backbone_hash(kind, cfg, dataset)}"


def backbone_datasets(kind: str) -> list:
    """The datasets a backbone's hash names: only the supervised bound has one."""
    return list(config["data"]["evaluate"]) if kind == "supervised" else [None]


def backbone_source(kind: str, khash: str) -> tuple[dict, str | None]:
    """The config (a sweep variant's or the experiment's) and, for the supervised bound, the
    dataset behind an evaluation folder; refuses folders no variant of this config would make."""
    for cfg in VARIANTS.values():
        for dataset in backbone_datasets(kind):
            if backbone_hash(kind, cfg, dataset) == khash:
                return cfg, dataset
    raise ValueError(f"{RESULTS}/evaluate/{kind}-{khash} belongs to another config "
                     "(no variant of this one makes it)")


def variant_of_backbone(wildcards) -> dict:
    return backbone_source(wildcards.kind, wildcards.khash)[0]


def checked_backbone(wildcards) -> str:
    variant_of_backbone(wildcards)
    return wildcards.kind


def features_dir(kind: str, dataset: str, cfg: dict | None = None) -> str:
    return f"{backbone_dir(kind, cfg, dataset)}/{dataset}-{data_hash(dataset)}"


def probe_hash(cfg: dict | None = None) -> str:
    return stage_hash({k: (cfg or config)["evaluate"][k] for k in PROBE_KEYS})


def variant_of_probe(wildcards) -> dict:
    dataset = wildcards.dataset if wildcards.kind == "supervised" else None
    return find_variant(lambda cfg: backbone_hash(wildcards.kind, cfg, dataset) == wildcards.khash
                        and probe_hash(cfg) == wildcards.phash,
                        f"{RESULTS}/evaluate/{wildcards.kind}-{wildcards.khash}/.../probe-{wildcards.phash}")


def table_hash(cfg: dict | None = None) -> str:
    """The final table depends on every evaluated backbone and dataset."""
    return stage_hash({"backbones": {k if d is None else f"{k}-{d}": backbone_hash(k, cfg, d)
                                     for k in backbone_kinds(cfg) for d in backbone_datasets(k)},
                       "data": {d: data_hash(d) for d in config["data"]["evaluate"]}})


def variant_of_table(wildcards) -> dict:
    return find_variant(lambda cfg: table_hash(cfg) == wildcards.thash and probe_hash(cfg) == wildcards.phash,
                        f"{RESULTS}/evaluate/table-{wildcards.thash}/probe-{wildcards.phash}")


def geometries(cfg: dict) -> list[str]:
    ev = cfg["evaluate"]
    return ["--geometry", f"slow={ev['slow_frames']}x{ev['slow_size']}",
            "--geometry", f"fast={ev['fast_frames']}x{ev['fast_size']}"]


def adapt_inputs(wildcards) -> dict:
    cfg, kind = variant_of_backbone(wildcards), wildcards.kind
    if kind == "pretrained":
        return {"backbone": f"{pretrain_dir(cfg)}/teacher_backbone.pth"}
    if kind == "imported":
        return {"backbone": cfg["evaluate"]["backbone"]}
    if kind == "supervised":
        return {"backbone": f"{RESULTS}/evaluate/supervised-{wildcards.khash}/backbone.pth"}
    return {}


def supervised_inputs(wildcards) -> dict:
    """The bound's training data: its evaluation dataset's train manifest and classes."""
    _, dataset = backbone_source("supervised", wildcards.khash)
    return {"manifest": f"{data_dir(dataset)}/manifest/train.csv",
            "classes": f"{data_dir(dataset)}/classes.txt"}


def supervised_config_json(wildcards) -> str:
    """The recipe for svt.supervised (the variant's); runtime keys come from {config[pretrain]}
    in the command, so changing them reruns nothing."""
    cfg, _ = backbone_source("supervised", wildcards.khash)
    return json.dumps({k: cfg[k] for k in SUPERVISED_SECTIONS}, sort_keys=True)


def adapt_args(wildcards, input) -> str:
    cfg = variant_of_backbone(wildcards)
    model = json.dumps({k: v for k, v in cfg["model"].items() if k != "init"}, sort_keys=True)
    if wildcards.kind == "random":
        args = ["--random-init", "--seed", str(cfg["optim"]["seed"]), "--model-json", model]
    else:
        args = ["--backbone", input.backbone]
        if wildcards.kind == "imported":
            args += ["--model-json", model]
    # the normalisation pretraining uses; a backbone that stores its own keeps that one
    norm = [str(float(v)) for k in ("mean", "std") for v in cfg["augment"][k]]
    args += ["--mean", *norm[:3], "--std", *norm[3:]]
    return shlex.join(args + geometries(cfg))


def eval_test_split(name: str) -> str:
    splits = dataset_index(name).splits()
    return "test" if "test" in splits else "val"


def features_manifest(wildcards) -> str:
    checked_backbone(wildcards)
    dataset_of(wildcards)
    split = "train" if wildcards.split == "train" else eval_test_split(wildcards.dataset)
    return f"{data_dir(wildcards.dataset)}/manifest/{split}.csv"


def probe_features(wildcards) -> dict:
    cfg = variant_of_probe(wildcards)
    dataset_of(wildcards)
    base = features_dir(wildcards.kind, wildcards.dataset, cfg)
    return {f"{split}_{geom}": f"{base}/{split}_{geom}.pt"
            for split in ("train", "test") for geom in ("slow", "fast")}


def table_inputs(wildcards) -> dict:
    cfg = variant_of_table(wildcards)
    return {f"{kind}-{d}": f"{features_dir(kind, d, cfg)}/probe-{wildcards.phash}/metrics.json"
            for kind in backbone_kinds(cfg) for d in config["data"]["evaluate"]}


def probe_run_json(wildcards) -> str | list:
    """Only the pretrained backbone's probe reports to the pretraining run; the random
    baseline's has its own run and never files its metrics under the pretraining."""
    if wildcards.kind != "pretrained":
        return []
    return f"{pretrain_dir(variant_of_backbone(wildcards))}/run.json"


def probe_settings(wildcards) -> dict:
    cfg = variant_of_probe(wildcards)
    return {**{k: cfg["evaluate"][k] for k in PROBE_KEYS}, "seed": cfg["optim"]["seed"]}


def feature_settings(wildcards) -> dict:
    ev = variant_of_backbone(wildcards)["evaluate"]
    return {"clips": ev["clips"], "crops": ev["crops"]}


def run_json_args(wildcards, input) -> str:
    """Evaluation metrics go to the MLflow run that produced the backbone."""
    return shlex.join(["--run-json", input.run]) if input.run else ""


def evaluate_outputs(wildcards=None, cfg: dict | None = None) -> list[str]:
    """The table of each variant (the experiment's alone without a sweep)."""
    cfgs = [cfg] if cfg else list(VARIANTS.values())
    return list(dict.fromkeys(
        f"{RESULTS}/evaluate/table-{table_hash(c)}/probe-{probe_hash(c)}/table.md" for c in cfgs))


def pretrain_outputs(wildcards=None, cfg: dict | None = None) -> list[str]:
    """Each variant's pretrained backbone; nothing when an imported checkpoint is evaluated."""
    cfgs = [cfg] if cfg else list(VARIANTS.values())
    return list(dict.fromkeys(f"{pretrain_dir(c)}/teacher_backbone.pth" for c in cfgs
                              if not c["evaluate"]["backbone"]))


def curate_outputs(wildcards=None) -> list[str]:
    return [f"{curate_dir()}/summary.json"] if config["curate"]["enabled"] else []


def knn_monitor_inputs(wildcards=None) -> dict:
    """The first evaluation dataset's train and test manifests, for the kNN monitor."""
    if not config["pretrain"]["knn_every"] or not config["data"]["evaluate"]:
        return {}
    name = config["data"]["evaluate"][0]
    d = data_dir(name)
    return {"knn_train": f"{d}/manifest/train.csv",
            "knn_test": f"{d}/manifest/{eval_test_split(name)}.csv"}


def knn_args(wildcards, input) -> str:
    if "knn_train" not in input.keys():
        return ""
    return shlex.join(["--knn-train", input.knn_train, "--knn-test", input.knn_test,
                       "--knn-videos-root", str(Path(input.knn_train).parent.parent / "videos")])


# ---- where the results are (onsuccess; `make results`) -----------------------------------


def run_outputs(cfg: dict, existing_only: bool = True) -> dict:
    """The folders of one variant's stages and its table, as svt.results lists them."""
    out = {"data": [data_dir(name) for name in used_datasets()],
           "curate": [curate_dir()] if config["curate"]["enabled"] else [],
           "pretrain": [str(Path(p).parent) for p in pretrain_outputs(cfg=cfg)],
           "evaluate": [backbone_dir(kind, cfg, d) for kind in backbone_kinds(cfg)
                        for d in backbone_datasets(kind)],
           "table": evaluate_outputs(cfg=cfg),
           "logs": [LOGS]}
    return {k: [p for p in v if not existing_only or Path(p).exists()] for k, v in out.items()}


# Config sections that change how a run goes, not what it makes: left out of the experiment
# record, so that changing them reruns nothing (not even the record).
RUNTIME_SECTIONS = ("pretrain", "cluster", "tracking")
RECORD_FILES = ("latest.json", "config.yaml", "table.md")


# record folder under results/experiments/ -> its variant
RECORDS = {str(Path(variant_dir(n)).relative_to(Path(RESULTS, "experiments"))): n for n in VARIANTS}


def record_variant(wildcards) -> str:
    """The variant whose record folder (results/experiments/<record>/) a path names."""
    try:
        return RECORDS[wildcards.record]
    except KeyError:
        raise ValueError(f"{RESULTS}/experiments/{wildcards.record}: not a record of this config") from None


def experiment_record(wildcards) -> str:
    """Params of the experiment record: the variant's config with the runtime sections aside
    and the outputs it uses, as JSON for `python -m svt.results --write`. Not the config
    files' names: the same config from another file is the same experiment."""
    name = record_variant(wildcards)
    # a variant's record holds its own config, not the sweep that made it (editing another
    # variant must not rewrite this one's record)
    recipe = {k: v for k, v in VARIANTS[name].items() if k not in (*RUNTIME_SECTIONS, "sweep")}
    return json.dumps({"config": recipe, "outputs": run_outputs(VARIANTS[name], existing_only=False),
                       "variant": name if SWEEP else None,
                       "overrides": VARIANT_OVERRIDES.get(name, {})}, sort_keys=True)


def record_inputs(wildcards) -> list[str]:
    cfg = VARIANTS[record_variant(wildcards)]
    return data_outputs() + curate_outputs() + pretrain_outputs(cfg=cfg) + evaluate_outputs(cfg=cfg)


def experiment_outputs(wildcards=None) -> list[str]:
    out = [f"{variant_dir(name)}/{f}" for name in VARIANTS for f in RECORD_FILES]
    return out + ([f"{EXPERIMENT_DIR}/sweep.md"] if SWEEP else [])


def sweep_inputs(wildcards=None) -> dict:
    """Per variant: its pretrained backbone's probe metrics per evaluation dataset and its
    record (which lists the pretraining folder)."""
    out = {}
    for name, cfg in VARIANTS.items():
        kind = backbone_kinds(cfg)[0]
        for d in config["data"]["evaluate"]:
            out[f"{name}/{d}"] = f"{features_dir(kind, d, cfg)}/probe-{probe_hash(cfg)}/metrics.json"
        out[f"{name}/record"] = f"{variant_dir(name)}/latest.json"
    return out


def sweep_args(wildcards, input) -> str:
    """--variant NAME=<JSON> per variant for svt.compare, in the config's order."""
    args = []
    for name, cfg in VARIANTS.items():
        spec = {"overrides": VARIANT_OVERRIDES.get(name, {}),
                "metrics": {d: input[f"{name}/{d}"] for d in config["data"]["evaluate"]},
                "pretrain": (run_outputs(cfg, existing_only=False)["pretrain"] or [None])[0]}
        args.append(f"--variant={name}={json.dumps(spec, sort_keys=True)}")
    devices = config["pretrain"]["nodes"] * config["pretrain"]["devices_per_node"]
    return shlex.join(args + ["--devices", str(devices)])


def finish_run() -> None:
    """onsuccess: print the evaluation table with where every output is (the experiment
    record written by the experiment rule), at the end of the output where people look
    (SVT_PRINT_TABLE=0: not here; `make demo` prints it once, after Snakemake's summary)."""
    from svt.results import LATEST, describe

    if os.environ.get("SVT_PRINT_TABLE") == "0":
        return
    for name in VARIANTS:
        record = Path(variant_dir(name), LATEST)
        if record.is_file():
            print(f"\n{describe(json.loads(record.read_text()))}", flush=True)
    sweep = Path(EXPERIMENT_DIR, "sweep.md")
    if SWEEP and sweep.is_file():
        print(f"\nSweep {config['experiment']} ({sweep}):\n\n{sweep.read_text().rstrip()}", flush=True)
    print(flush=True)
