"""The configuration reference: every key is documented, configs/README.md is the generator's
current output, and every key the example configs set is in it.

The walks below are written independently of bdc_ray/config.py's own, so a bug there cannot
hide an undocumented field here.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, Field

from bdc_ray.config import REFERENCE_COMMAND, Config, config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "configs" / "README.md"
EXAMPLES = ["configs/local.yaml", "configs/gpu.yaml", "configs/study.yaml"]


def _models_in(annotation: Any):
    """Every pydantic model named anywhere in a type (unions, lists, dicts, tuples)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def walk(root: type[BaseModel]) -> tuple[set[type[BaseModel]], list[str]]:
    """(models reachable from `root`, 'Model.field' of every field without a description)."""
    seen: set[type[BaseModel]] = set()
    missing: list[str] = []
    stack = [root]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                missing.append(f"{model.__name__}.{name}")
            stack.extend(_models_in(field.annotation))
    return seen, sorted(missing)


# ---------------------------------------------------------------- (a) every field is described


def test_every_config_field_has_a_description():
    models, missing = walk(Config)
    # the walk reaches nested sections, mapping values and list items
    names = {m.__name__ for m in models}
    assert {"SearchConfig", "TuneConfig", "ModelConfig", "AgentConfig"} <= names, names
    assert not missing, (
        f"config fields without a description: {', '.join(missing)}; give each a "
        f"Field(description=...) in bdc_ray/config.py, then run: {REFERENCE_COMMAND}"
    )


def test_descriptions_point_at_the_method_doc_not_the_spec():
    models, _ = walk(Config)
    spec = [
        f"{m.__name__}.{n}"
        for m in models
        for n, f in m.model_fields.items()
        if "SPEC" in (f.description or "")
    ]
    assert not spec, f"descriptions citing SPEC.md (cite docs/method.md): {spec}"


def test_the_walk_reports_a_field_without_a_description():
    class Leaf(BaseModel):
        documented: int = Field(0, description="has one")
        bare: int = 0

    class Root(BaseModel):
        items: list[Leaf] = Field(default_factory=list, description="a list of sections")
        named: dict[str, Leaf] | None = Field(None, description="a mapping of sections")
        plain: str = ""

    models, missing = walk(Root)
    assert models == {Root, Leaf}
    assert missing == ["Leaf.bare", "Root.plain"]


# ---------------------------------------------------------------- (b) configs/README.md is current


def test_configs_readme_is_the_generated_reference():
    expected = config_reference_markdown()
    actual = README.read_text(encoding="utf-8") if README.is_file() else ""
    if actual != expected:
        diff = difflib.unified_diff(
            actual.splitlines(),
            expected.splitlines(),
            "configs/README.md",
            "generated",
            lineterm="",
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(
            f"configs/README.md is stale; regenerate it with:\n    {REFERENCE_COMMAND}\n{shown}"
        )


def test_the_command_prints_the_reference():
    cmd = [sys.executable, "-m", "bdc_ray.config"]
    out = subprocess.run([*cmd, "--markdown"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == config_reference_markdown()
    helped = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert helped.returncode == 0 and "--markdown" in helped.stdout
    assert REFERENCE_COMMAND in helped.stdout


# ---------------------------------------------------------------- (c) example configs are covered


def reference_sections(text: str) -> dict[str, list[list[str]]]:
    """Section title ('' for the top level, 'search', 'models.<name>', 'agents[i]', ...) to
    the cells of its table rows."""
    sections: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        heading = re.fullmatch(r"## (?:`(.+)`|Top level)", line)
        if heading:
            current = heading.group(1) or ""
            sections[current] = []
        elif current is not None and line.startswith("| ") and not line.startswith("| key |"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            sections[current].append(cells)
    return sections


def _child_section(annotation: Any, path: str, key: str) -> tuple[type[BaseModel], str] | None:
    """The model and section title a field opens, or None for a value."""
    origin, args = get_origin(annotation), get_args(annotation)
    here = f"{path}.{key}" if path else key
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, here
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], f"{here}.<name>"
    if origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], f"{here}[i]"
    return None


def _uncovered(data: dict, model: type[BaseModel], path: str, keys: dict, where: str):
    """Dotted keys of `data` the reference does not document (walked along the models)."""
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        field = model.model_fields.get(key)
        if field is None:
            yield f"{dotted} (not a key of {model.__name__})"
            continue
        child = _child_section(field.annotation, path, key)
        if child is None:
            if key not in keys.get(path, set()):
                yield dotted
            continue
        sub, title = child
        if title not in keys:
            yield f"{dotted} (no section {title!r})"
        elif title.endswith("[i]"):
            for i, item in enumerate(value or []):
                yield from _uncovered(item, sub, title, keys, f"{dotted}.{i}")
        elif title.endswith(".<name>"):
            for name, item in (value or {}).items():
                yield from _uncovered(item, sub, title, keys, f"{dotted}.{name}")
        else:
            yield from _uncovered(value or {}, sub, title, keys, dotted)


@pytest.mark.parametrize("path", EXAMPLES)
def test_every_key_of_the_example_configs_is_in_the_reference(path):
    sections = reference_sections(config_reference_markdown())
    keys = {title: {row[0].strip("`") for row in rows} for title, rows in sections.items()}
    data = yaml.safe_load((ROOT / path).read_text())
    missing = list(_uncovered(data, Config, "", keys, ""))
    assert not missing, f"{path}: keys missing from the reference: {missing}"


def test_reference_tables_are_well_formed():
    sections = reference_sections(config_reference_markdown())
    expected = {
        "",
        "data",
        "models.<name>",
        "agents[i]",
        "search",
        "cluster",
        "experts",
        "hypernet",
        "hypernet.tune",
        "serve",
        "eval",
        "resources",
    }
    assert set(sections) == expected
    for title, rows in sections.items():
        assert rows, f"section {title!r} has no rows"
        for cells in rows:
            assert len(cells) == 4, (title, cells)
            assert all(cells), (title, cells)
            long = [c for c in cells if len(c) >= 300]
            assert not long, f"section {title!r}: a cell of {len(long[0])} characters: {long[0]}"
