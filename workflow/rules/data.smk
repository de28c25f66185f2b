# Data stage: annotations -> index -> decoded shards -> one manifest per split.
# Outputs live in <results_dir>/data/<dataset>-<hash of dataset + decode config>/.

DATA = f"{RESULTS}/data/{{dataset}}-{{dhash}}"
DATA_LOGS = f"{LOGS}/data/{{dataset}}-{{dhash}}"


rule index:
    """Read the dataset's annotations into index.csv (path, label, split) and classes.txt."""
    input:
        annotation_files,
    output:
        index=f"{DATA}/index.csv",
        classes=f"{DATA}/classes.txt",
    params:
        args=index_args,
        code=code_hash("svt.index"),
        out_dir=lambda wc, output: Path(output.index).parent,
    log:
        f"{DATA_LOGS}/index.log",
    conda:
        "../../envs/video.yaml"
    shell:
        "python -m svt.index {params.args} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule decode_shard:
    """Probe and re-encode the videos of one shard (short side, fps, keyframes, no audio)."""
    input:
        index=f"{DATA}/index.csv",
    output:
        manifest=f"{DATA}/shards/{{shard}}.csv",
        rejects=f"{DATA}/shards/{{shard}}.rejects.csv",
    params:
        args=decode_args,
        code=code_hash("svt.decode"),
        videos=f"{DATA}/videos",
    threads: config["decode"]["threads"]
    retries: 2  # a shard lost to the scheduler or a node is redone alone; finished videos are kept
    resources:
        **cluster_resources(),
        mem_mb=lambda wc, threads: 1024 + 512 * threads,
        runtime=240,
    log:
        f"{DATA_LOGS}/decode-{{shard}}.log",
    conda:
        "../../envs/video.yaml"
    shell:
        "python -m svt.decode --index {input.index:q} --videos-dir {params.videos:q}"
        " --shard {wildcards.shard} --jobs {threads} {params.args} --out {output.manifest:q}"
        " > {log:q} 2>&1"


rule decode_report:
    """Merge shard rejects into rejects.csv and count videos per split and reject reason (read
    by people and MLflow, by no later rule)."""
    input:
        shard_manifests,
    output:
        rejects=report(f"{DATA}/rejects.csv", category="data", subcategory="{dataset}",
                       caption="../report/rejects.rst"),
        summary=report(f"{DATA}/summary.json", category="data", subcategory="{dataset}",
                       caption="../report/data_summary.rst"),
    params:
        code=code_hash("svt.data_report"),
        track=tracking_args("decode_report"),
    log:
        f"{DATA_LOGS}/report.log",
    conda:
        "../../envs/video.yaml"
    shell:
        "python -m svt.data_report --shards {input:q} --rejects {output.rejects:q}"
        " --summary {output.summary:q} --run-name data/{wildcards.dataset:q} {params.track}"
        " > {log:q} 2>&1"


rule manifest:
    """Write the manifest of one split; fail when too many videos were rejected."""
    input:
        shards=shard_manifests,
    output:
        f"{DATA}/manifest/{{split}}.csv",
    params:
        max_reject=config["decode"]["max_reject_fraction"],
        code=code_hash("svt.data_manifest"),
    log:
        f"{DATA_LOGS}/manifest-{{split}}.log",
    conda:
        "../../envs/video.yaml"
    shell:
        "python -m svt.data_manifest --shards {input.shards:q} --split {wildcards.split}"
        " --max-reject-fraction {params.max_reject} --out {output:q} > {log:q} 2>&1"
