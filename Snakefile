# opd-repro: on-policy distillation, reproduced end to end.
#   snakemake --cores all                 tiny world (config/config.yaml), CPU, offline
#   snakemake --profile slurm             paper experiments (config/paper.yaml) on a cluster
# The tiny world is the default config. A config file given on the command line (or by the
# slurm profile) replaces it whole instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/tiny.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/rollouts.smk"
include: "workflow/rules/opd.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
