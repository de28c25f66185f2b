# svt-workflow: raw videos -> decoded manifests -> FFT curation -> SVT pretraining -> slow-fast evaluation.
# Run from the repository root:  snakemake --cores all [--configfile config/demo.yaml]
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


# Defaults are filled in and unknown keys rejected here, before any job is planned.
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


# `snakemake --report report.html`: the key plots and tables of a run in one HTML file.
report: "workflow/report/workflow.rst"


# MLflow: one parent run per invocation, created here (top-level code would run again inside
# every cluster job; onstart runs once, in the main process, and never for dry runs). Jobs
# find its id in the environment and create their stage runs as its children.
onstart:
    start_tracking()


onsuccess:
    end_tracking("FINISHED")
    finish_run()  # the table and where everything is: the last thing on screen


onerror:
    end_tracking("FAILED")


wildcard_constraints:
    dataset="[A-Za-z0-9][A-Za-z0-9._-]*",
    dhash="[0-9a-f]{10}",
    shard=r"\d+",
    split="train|val|test",


# Bookkeeping rules (listing files, merging CSVs, printing the table) run in the main
# snakemake process, also under --profile slurm; everything that decodes or computes is a job.
localrules:
    all,
    experiment,
    sweep_table,
    data,
    index,
    decode_report,
    manifest,
    eval_table,


include: "workflow/rules/data.smk"
include: "workflow/rules/curate.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/experiment.smk"


rule all:
    input:
        data_outputs,
        curate_outputs,
        pretrain_outputs,
        evaluate_outputs,
        experiment_outputs,
    default_target: True


rule data:
    """Only the data stage: `snakemake --cores all data`."""
    input:
        data_outputs,
