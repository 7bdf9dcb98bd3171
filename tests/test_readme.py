"""The README holds what it says.

- Its Python blocks run as written: in order, in one fresh process, in a folder holding the files they name
  (photo.jpg, a.jpg, b.png: the example photo; clip.mp4: two seconds of it), with the shipped model, offline; the
  Python blocks of the reference pages it links (`DOCS_WITH_BLOCKS`) run after them, in the same process.
  (docs/finetuning.md, with the DFN block, has its own test: tests/test_finetuning_walkthrough.py.)
- Its quickstart (the ```py block after `<!-- quickstart -->`, which names the example photo by its path in the
  repository, so it runs in the repository) prints the record the README shows between `<!-- quickstart-record -->`
  and `<!-- /quickstart-record -->`, and docs/quickstart.png was drawn with the shipped model's weights.
- It is short, its relative links resolve, it lists every extra and every `mf2` command, and the Space's front matter
  says the weights' licence.

When the shipped model changes, rewrite the record and the picture from it (then check the README's
`<!-- model-figures -->` sentence by hand):

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python tests/test_readme.py --write-quickstart
"""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PHOTO = REPO / "examples" / "images" / "astronaut.png"
MODEL = REPO / "mf2" / "models" / "mf2-base"
QUICKSTART_PICTURE = DOCS / "quickstart.png"
DOCS_WITH_BLOCKS = ("analysis.md", "model.md", "training.md")  # their Python blocks run after the README's
RECORD = re.compile(r"(<!-- quickstart-record -->\n)(.*?)(<!-- /quickstart-record -->)", flags=re.S)
PICTURE_KEY = "mf2-model"  # the PNG text chunk naming the weights docs/quickstart.png was drawn with
TOLERANCE = 0.01  # probabilities: the README shows them rounded to 2 decimals
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def readme_python_blocks() -> list[str]:
    return python_blocks(README)


def docs_python_blocks() -> list[str]:
    return [block for name in DOCS_WITH_BLOCKS for block in python_blocks(DOCS / name)]


def quickstart_block() -> str:
    """The README's quickstart: the first ```py block after `<!-- quickstart -->`."""
    found = re.search(r"^<!-- quickstart -->\n```py\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert found, "the README has no ```py block after <!-- quickstart -->"
    return found.group(1)


def readme_record() -> dict:
    """The record the README shows under its quickstart (a ```json block between the record markers)."""
    found = RECORD.search(README.read_text())
    assert found, "the README has no <!-- quickstart-record --> ... <!-- /quickstart-record --> section"
    block = re.fullmatch(r"```json\n(.*?)```\n", found.group(2), flags=re.S)
    assert block, f"the quickstart record is not one ```json block: {found.group(2)!r}"
    return json.loads(block.group(1))


def model_fingerprint() -> str:
    """The shipped model's name, version and weights (the start of their SHA-256)."""
    config = json.loads((MODEL / "config.json").read_text())
    digest = hashlib.sha256()
    with open(MODEL / "model.safetensors", "rb") as weights:
        for chunk in iter(lambda: weights.read(1 << 22), b""):
            digest.update(chunk)
    return f"{config.get('model_name')} {config.get('model_version')} sha256:{digest.hexdigest()[:16]}"


def run_quickstart(picture: Path | None = None) -> dict:
    """Run the README's quickstart as written, in the repository, offline; return the face it printed (`faces[0]`).
    With `picture`, also draw that face as `mf2 analyze --annotate` does and save it there (marked with the model)."""
    epilogue = "\nimport json as _json\nprint('\\nQUICKSTART-RECORD ' + _json.dumps(faces[0]))\n"
    if picture is not None:
        epilogue += (
            "from PIL import Image as _Image\nfrom PIL.PngImagePlugin import PngInfo as _PngInfo\n"
            "from mf2.visualization import annotate as _annotate\n"
            f"_faces = pipe({str(PHOTO.relative_to(REPO))!r}, explain=True, return_features=True)\n"
            f"_mark = _PngInfo()\n_mark.add_text({PICTURE_KEY!r}, {model_fingerprint()!r})\n"
            f"_annotate(_Image.open({str(PHOTO)!r}), _faces, pipe.image_processor, pipe.thresholds())"
            f".save({str(picture)!r}, pnginfo=_mark, optimize=True)\n"
        )
    done = subprocess.run(
        [sys.executable, "-c", quickstart_block() + epilogue],
        cwd=REPO,
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("QUICKSTART-RECORD "))
    return json.loads(line.removeprefix("QUICKSTART-RECORD "))


