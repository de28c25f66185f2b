# The experiment's own folder, <results_dir>/experiments/<experiment>/: its config, the
# shared stage outputs it used and its table (svt.results). Stage outputs are shared by every
# experiment that needs them; this small record is what tells the experiments apart.

rule experiment:
    """The experiment's own folder (a variant's, in a sweep): its config, the shared outputs it
    used (with their paths) and its table. The stage outputs are shared by experiments; this is
    what one of them is."""
    input:
        record_inputs,
    output:
        record=f"{RESULTS}/experiments/{{record}}/latest.json",
        config=f"{RESULTS}/experiments/{{record}}/config.yaml",
        table=f"{RESULTS}/experiments/{{record}}/table.md",
    params:
        record=experiment_record,  # JSON of the variant's config and outputs
        code=code_hash("svt.results"),
    wildcard_constraints:
        record="|".join(map(re.escape, RECORDS)),
    log:
        f"{LOGS}/experiments/{{record}}.log",
    conda:
        "../../envs/video.yaml"  # python + pyyaml is all it needs
    shell:
        # the tracking URI from the environment, as every step's (see TRACKING_ENV)
        'python -m svt.results --write {output.record:q} --record-json {params.record:q}'
        ' --tracking-uri "$SVT_TRACKING_URI" > {log:q} 2>&1'


rule sweep_table:
    """A sweep's one comparison: variants x (slow, fast, slow-fast; linear, kNN), the final
    pretraining loss and device-hours; also a child run per variant in MLflow."""
    input:
        unpack(sweep_inputs),
    output:
        report(f"{EXPERIMENT_DIR}/sweep.md", category="evaluation", caption="../report/sweep.rst"),
    params:
        args=sweep_args,
        variants=f"{EXPERIMENT_DIR}/variants",
        track=tracking_args("sweep_table"),
        code=code_hash("svt.compare"),
    log:
        f"{LOGS}/experiments/{config['experiment']}-sweep.log",
    conda:
        "../../envs/torch.yaml"  # mlflow
    shell:
        "python -m svt.compare {params.args} --out {output:q} --variants-dir {params.variants:q}"
        " {params.track} > {log:q} 2>&1"
