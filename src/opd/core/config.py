"""Config validation against ``workflow/schemas/config.schema.yaml`` with default filling.

Used by the Snakefile (before any job runs) and by the tests. Errors name the offending key
by its dotted path, e.g. ``tiny_world.dapo: -1 is less than the minimum of 1``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

import jsonschema
import yaml

from opd.core.claims import tolerance_error

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The config does not match the schema; the message names the key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _with_defaults(validator_class: type) -> type:
    """A validator class that writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if unknown:
            where = f"{path}." if path else ""
            return ", ".join(f"{where}{u}" for u in unknown)
    return path or "<top level>"


def _as_number(text: str, types: list[str]) -> int | float | bool | None:
    """``text`` as the schema's numeric (or boolean) type, or None when it is not one
    ("3e-4" -> 0.0003, "true" -> True)."""
    if "boolean" in types and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if "integer" in types and value.is_integer() and "e" not in text.lower() \
            and "." not in text:
        return int(value)
    return value if "number" in types else None


def coerce_numbers(instance: Any, validator: Any) -> None:
    """Numbers (and booleans) given as strings, where the schema wants one: ``--config``
    overrides arrive as strings, and YAML 1.1 reads ``3e-4`` (no dot) as a string. Each
    is replaced in place by its value; a string that does not parse is left to the
    validator's error."""
    for _ in range(100):  # a fixed point: each pass may reveal defaults holding more strings
        changed = False
        for err in validator.iter_errors(instance):
            types = err.validator_value if isinstance(err.validator_value, list) \
                else [err.validator_value]
            if err.validator != "type" or not isinstance(err.instance, str) \
                    or not {"number", "integer", "boolean"} & set(types):
                continue
            value = _as_number(err.instance, types)
            if value is None or not err.absolute_path:
                continue
            parent = instance
            for key in list(err.absolute_path)[:-1]:
                parent = parent[key]
            parent[err.absolute_path[-1]] = value
            changed = True
        if not changed:
            return