def format_record(face: dict) -> str:
    """The face as the README shows it: JSON, one field a line, numbers rounded to 2 decimals."""

    def rounded(value, digits=2):
        if isinstance(value, float):
            return round(value, digits)
        if isinstance(value, dict):
            return {key: rounded(item, digits) for key, item in value.items()}
        if isinstance(value, list):
            return [rounded(item, digits) for item in value]
        return value

    lines = []
    for key, value in face.items():
        if key == "action_units":  # 12 AUs: two lines of six
            items = [f"{json.dumps(name)}: {json.dumps(rounded(p))}" for name, p in value.items()]
            rows = [", ".join(items[start : start + 6]) for start in range(0, len(items), 6)]
            indent = " " * len('  "action_units": {')
            text = "{" + (",\n" + indent).join(rows) + "}"
        else:
            text = json.dumps(rounded(value, 1 if key == "box" else 2), ensure_ascii=False)
        lines.append(f"  {json.dumps(key)}: {text}")
    return "```json\n{\n" + ",\n".join(lines) + "\n}\n```\n"


def record_differences(shown: dict, output: dict) -> list[str]:
    """Where the README's record and the pipeline's output disagree (probabilities within `TOLERANCE`, the box within
    a pixel, the rest equal)."""
    differences = []
    if set(shown) != set(output):
        differences.append(f"fields: README {sorted(shown)}, output {sorted(output)}")
    for key in ("active_action_units", "landmark_backend", "explanation"):
        if shown.get(key) != output.get(key):
            differences.append(f"{key}: README {shown.get(key)!r}, output {output.get(key)!r}")
    if shown["emotion"]["label"] != output["emotion"]["label"]:
        differences.append(f"emotion: README {shown['emotion']}, output {output['emotion']}")
    probabilities = {
        "emotion score": ({"score": shown["emotion"]["score"]}, {"score": output["emotion"]["score"]}),
        "emotions": tuple(
            {item["label"]: item["score"] for item in record.get("emotions", [])} for record in (shown, output)
        ),  # a label missing in one (a swap among tiny ones): 0
        "action_units": (shown.get("action_units", {}), output.get("action_units", {})),
    }
    for field, (mine, theirs) in probabilities.items():
        for name in sorted(set(mine) | set(theirs)):
            if abs(mine.get(name, 0.0) - theirs.get(name, 0.0)) > TOLERANCE:
                differences.append(f"{field} {name}: README {mine.get(name)}, output {theirs.get(name)}")
    if len(shown.get("box", [])) != 4 or np.abs(np.subtract(shown["box"], output["box"])).max() > 1:
        differences.append(f"box: README {shown.get('box')}, output {output.get('box')}")
    return differences


def write_quickstart() -> dict:
    """Rewrite the README's quickstart record and docs/quickstart.png from the shipped model."""
    face = run_quickstart(picture=QUICKSTART_PICTURE)
    text = README.read_text()
    assert RECORD.search(text), "the README has no <!-- quickstart-record --> ... <!-- /quickstart-record --> section"
    README.write_text(RECORD.sub(lambda found: found.group(1) + format_record(face) + found.group(3), text, count=1))
    return face


def markdown_links(path: Path) -> list[str]:
    """The link targets of a Markdown file, but those in code blocks and in quoted text (written for another file)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    text = re.sub(r"^>.*$", "", text, flags=re.M)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces → hyphens)."""
    headings = re.findall(r"^#+ (.*)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_the_readme_has_python_blocks_that_name_only_files_this_test_provides():
    blocks = readme_python_blocks() + docs_python_blocks()
    assert len(blocks) >= 5
    named = set(re.findall(r"""["']([\w./-]+\.(?:jpg|png|mp4))["']""", "\n".join(blocks)))
    assert named <= {"photo.jpg", "a.jpg", "b.png", "clip.mp4", "a_regions.png"}, named


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    pytest.importorskip("av")
    from mf2.video import write_video

    image = Image.open(PHOTO).convert("RGB")
    image.save(tmp_path / "photo.jpg")
    image.save(tmp_path / "a.jpg")
    shutil.copy(PHOTO, tmp_path / "b.png")
    write_video(tmp_path / "clip.mp4", [np.asarray(image.resize((256, 256)))] * 10, fps=5)
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(readme_python_blocks() + docs_python_blocks()))
    env = {**os.environ, **OFFLINE}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "a_regions.png").is_file()  # docs/analysis.md's processor block


