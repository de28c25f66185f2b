# The experiment's own folder, <results_dir>/experiments/<experiment>/: its config, the
# shared stage outputs it used and its table (svt.results). Stage outputs are shared by every
# experiment that needs them; this small record is what tells the experiments apart.

rule experiment:
    """The experiment's own folder: its config, the shared outputs it used (with their paths)
    and its table. The stage outputs are shared by experiments; this is what one of them is."""
    input:
        data_outputs,
        curate_outputs,
        pretrain_outputs,
        evaluate_outputs,
    output:
        record=f"{EXPERIMENT_DIR}/latest.json",
        config=f"{EXPERIMENT_DIR}/config.yaml",
        table=f"{EXPERIMENT_DIR}/table.md",
    params:
        record=lambda wildcards: experiment_record(),  # JSON: braces must not be read as wildcards
        code=code_hash("svt.results"),
    log:
        f"{LOGS}/experiments/{config['experiment']}.log",
    conda:
        "../../envs/video.yaml"  # python + pyyaml is all it needs
    shell:
        # the tracking URI from the environment, as every step's (see TRACKING_ENV)
        'python -m svt.results --write {output.record:q} --record-json {params.record:q}'
        ' --tracking-uri "$SVT_TRACKING_URI" > {log:q} 2>&1'