def validate(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill defaults into ``config`` in place and return it; raise ConfigError if invalid."""
    schema = schema or load_schema()
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    coerce_numbers(config, cls(schema))
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            if e.validator == "additionalProperties":
                lines.append(f"{_key(e)}: unknown key (not in the config schema)")
            elif e.validator == "type" and isinstance(e.instance, str) and e.validator_value \
                    not in ("boolean", ["boolean"]):
                lines.append(f"{_key(e)}: {e.message} (write a number such as 0.0003 or "
                             "3.0e-4, without quotes)")
            else:
                lines.append(f"{_key(e)}: {e.message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    _check_references(config)
    return config


def _check_references(config: dict[str, Any]) -> None:
    """Cross-references the schema cannot express: names of archs, models, prompt sets,
    templates, and each experiment's opd overrides (validated as an opd section)."""
    opd_schema = load_schema()["properties"]["opd"]
    opd_validator = jsonschema.validators.validator_for(opd_schema)(opd_schema)
    for name, exp in config.get("experiments", {}).items():
        where = f"experiments.{name}"
        for key, registry in (("student", "models"), ("teacher", "models"),
                              ("prompts", "prompt_sets"), ("template", "templates")):
            if exp[key] not in config.get(registry, {}):
                raise ConfigError(f"{where}.{key}: unknown {registry} entry {exp[key]!r}")
        coerce_numbers(exp.get("opd", {}), opd_validator)
        merged = {**config.get("opd", {}), **exp.get("opd", {})}
        template = merged.get("validation", {}).get("template", "default")
        if template not in config.get("templates", {}):
            raise ConfigError(f"{where}.opd.validation.template: unknown templates entry "
                              f"{template!r}")
        for err in opd_validator.iter_errors(merged):
            key = ".".join(str(p) for p in err.absolute_path)
            if err.validator == "additionalProperties":
                unknown = sorted(set(merged) - set(opd_schema["properties"]))
                raise ConfigError(f"{where}.opd.{', '.join(unknown)}: unknown key")
            raise ConfigError(f"{where}.opd.{key}: {err.message}")
    for name, spec in config.get("rollouts", {}).items():
        for key, registry in (("teacher", "models"), ("prompts", "prompt_sets"),
                              ("template", "templates")):
            if spec[key] not in config.get(registry, {}):
                raise ConfigError(f"rollouts.{name}.{key}: unknown {registry} entry {spec[key]!r}")
    for name, spec in config.get("cold_start", {}).items():
        for key, registry in (("student", "models"), ("rollouts", "rollouts"),
                              ("released", "released")):
            if key in spec and spec[key] not in config.get(registry, {}):
                raise ConfigError(f"cold_start.{name}.{key}: unknown {registry} entry {spec[key]!r}")
        if "released" in spec and config["released"][spec["released"]]["format"] != "messages":
            raise ConfigError(f"cold_start.{name}.released: released.{spec['released']} is not an "
                              "SFT set (format messages)")
    for name, spec in config.get("prompt_selection", {}).items():
        for key, registry in (("teacher", "models"), ("student", "models"),
                              ("prompts", "prompt_sets"), ("template", "templates")):
            if spec.get(key) is not None and spec[key] not in config.get(registry, {}):
                raise ConfigError(f"prompt_selection.{name}.{key}: unknown {registry} entry "
                                  f"{spec[key]!r}")
    for name, spec in config.get("released", {}).items():
        template = spec.get("strip_template")
        if template is not None and template not in config.get("templates", {}):
            raise ConfigError(f"released.{name}.strip_template: unknown templates entry "
                              f"{template!r}")
    clash = set(config.get("experiments", {})) & set(config.get("models", {}))
    if clash:
        raise ConfigError(f"experiments.{sorted(clash)[0]}: an experiment may not share its name "
                          "with a model (evaluation results are stored by name)")
    for name in config.get("cold_start", {}):
        expected = f"results/sft/{name}/final"
        spec = config.get("models", {}).get(name)
        if spec is None or spec.get("path") != expected:
            raise ConfigError(f"cold_start.{name}: list the SFT student under models as "
                              f"{name}: {{path: {expected}}} so experiments can use it")
    for gname, group in config.get("groups", {}).items():
        for e in group["experiments"]:
            if e not in config.get("experiments", {}):
                raise ConfigError(f"groups.{gname}.experiments: unknown experiment {e!r}")
        for i, claim in enumerate(group["claims"]):
            for side in ("a", "b"):
                if claim.get(side) is not None and claim[side] not in group["experiments"]:
                    raise ConfigError(f"groups.{gname}.claims[{i}].{side}: {claim[side]!r} is "
                                      "not an experiment of the group")
            if claim.get("b") is None and claim.get("value") is None:
                raise ConfigError(f"groups.{gname}.claims[{i}]: give b (an experiment) or value")
    claim_lists = [(f"groups.{g}.claims", grp["claims"]) for g, grp in config.get("groups", {}).items()]
    claim_lists.append(("tiny_models.checks", config.get("tiny_models", {}).get("checks", [])))
    for where, claims in claim_lists:
        for i, claim in enumerate(claims):
            error = tolerance_error(claim["op"], claim.get("tol"))
            if error:
                raise ConfigError(f"{where}[{i}]: {error}")
    evaluation = config.get("evaluation", {})
    for name in evaluation.get("models", []):
        if name not in config.get("models", {}):
            raise ConfigError(f"evaluation.models: unknown models entry {name!r}")
    if evaluation and evaluation["template"] not in config.get("templates", {}):
        raise ConfigError(f"evaluation.template: unknown templates entry {evaluation['template']!r}")
    tiny = config.get("tiny_models", {})
    archs, models = tiny.get("archs", {}), tiny.get("models", {})
    build = config.get("resources", {}).get("rules", {}).get("build_tiny_models", {})
    if "threads" in build:
        raise ConfigError("resources.rules.build_tiny_models.threads: a build's thread count is "
                          "part of its recipe (tiny_models.models.<name>.threads)")
    for name, recipe in models.items():
        if recipe["arch"] not in archs:
            raise ConfigError(f"tiny_models.models.{name}.arch: unknown arch {recipe['arch']!r}"
                              f" (known: {', '.join(sorted(archs)) or 'none'})")
        if recipe.get("init") is not None and recipe["init"] not in models:
            raise ConfigError(f"tiny_models.models.{name}.init: unknown model {recipe['init']!r}")
        lo, hi = recipe["difficulty"]
        if lo > hi:
            raise ConfigError(f"tiny_models.models.{name}.difficulty: [{lo}, {hi}] is empty")
        if not {"+", "-"} <= set(recipe.get("ops", ["+", "-"])):
            raise ConfigError(f"tiny_models.models.{name}.ops: {recipe['ops']} must include + "
                              "and - (every value needs a legal step)")


def load(path: Path | str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply top-level overrides, validate and fill defaults."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    config.update(overrides or {})
    return validate(config)


def typed(cls: type[T], section: dict[str, Any], where: str) -> T:
    """A stage's parameters as the dataclass ``cls``, from a validated config section.

    Defaults live in the schema only: every field must be present, and a key the dataclass
    does not declare is an error (a setting nothing would read), both named by ``where``."""
    names = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = sorted(names - set(section)), sorted(set(section) - names)
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"unknown {', '.join(unknown)}"] if unknown else [])
        raise ConfigError(f"{where}: {'; '.join(parts)}")
    return cls(**{k: section[k] for k in names})


def with_defaults(definition: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` validated against the schema's ``$defs/<definition>`` with its
    defaults filled in: for stage inputs given by hand (tests, one-off runs) rather than by
    the workflow, so that defaults still come from the schema only."""
    schema = load_schema()
    sub = {**schema["$defs"][definition], "$defs": schema["$defs"]}
    out = copy.deepcopy(spec)
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = list(cls(sub).iter_errors(out))
    if errors:
        raise ConfigError(f"{definition}: {errors[0].message}")
    return out


def section(name: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The top-level config section ``name`` with ``values`` and every other key at its schema
    default (validated)."""
    return validate({"world": "tiny", name: copy.deepcopy(values or {})})[name]
