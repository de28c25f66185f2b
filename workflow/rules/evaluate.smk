# Evaluation stage: frozen backbones -> slow and fast features per split -> linear probe + kNN.
#   <results_dir>/evaluate/<kind>-<hash>/adapted.pth       one folder per backbone
#                                  .../<dataset>-<dhash>/<split>_<view>.pt
#                                  .../<dataset>-<dhash>/probe-<phash>/metrics.json
#   <results_dir>/evaluate/table-<hash>/probe-<phash>/table.md
# Each backbone's folder is named by what its features depend on (backbone_hash), so a new
# pretraining leaves the random baseline's features alone; the probe lives in
# probe-<hash of the probe settings>/, so changing a probe setting reruns only the probe.

EVAL = f"{RESULTS}/evaluate/{{kind}}-{{khash}}"
EVAL_DATA = f"{EVAL}/{{dataset}}-{{dhash}}"
EVAL_LOGS = f"{LOGS}/evaluate/{{kind}}-{{khash}}"


wildcard_constraints:
    kind="|".join(BACKBONE_KINDS),
    khash="[0-9a-f]{10}",
    thash="[0-9a-f]{10}",


rule supervised:
    """The supervised upper bound: the backbone trained with one evaluation dataset's labels
    (evaluate.supervised_bound); resumes from checkpoints/ after a kill."""
    input:
        unpack(supervised_inputs),
    output:
        backbone=f"{RESULTS}/evaluate/supervised-{{khash}}/backbone.pth",
        curves=report(f"{RESULTS}/evaluate/supervised-{{khash}}/curves.png", category="evaluation",
                      caption="../report/supervised.rst"),
    params:
        recipe=supervised_config_json,  # the variant's, found from {khash}
        videos=lambda wc, input: Path(input.manifest).parent.parent / "videos",
        out_dir=lambda wc, output: Path(output.backbone).parent,
        track=tracking_args("supervised"),
        code=code_hash("svt.supervised"),
    threads: config["pretrain"]["num_workers"] + 1
    resources:
        **cluster_resources(gpus=1, cpus_per_gpu=config["pretrain"]["num_workers"] + 1),
        mem_mb=config["cluster"]["pretrain_mem_mb_per_device"],
        runtime=config["cluster"]["pretrain_runtime"],
    retries: 3
    log:
        f"{LOGS}/evaluate/supervised-{{khash}}/supervised.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m svt.supervised --manifest {input.manifest:q} --videos-root {params.videos:q}"
        " --classes {input.classes:q} --config-json {params.recipe:q} --out-dir {params.out_dir:q}"
        " --num-workers {config[pretrain][num_workers]} --precision {config[pretrain][precision]}"
        " --decoder {config[pretrain][decoder]} --log-every {config[pretrain][log_every]}"
        " --checkpoint-every {config[pretrain][checkpoint_every]} {params.track} >> {log:q} 2>&1"


rule adapt:
    """Prepare a backbone for each evaluation geometry (positional tables resampled)."""
    input:
        unpack(adapt_inputs),
    output:
        f"{EVAL}/adapted.pth",
    params:
        args=adapt_args,
        code=code_hash("svt.adapt"),
    resources:
        **cluster_resources(),
        mem_mb=8192,
        runtime=30,
    log:
        f"{EVAL_LOGS}/adapt.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m svt.adapt {params.args} --out {output:q} > {log:q} 2>&1"


rule features:
    """CLS features of the frozen backbone for one split and view (clips x crops averaged)."""
    input:
        backbone=f"{EVAL}/adapted.pth",
        manifest=features_manifest,
    output:
        f"{EVAL_DATA}/{{split}}_{{geom}}.pt",
    params:
        videos=lambda wc, input: Path(input.manifest).parent.parent / "videos",
        ev=feature_settings,  # clips, crops: the variant's, found from {khash}
        decoder=config["pretrain"]["decoder"],
        code=code_hash("svt.features"),
    wildcard_constraints:
        split="train|test",
        geom="slow|fast",
    threads: 2
    resources:
        **cluster_resources(gpus=1),
        mem_mb=8192,
        runtime=config["cluster"]["evaluate_runtime"],
    log:
        f"{EVAL_LOGS}/{{dataset}}-{{dhash}}/features-{{split}}-{{geom}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m svt.features --backbone {input.backbone:q} --geometry {wildcards.geom}"
        " --manifest {input.manifest:q} --videos-root {params.videos:q} --out {output:q}"
        " --clips {params.ev[clips]} --crops {params.ev[crops]} --num-workers {threads}"
        " --decoder {params.decoder} > {log:q} 2>&1"


rule probe:
    """Linear probe and kNN: slow, fast and slow-fast; metrics.json and confusion matrices."""
    input:
        unpack(probe_features),
        classes=lambda wc: f"{data_dir(wc.dataset)}/classes.txt",
        run=probe_run_json,
    output:
        metrics=f"{EVAL_DATA}/probe-{{phash}}/metrics.json",
        confusion=report(f"{EVAL_DATA}/probe-{{phash}}/confusion_slow_fast.png",
                         category="evaluation", subcategory="{kind}-{dataset}",
                         caption="../report/confusion.rst"),
    params:
        out_dir=lambda wc, output: Path(output.metrics).parent,
        ev=probe_settings,  # the variant's probe keys and seed, found from {khash} and {phash}
        track=tracking_args("probe"),
        run=run_json_args,
        code=code_hash("svt.probe"),
    resources:
        **cluster_resources(),
        mem_mb=8192,
        runtime=120,
    log:
        f"{EVAL_LOGS}/{{dataset}}-{{dhash}}/probe-{{phash}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m svt.probe --train slow={input.train_slow:q} --train fast={input.train_fast:q}"
        " --test slow={input.test_slow:q} --test fast={input.test_fast:q} --classes {input.classes:q}"
        " --out-dir {params.out_dir:q} --epochs {params.ev[probe_epochs]} --lr {params.ev[probe_lr]}"
        " --batch-size {params.ev[probe_batch_size]} --momentum {params.ev[probe_momentum]}"
        " --combine {params.ev[combine]} --knn-k {params.ev[knn_k]}"
        " --knn-temperature {params.ev[knn_temperature]} --seed {params.ev[seed]}"
        " {params.track} {params.run}"
        " --prefix {wildcards.kind}-{wildcards.dataset} > {log:q} 2>&1"


rule eval_table:
    """The final side-by-side table: backbones x (slow, fast, slow-fast), per dataset."""
    input:
        unpack(table_inputs),
    output:
        report(f"{RESULTS}/evaluate/table-{{thash}}/probe-{{phash}}/table.md", category="evaluation",
               caption="../report/table.rst"),
    params:
        rows=lambda wc, input: shlex.join(f"--row={name}={path}" for name, path in input.items()),
        note=lambda wc: shlex.quote(variant_of_table(wc)["evaluate"]["table_note"]),
        track=tracking_args("eval_table"),
        code=code_hash("svt.table"),
    log:
        f"{LOGS}/evaluate/table-{{thash}}/probe-{{phash}}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m svt.table {params.rows} --note {params.note} --out {output:q} {params.track}"
        " 2>&1 | tee {log:q}"
