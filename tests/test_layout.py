"""The package's layout: the top of `mf2/` is the model folder, exactly what a saved checkpoint carries as remote code
(the relative-import closure of the config, model, processors and pipeline, which `save_pretrained` copies), and
everything else lives in a wing (docs/model.md, "The package layout")."""

import re
from pathlib import Path

import mf2

PACKAGE = Path(mf2.__file__).resolve().parent
ROOTS = ("configuration_mf2", "modeling_mf2", "image_processing_mf2", "processing_mf2", "pipeline_mf2")
WINGS = {"cli", "data", "dfn", "integration", "models", "training"}


def remote_code_closure() -> set[str]:
    """The top-level modules reached from `ROOTS` by relative imports, as transformers' `custom_object_save` follows
    them."""
    seen: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
        todo += re.findall(r"^\s*from \.(\w+) import", source, re.M)
        todo += re.findall(r"^\s*from \. import (\w+)", source, re.M)
    return seen


def test_the_top_of_the_package_is_the_model_folder():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == remote_code_closure(), (
        f"move into a wing: {sorted(top - remote_code_closure())}; missing: {sorted(remote_code_closure() - top)}"
    )


def test_everything_else_is_in_a_named_wing():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and not path.name.startswith(("_", "."))}
    assert folders == WINGS, sorted(folders ^ WINGS)


def test_the_model_folder_never_imports_a_wing():
    for name in remote_code_closure():
        source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
        wings = re.findall(r"^\s*(?:from|import) (?:mf2|\.)\.?(" + "|".join(WINGS) + r")\b", source, re.M)
        assert not wings, f"mf2/{name}.py imports {wings}: remote code cannot carry a wing"
