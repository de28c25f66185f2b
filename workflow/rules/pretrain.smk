# Pretraining stage: the (curated) train manifest of data.pretrain -> an exported teacher backbone.
# Outputs: <results>/<experiment>/pretrain/<dataset>-<hash of data + recipe>/. The checkpoints/
# folder inside is deliberately not an output: Snakemake deletes the outputs of failed jobs,
# and a killed job must resume from its checkpoints on retry.


rule pretrain:
    """Self-distillation of the SVT student/teacher; resumes from checkpoints/last.pth."""
    input:
        unpack(knn_monitor_inputs),
        manifest=pretrain_manifest,
    output:
        backbone=f"{pretrain_dir()}/teacher_backbone.pth",
        curves=report(f"{pretrain_dir()}/curves.png", category="pretraining",
                      caption="../report/curves.rst"),
        run=f"{pretrain_dir()}/run.json",
    params:
        cfg=pretrain_config_json(),
        videos=lambda wc: f"{data_dir(config['data']['pretrain'])}/videos",
        out_dir=lambda wc, output: Path(output.backbone).parent,
        ckpt_dir=lambda wc, output: Path(output.backbone).parent / "checkpoints",
        launcher=launcher(),
        knn=knn_args,
        track=tracking_args("pretrain"),
        mlflow=lambda wc: shlex.join(
            ["--system-metrics-s", str(config["tracking"]["system_metrics_s"])]
            + (["--log-checkpoint"] if config["tracking"]["log_checkpoints"] else [])),
        code=source_hash("pretrain", "model", "posembed", "views", "loss", "loader", "checkpoint",
                         "evaluate"),
    threads: config["pretrain"]["devices_per_node"] * (config["pretrain"]["num_workers"] + 1)
    resources:
        mem_mb=lambda wc, threads: 4096 * threads,
        runtime=24 * 60,
    retries: 3
    log:
        f"{LOGS}/pretrain/{config['data']['pretrain']}-{pretrain_hash()}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "{params.launcher} -m svt.pretrain --manifest {input.manifest:q} --videos-root {params.videos:q}"
        " --config-json {params.cfg:q} --out-dir {params.out_dir:q} --ckpt-dir {params.ckpt_dir:q}"
        " {params.track} {params.mlflow} {params.knn}"
        " >> {log:q} 2>&1"
