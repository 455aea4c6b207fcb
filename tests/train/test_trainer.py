"""The training core: schedules against hand-computed values, checkpoints and logs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from opd.train.trainer import Checkpoint, RunLog, lr_at


def test_constant_schedule_keeps_the_peak():
    assert [lr_at(s, 3e-4, 10, "constant", 0.5) for s in range(10)] == [3e-4] * 10


def test_warmup_cosine_schedule():
    total, warm = 100, 0.05
    values = [lr_at(s, 1.0, total, "cosine", warm) for s in range(total)]
    assert values[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert values[5] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 95)))
    assert all(a >= b for a, b in zip(values[5:], values[6:]))


def test_cosine_decays_to_its_floor():
    # peak 2, 11 steps, warm-up round(0.1 * 11) = 1 step, floor 10% of the peak
    values = [lr_at(s, 2.0, 11, "cosine", 0.1, floor=0.1) for s in range(11)]
    assert values[0] == pytest.approx(2.0)
    assert values[-1] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9))))
    assert lr_at(11, 2.0, 11, "cosine", 0.1, floor=0.1) == pytest.approx(0.2)  # after the last
    assert values[3] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 10))))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="linear"):
        lr_at(0, 1.0, 10, "linear")


def _save(ckpt, step, log, value):
    ckpt.save(step, lambda tmp: (tmp.mkdir(parents=True, exist_ok=True),
                                 torch.save({"v": value}, tmp / "w.pt")), log,
              state={"data_position": step * 2})


@pytest.fixture()
def log(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0}\n')
    return path


def test_checkpoint_resumes_only_its_own_run(tmp_path, log, capsys):
    ckpt = Checkpoint(tmp_path / "ckpt", {"lr": 1})
    assert ckpt.find() is None
    _save(ckpt, 1, log, 1.0)
    state = ckpt.find()
    assert state["step"] == 1 and state["data_position"] == 2 and ckpt.current == ckpt.path
    assert ckpt.log_text() == '{"step": 0}\n'
    assert not ckpt.tmp.exists() and not ckpt.prev.exists()
    other = Checkpoint(tmp_path / "ckpt", {"lr": 2})
    assert other.find() is None and not (tmp_path / "ckpt").exists()  # set aside
    assert "checkpoint of another run" in capsys.readouterr().out


def test_rotation_keeps_the_previous_checkpoint_until_the_next_is_complete(tmp_path, log):
    ckpt = Checkpoint(tmp_path / "ckpt", {"a": 1})
    _save(ckpt, 1, log, 1.0)
    _save(ckpt, 2, log, 2.0)
    assert json.loads((ckpt.prev / "state.json").read_text())["step"] == 1
    # a kill inside the rotation of step 3: the newest moved aside, the new one not yet in
    shutil.rmtree(ckpt.prev)
    ckpt.path.rename(ckpt.prev)
    ckpt.tmp.mkdir()
    state = ckpt.find()
    assert state["step"] == 2 and ckpt.current == ckpt.prev
    assert torch.load(ckpt.current / "w.pt", weights_only=True)["v"] == 2.0


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove", "state"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, log, capsys, damage):
    ckpt = Checkpoint(tmp_path / "ckpt", {"a": 1})
    _save(ckpt, 1, log, 1.0)
    _save(ckpt, 2, log, 2.0)
    weights = ckpt.path / "w.pt"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "remove":
        weights.unlink()
    else:
        (ckpt.path / "state.json").write_text('{"step": 2, "ident')
    state = ckpt.find()
    assert state["step"] == 1 and ckpt.current == ckpt.prev
    out = capsys.readouterr().out
    assert f"{ckpt.path}: corrupt checkpoint" in out
    assert not ckpt.path.exists()  # set aside: the next save starts clean
    # both corrupt: start afresh
    (ckpt.prev / "w.pt").unlink()
    assert ckpt.find() is None


def test_finished_runs_leave_no_checkpoint(tmp_path, log):
    ckpt = Checkpoint(tmp_path / "ckpt", {"a": 1})
    _save(ckpt, 1, log, 1.0)
    _save(ckpt, 2, log, 2.0)
    ckpt.remove()
    assert not any(p.exists() for p in (ckpt.path, ckpt.prev, ckpt.tmp))
    assert ckpt.find() is None


def test_identity_follows_input_content(tmp_path):
    from opd.train.trainer import fingerprint, run_identity

    (tmp_path / "m").mkdir()
    (tmp_path / "m/w.bin").write_bytes(b"abc")
    a = run_identity({"lr": 1}, {"model": tmp_path / "m"})
    assert a == run_identity({"lr": 1}, {"model": tmp_path / "m"})
    (tmp_path / "m/w.bin").write_bytes(b"abd")      # same path, other weights
    assert run_identity({"lr": 1}, {"model": tmp_path / "m"}) != a
    assert fingerprint("org/model") == "not on disk: org/model"


def test_run_log_writes_lines_and_resumes_from_the_checkpoint_copy(tmp_path):
    log = RunLog(tmp_path / "m.jsonl", tmp_path / "tb", "x")
    log.write({"step": 0, "loss": 1.5, "flag": True}, 0)
    log.write({"step": 1, "loss": 1.0}, 1)
    log.close()
    assert [ln["loss"] for ln in log.lines()] == [1.5, 1.0]
    again = RunLog(tmp_path / "m.jsonl", None, "x",
                   resume_text=json.dumps({"step": 0, "loss": 1.5}) + "\n", start_step=1)
    assert again.lines() == [{"step": 0, "loss": 1.5}]
    off = RunLog(tmp_path / "none.jsonl", None, "x", enabled=False)
    off.write({"step": 0}, 0)
    assert not (tmp_path / "none.jsonl").exists()


def test_tensorboard_keeps_one_event_per_step_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = RunLog(tmp_path / "m.jsonl", tmp_path / "tb", "x")
    for step in range(6):  # a run that crashed after step 5, its checkpoint at step 3
        first.write({"step": step, "loss": float(step)}, step)
    first.close()
    again = RunLog(tmp_path / "m.jsonl", tmp_path / "tb", "x", resume_text='{"step": 2}\n',
                   start_step=3)
    for step in range(3, 6):
        again.write({"step": step, "loss": 10.0 + step}, step)
    again.close()
    events = EventAccumulator(str(tmp_path / "tb")).Reload().Scalars("x/loss")
    assert [e.step for e in events] == list(range(6))
    assert [e.value for e in events] == [0.0, 1.0, 2.0, 13.0, 14.0, 15.0]


def test_an_update_with_a_non_finite_gradient_is_skipped():
    from opd.train.trainer import clipped_step

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    norm, stepped = clipped_step(model.parameters(), opt, 1.0)
    assert math.isnan(norm) and not stepped
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    norm, stepped = clipped_step(model.parameters(), opt, 1.0)
    n_params = sum(p.numel() for p in model.parameters())
    assert stepped and norm == pytest.approx(math.sqrt(n_params * 0.25))
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