@pytest.mark.slow
def test_the_readme_quickstart_prints_the_record_it_shows():
    """The quickstart, run as written, prints the README's record: the same emotion, active AUs, explanation and
    fields, probabilities within 0.01, the box within a pixel. After a model change: the regeneration command above."""
    shown, output = readme_record(), run_quickstart()
    differences = record_differences(shown, output)
    assert not differences, (
        "the README's quickstart record is not the shipped model's output; rewrite it with "
        "`python tests/test_readme.py --write-quickstart`:\n" + "\n".join(differences)
    )


def test_the_quickstart_picture_was_drawn_with_the_shipped_model():
    assert "](docs/quickstart.png)" in README.read_text()
    drawn_with = Image.open(QUICKSTART_PICTURE).text.get(PICTURE_KEY)
    assert drawn_with == model_fingerprint(), (
        f"docs/quickstart.png was drawn with {drawn_with}, the shipped model is {model_fingerprint()}; redraw it with "
        "`python tests/test_readme.py --write-quickstart`"
    )


def test_the_record_check_notices_a_changed_record():
    shown = readme_record()
    assert record_differences(shown, json.loads(json.dumps(shown))) == []
    changed = json.loads(json.dumps(shown))
    changed["action_units"]["AU12"] = abs(changed["action_units"]["AU12"] - 0.5)
    changed["emotion"]["label"] = "a different emotion"
    found = record_differences(shown, changed)
    assert any(line.startswith("action_units AU12") for line in found) and any("emotion:" in line for line in found)


def test_the_readme_is_short_and_starts_with_its_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) < 215
    markers = [text.index("<!-- main-command -->"), text.index("<!-- test-command -->")]
    assert markers == sorted(markers) and "```" not in text[: markers[0]]
    assert text.count("<!-- model-figures -->") == 1


def test_relative_links_resolve():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for link in markdown_links(page):
            if re.match(r"[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {link}")
            elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
                broken.append(f"{page.relative_to(REPO)}: {link} (no such heading)")
    assert not broken, broken


def test_the_readme_names_every_extra_and_every_command():
    text = README.read_text()
    pyproject = (REPO / "pyproject.toml").read_text()  # Python 3.10 has no tomllib
    section = re.search(r"^\[project\.optional-dependencies\]\n(.*?)^\[", pyproject, flags=re.S | re.M).group(1)
    extras = re.findall(r"^([\w-]+) = \[", section, flags=re.M)
    assert {"dlib", "video", "test"} <= set(extras), extras
    table = set(re.findall(r"^\| `([\w-]+)` \|", text, flags=re.M))
    assert set(extras) <= table, set(extras) - table
    tree = ast.parse((REPO / "mf2" / "cli" / "__init__.py").read_text())
    commands = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "COMMANDS"
    )
    listed = re.findall(r"^\| `mf2 (\w+)[^`]*` \|", text, flags=re.M)
    assert sorted(listed) == sorted(commands), (listed, sorted(commands))


def test_the_space_front_matter_says_the_weights_licence():
    card = (MODEL / "README.md").read_text()
    card_licence = re.search(r"^license_name: (.+)$", card, flags=re.M).group(1)
    front_matters = [
        block
        for page in [README, *DOCS.glob("*.md")]
        for block in re.findall(r"^```yaml\n---\n(.*?)^---\n```", page.read_text(), flags=re.S | re.M)
        if "sdk: gradio" in block
    ]
    assert front_matters
    for block in front_matters:
        assert "license: other" in block and f"license_name: {card_licence}" in block, block
        assert "apache-2.0" not in block


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-quickstart"]:
        raise SystemExit("usage: python tests/test_readme.py --write-quickstart")
    written = write_quickstart()
    print(f"README.md: the quickstart record ({written['emotion']['label']}, active {written['active_action_units']})")
    print(f"{QUICKSTART_PICTURE.relative_to(REPO)}: drawn with {model_fingerprint()}")
