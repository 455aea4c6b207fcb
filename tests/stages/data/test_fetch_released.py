"""fetch_released: a verl-schema file checked by sha256 and flattened, in file order."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opd.core.data import DataError
from opd.stages.data.fetch_released import fetch, main

TEMPLATE = "{problem} Please reason step by step, and put your final answer within \\boxed{}."
PROBLEMS = [("What is 2+3?", "5"), ("Find x if 2x = 8.", 4), ("What is 7*6?", "42.0")]


def _verl_row(problem, answer, template=TEMPLATE):
    return {"data_source": "test", "prompt": [{"role": "user",
                                                "content": template.replace("{problem}", problem)}],
            "ability": "math", "reward_model": {"ground_truth": str(answer), "style": "rule"},
            "extra_info": {"index": 0}}


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _params(sha, template=TEMPLATE):
    return {"url": "https://example.org/test.parquet", "sha256": sha, "format": "verl",
            "strip_template": template}


def test_rows_come_back_as_problem_and_answer_in_file_order(tmp_path):
    src = tmp_path / "test.parquet"
    sha = _write(src, [_verl_row(p, a) for p, a in PROBLEMS])
    table, stats = fetch(src, _params(sha))
    rows = table.to_pylist()
    assert [r["prompt"] for r in rows] == [p for p, _ in PROBLEMS]
    assert [r["answer"] for r in rows] == [str(a) for _, a in PROBLEMS]
    assert [r["row"] for r in rows] == [0, 1, 2]
    # the template puts back exactly the released text
    assert [TEMPLATE.replace("{problem}", r["prompt"]) for r in rows] == \
        [TEMPLATE.replace("{problem}", p) for p, _ in PROBLEMS]
    assert stats["rows"] == 3 and stats["sha256"] == sha


def test_a_changed_file_is_refused_naming_the_url(tmp_path):
    src = tmp_path / "test.parquet"
    sha = _write(src, [_verl_row(p, a) for p, a in PROBLEMS])
    wrong = "0" * 64
    with pytest.raises(DataError, match=r"https://example.org/test.parquet.*does not match") as err:
        fetch(src, _params(wrong))
    assert sha in str(err.value)


def test_a_row_without_the_instruction_is_refused_naming_the_row(tmp_path):
    src = tmp_path / "test.parquet"
    rows = [_verl_row(p, a) for p, a in PROBLEMS]
    rows[2] = _verl_row("Bare problem", "1", template="{problem}")
    sha = _write(src, rows)
    with pytest.raises(DataError, match=r"row 2: field 'prompt' does not carry the instruction"):
        fetch(src, _params(sha))


def test_a_row_with_two_user_turns_is_refused(tmp_path):
    src = tmp_path / "test.parquet"
    rows = [_verl_row(p, a) for p, a in PROBLEMS]
    rows[1]["prompt"] = rows[1]["prompt"] * 2
    sha = _write(src, rows)
    with pytest.raises(DataError, match=r"row 1: field 'prompt' has 2 user turns"):
        fetch(src, _params(sha))


def test_without_a_template_the_turn_is_kept_whole(tmp_path):
    src = tmp_path / "test.parquet"
    sha = _write(src, [_verl_row(p, a) for p, a in PROBLEMS])
    table, _ = fetch(src, _params(sha, template=None))
    assert table.column("prompt").to_pylist()[0] == TEMPLATE.replace("{problem}", PROBLEMS[0][0])


def test_a_failed_check_writes_no_output(tmp_path):
    src = tmp_path / "test.parquet"
    _write(src, [_verl_row(p, a) for p, a in PROBLEMS])
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError):
        main(["--source", str(src), "--out", str(out), "--stats", str(tmp_path / "s.json"),
              "--params", json.dumps(_params("f" * 64))])
    assert not out.exists()


# The released cold-start SFT set: one chat per JSON line, as LlamaFactory's sharegpt
# formatting reads it (columns.messages = "messages", tags role/content, user/assistant).
CHATS = [[{"role": "user", "content": "What is 2+3?"},
          {"role": "assistant", "content": "2 + 3 = 5.\n\\boxed{5}"}],
         [{"role": "system", "content": "You are a careful solver."},
          {"role": "user", "content": "Find x if 2x = 8."},
          {"role": "assistant", "content": "x = 8 / 2 = 4.\n\\boxed{4}"}],
         [{"role": "user", "content": "What is 2+3?"},
          {"role": "assistant", "content": "Adding: 5.\n\\boxed{5}"}]]


def _write_chats(path, chats):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sft_params(sha):
    return {"url": "https://example.org/data/train.jsonl", "sha256": sha, "format": "messages",
            "strip_template": None}


def test_a_released_sft_set_comes_back_as_its_chats_in_file_order(tmp_path):
    src = tmp_path / "train.jsonl"
    sha = _write_chats(src, CHATS)
    table, stats = fetch(src, _sft_params(sha))
    assert table.schema.names == ["prompt_id", "messages"]
    rows = table.to_pylist()
    assert [r["prompt_id"] for r in rows] == [0, 1, 2]
    assert [r["messages"] for r in rows] == CHATS
    assert stats["rows"] == 3 and stats["distinct_prompts"] == 2 and stats["format"] == "messages"


@pytest.mark.parametrize("broken, complaint", [
    ([{"role": "user", "content": "What is 1+1?"}], "ends with a user turn"),
    ([{"role": "assistant", "content": "2"}], "has no user turn"),
    ([{"role": "human", "content": "What is 1+1?"}, {"role": "assistant", "content": "2"}],
     "turn 0 has role 'human'"),
    ([{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": "  "}],
     "turn 1 \\(assistant\\) has no text"),
    ([], "expected a non-empty list of turns"),
])
def test_a_chat_that_is_not_a_training_example_is_refused_naming_the_row(tmp_path, broken,
                                                                          complaint):
    src = tmp_path / "train.jsonl"
    sha = _write_chats(src, [CHATS[0], broken, CHATS[1]])
    with pytest.raises(DataError, match=rf"train.jsonl: row 1: field 'messages' {complaint}"):
        fetch(src, _sft_params(sha))


def test_a_row_without_messages_is_refused_naming_the_row(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"messages": CHATS[0]}) + "\n" + json.dumps({"text": "x"}) + "\n")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=r"row 1: field 'messages' is missing"):
        fetch(src, _sft_params(sha))


def test_an_entry_pinned_to_no_sha256_stops_and_prints_the_files_sha256(tmp_path):
    src = tmp_path / "train.jsonl"
    sha = _write_chats(src, CHATS)
    out = tmp_path / "out.parquet"
    with pytest.raises(DataError, match=r"train.jsonl.*has no pinned sha256") as err:
        main(["--source", str(src), "--out", str(out), "--stats", str(tmp_path / "s.json"),
              "--params", json.dumps(_sft_params(None))])
    assert sha in str(err.value)
    assert not out.exists()


def test_an_sft_set_keeps_its_chats_whole(tmp_path):
    src = tmp_path / "train.jsonl"
    sha = _write_chats(src, CHATS)
    with pytest.raises(ValueError, match="strip_template applies to format verl only"):
        fetch(src, {**_sft_params(sha), "strip_template": TEMPLATE})
