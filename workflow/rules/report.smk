# Reports (both worlds): one table per experiment group with its claims checked, and the
# training and per-position figures.


rule opd_tables:
    """One CSV + Markdown table per experiment group and the claims judged over seeds."""
    input:
        metrics=group_metric_files(),
        evals=[path for m in group_evals().values() for path in m.values()],
    output:
        tables=[report(f"{RESULTS}/tables/{g}.md", caption="../report/opd_group.rst",
                       category="OPD experiments", subcategory="tables") for g in config["groups"]]
        + [f"{RESULTS}/tables/{g}.csv" for g in config["groups"]],
        summary=report(f"{RESULTS}/tables/README.md", caption="../report/claims.rst",
                       category="OPD experiments"),
        claims=f"{RESULTS}/tables/claims.json",
    params:
        groups=as_json(config["groups"]),
        experiments=as_json(config["experiments"]),
        metrics=as_json(group_metrics()),
        evals=as_json(group_evals()),
        out=lambda w, output: os.path.dirname(output.summary),
    log:
        log_path("opd_tables", "tables"),
    benchmark:
        bench_path("opd_tables", "tables")
    threads: 1
    resources:
        **rule_resources("opd_tables"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.report.opd_tables --groups {params.groups:q}"
        " --experiments {params.experiments:q} --metrics {params.metrics:q}"
        " --evals {params.evals:q} --out {params.out:q} > {log:q} 2>&1"


rule opd_figures:
    """Training curves per group and per-position (long-horizon) curves."""
    input:
        metrics=group_metric_files(),
    output:
        groups=[report(f"{RESULTS}/figures/{g}.png", caption="../report/opd_figure.rst",
                       category="OPD experiments", subcategory="figures") for g in config["groups"]],
        positions=[report(f"{RESULTS}/figures/long_horizon_{e}.png",
                          caption="../report/long_horizon.rst", category="OPD experiments",
                          subcategory="long horizon") for e in per_position_experiments()],
    params:
        groups=as_json(config["groups"]),
        metrics=as_json(group_metrics()),
        positions=per_position_experiments(),
        out=lambda w, output: os.path.dirname(output.groups[0]),
    log:
        log_path("opd_figures", "figures"),
    benchmark:
        bench_path("opd_figures", "figures")
    threads: 1
    resources:
        **rule_resources("opd_figures"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "python -m opd.stages.report.opd_figures --groups {params.groups:q}"
        " --metrics {params.metrics:q} --out {params.out:q}"
        " --long-horizon {params.positions:q} > {log:q} 2>&1"
