"""Model references: the revision pin reaches every loader; a missing directory is named."""

from __future__ import annotations

import json

import pytest

from opd.core.models import ModelNotFound, ModelRef


def test_workflow_specs_and_plain_locations(tmp_path):
    hub = ModelRef.parse(json.dumps({"name": "t", "hub_id": "org/m", "revision": "abc123"}))
    assert (hub.location, hub.is_path, hub.revision, hub.name) == ("org/m", False, "abc123", "t")
    assert hub.load_kwargs() == {"revision": "abc123"} and str(hub) == "org/m@abc123"
    local = ModelRef.parse(json.dumps({"name": "s", "path": str(tmp_path)}))
    assert local.is_path and local.load_kwargs() == {} and local.checked() is local
    assert ModelRef.parse(str(tmp_path)).is_path and not ModelRef.parse("org/m").is_path
    assert not hub.thinking
    assert ModelRef.parse(json.dumps({"hub_id": "Qwen/Qwen3-8B", "thinking": True})).thinking


def test_a_missing_model_directory_is_named_by_its_config_key(tmp_path):
    ref = ModelRef.parse(json.dumps({"name": "teacher_rl", "path": str(tmp_path / "nope")}))
    with pytest.raises(ModelNotFound, match=r"models\.teacher_rl\.path .*nope.* does not exist"):
        ref.checked()


def test_the_revision_pin_reaches_the_loaders(monkeypatch):
    """Every transformers and vLLM load of a hub model carries its revision."""
    import sys
    import types

    from opd.train import engine, pair

    calls = []

    class Recorder:
        @classmethod
        def from_pretrained(cls, location, **kw):
            calls.append((cls.__name__, location, kw.get("revision")))
            return cls()

        def to(self, *_):
            return self

    class Tok(Recorder):
        pass

    class LM(Recorder):
        pass

    monkeypatch.setattr(pair, "AutoTokenizer", Tok)
    monkeypatch.setattr(pair, "AutoModelForCausalLM", LM)
    ref = ModelRef.parse(json.dumps({"name": "t", "hub_id": "org/m", "revision": "v1.2"}))
    pair.load_tokenizer(ref)
    pair.load_model(ref, "cpu")

    class FakeLLM:
        def __init__(self, **kw):
            calls.append(("LLM", kw["model"], kw["revision"], kw["tokenizer_revision"]))

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    engine.VLLMEngine(ref)
    assert calls == [("Tok", "org/m", "v1.2"), ("LM", "org/m", "v1.2"),
                     ("LLM", "org/m", "v1.2", "v1.2")]
