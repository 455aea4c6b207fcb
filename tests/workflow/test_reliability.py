"""Failure behaviour: bad input stops the job with a precise message and leaves no output;
config strings cannot reach the shell unquoted; models never run remote code."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from conftest import REPO, copy_workflow, run_snakemake, tiny_recipe

TARGET = "results/data/openthoughts_sample.parquet"


def _workflow(tmp_path, rows, **data):
    work = copy_workflow(tmp_path)
    src = tmp_path / "ot.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    cfg = yaml.safe_load((work / "config/config.yaml").read_text())
    cfg["datasets"]["openthoughts"] = {"path": str(src)}
    cfg["data"]["openthoughts_sample"].update(data)
    (work / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    return work


def _turns(text):
    return [{"from": "human", "value": text}, {"from": "gpt", "value": "\\boxed{1}"}]


def test_bad_dataset_row_fails_and_leaves_no_output(tmp_path):
    rows = [{"domain": "math", "conversations": _turns("What is 1?")},
            {"domain": "math", "conversations": [{"from": "human"}]}]
    work = _workflow(tmp_path, rows)
    proc = run_snakemake(["--cores", "1", TARGET], work)
    assert proc.returncode != 0
    log = (work / "results/logs/sample_openthoughts/sample.log").read_text()
    assert re.search(r"ot\.parquet: row 1: field 'conversations' turn 0", log), log[-2000:]
    assert not (work / TARGET).exists()
    assert not list((work / "results/data").glob("*.parquet"))   # no partial files either


def test_config_strings_cannot_inject_shell(tmp_path):
    evil = "math'; touch INJECTED; echo '"
    rows = [{"domain": "math", "conversations": _turns(f"What is {i}?")} for i in range(5)]
    work = _workflow(tmp_path, rows, domain=evil, n=2)
    run_snakemake(["--cores", "1", TARGET], work)
    assert not (work / "INJECTED").exists()
    assert not (tmp_path / "INJECTED").exists()


def test_every_shell_argument_from_config_is_quoted():
    """Rule commands interpolate params and paths only with Snakemake's `:q` quoting (or as an
    option fragment the rule built with shlex)."""
    prequoted = ("params.launch", "params.planted", "params.init", "params.student")
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        for block in re.findall(r"shell:\n((?:\s+\".*\"\n)+)", text):
            for field in re.findall(r"\{([^{}]+)\}", block):
                if field.startswith(("params.", "input", "output", "log", "RESULTS")):
                    assert field.endswith(":q") or field in prequoted, (smk.name, field)


def test_models_load_without_remote_code():
    for path in (REPO / "src/opd").rglob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        for call in re.findall(r"AutoModelForCausalLM\.from_pretrained\([^)]*\)", text):
            assert "trust_remote_code=False" in call, (path, call)
        assert "safe_serialization=False" not in text, path


def test_seeded_stages_write_identical_bytes(small_world, small_tokenizer, tmp_path):
    """Model building and evaluation are bit-for-bit repeatable (with the seeded world, OPD,
    rollouts and SFT resume tests, this is what makes two clean runs' tables identical)."""
    import json

    from opd.stages.tiny.build_tiny_models import main as build
    from opd.stages.eval.evaluate import main as evaluate

    recipe = {"arch": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "num_key_value_heads": 1},
              "pattern": "chain", "difficulty": [1, 2], "steps": 3, "batch_size": 4, "lr": 1e-3,
              "warmup_ratio": 0.0, "seed": 5}
    for name in ("a", "b"):
        build(["--world", str(small_world), "--tokenizer", str(small_tokenizer), "--out",
               str(tmp_path / name), "--params", json.dumps(tiny_recipe(recipe))])
    assert ((tmp_path / "a/model.safetensors").read_bytes()
            == (tmp_path / "b/model.safetensors").read_bytes())
    params = {"n": 2, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 12, "seed": 3,
              "template": "{problem}", "engine": "transformers", "batch_size": 8,
              "tensor_parallel_size": 1, "patterns": True}
    bench = {"path": str(small_world / "aime24.parquet"), "problem_field": "problem",
             "answer_field": "answer"}
    for name in ("a", "b"):
        evaluate(["--model", str(tmp_path / "a"), "--benchmarks", json.dumps({"aime24": bench}),
                  "--out-dir", str(tmp_path / f"eval_{name}"), "--params", json.dumps(params)])
    for suffix in (".parquet", ".json"):
        assert ((tmp_path / f"eval_a/aime24{suffix}").read_bytes()
                == (tmp_path / f"eval_b/aime24{suffix}").read_bytes())

