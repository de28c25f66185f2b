# Pretraining stage: the (curated) train manifest of data.pretrain -> an exported teacher backbone.
# Outputs: <results_dir>/pretrain/<dataset>-<hash of data + recipe>/. The checkpoints/
# folder inside is deliberately not an output: Snakemake deletes the outputs of failed jobs,
# and a killed job must resume from its checkpoints on retry.

# One folder per recipe: every sweep variant with its own recipe gets its own pretraining job.
PRETRAIN = f"{RESULTS}/pretrain/{{dataset}}-{{phash}}"


wildcard_constraints:
    phash="[0-9a-f]{10}",


rule pretrain:
    """Self-distillation of the SVT student/teacher; resumes from checkpoints/last.pth."""
    input:
        unpack(knn_monitor_inputs),
        manifest=pretrain_manifest,
    output:
        backbone=f"{PRETRAIN}/teacher_backbone.pth",
        curves=report(f"{PRETRAIN}/curves.png", category="pretraining",
                      caption="../report/curves.rst"),
        run=f"{PRETRAIN}/run.json",
    params:
        recipe=pretrain_config_json,  # the variant's recipe, found from {phash}
        videos=lambda wc: f"{data_dir(config['data']['pretrain'])}/videos",
        out_dir=lambda wc, output: Path(output.backbone).parent,
        ckpt_dir=lambda wc, output: Path(output.backbone).parent / "checkpoints",
        knn=knn_args,
        track=tracking_args("pretrain"),
        mlflow="--log-checkpoint" if config["tracking"]["log_checkpoints"] else "",
        code=code_hash("svt.pretrain"),  # svt.launch only starts it
    threads: config["pretrain"]["devices_per_node"] * (config["pretrain"]["num_workers"] + 1)
    resources:
        **pretrain_resources(),  # nodes, GPUs per node, CPUs per GPU, memory, runtime
    retries: 3
    log:
        f"{LOGS}/pretrain/{{dataset}}-{{phash}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        # svt.launch: python, torchrun (several devices) or srun + torchrun per node (several
        # nodes), so the same command serves a laptop and a multi-node SLURM job.
        "python -m svt.launch --nodes {config[pretrain][nodes]}"
        " --nproc-per-node {config[pretrain][devices_per_node]} -- -m svt.pretrain"
        " --manifest {input.manifest:q} --videos-root {params.videos:q}"
        " --config-json {params.recipe:q} --out-dir {params.out_dir:q} --ckpt-dir {params.ckpt_dir:q}"
        " --num-workers {config[pretrain][num_workers]} --precision {config[pretrain][precision]}"
        " --decoder {config[pretrain][decoder]} --decoder-fallback {config[pretrain][decoder_fallback]}"
        " --prefetch {config[pretrain][prefetch]} --augment-device {config[pretrain][augment_device]}"
        " --compile {config[pretrain][compile]}"
        " --log-every {config[pretrain][log_every]}"
        " --checkpoint-every {config[pretrain][checkpoint_every]}"
        " --knn-every {config[pretrain][knn_every]} {params.knn}"
        " --system-metrics-s {config[tracking][system_metrics_s]} {params.track} {params.mlflow}"
        " >> {log:q} 2>&1"
