# Curation stage: motion spectrum and duplicate/leakage checks with FFTs (svt.curate).
# <results_dir>/curate/<hash of data + curate config>/: reports per split, plots,
# and the pretraining manifest without static clips (videos are never deleted).


rule curate:
    """Flag static clips, find near-duplicates and pretrain/eval leakage; write the pretraining manifest."""
    input:
        unpack(curate_manifests),
    output:
        manifest=f"{curate_dir()}/pretrain_manifest.csv",
        duplicates=report(f"{curate_dir()}/duplicates.tsv", category="curation",
                          caption="../report/duplicates.rst"),
        summary=f"{curate_dir()}/summary.json",
        motion=report(f"{curate_dir()}/motion_energy.png", category="curation",
                      caption="../report/motion_energy.rst"),
        pairs=report(f"{curate_dir()}/duplicates.png", category="curation",
                     caption="../report/duplicate_pairs.rst"),
    params:
        args=curate_args,
        out_dir=lambda wc, output: Path(output.manifest).parent,
        code=code_hash("svt.curate"),
    threads: 2
    resources:
        **cluster_resources(),
        mem_mb=8192,
        runtime=4 * 60,
    log:
        f"{LOGS}/curate/{curate_hash()}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m svt.curate {params.args} --out-dir {params.out_dir:q} --jobs {threads}"
        " --no-progress > {log:q} 2>&1"
