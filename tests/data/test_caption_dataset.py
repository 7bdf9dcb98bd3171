"""The caption command: template captions end to end, and an LLM run killed halfway and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, load_from_disk
from mfa_fixtures import png_bytes

from mf2.configuration_mf2 import AU_NAMES
from mf2.data.caption_dataset import caption_dataset, load_mfa, main
from mf2.data.captions.template import TemplateCaptioner
from mf2.data.schema import MFA_FEATURES, DataError, mfa_row, rows_to_columns

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_dataset(count: int, offset: int = 0, image_dir: Path | None = None) -> Dataset:
    """`count` labelled rows; every row has active AUs and a known emotion (three LLM requests each)."""
    rows = []
    for i in range(offset, offset + count):
        au = [1 if (i + k) % 3 == 0 else 0 for k in range(len(AU_NAMES))]
        if image_dir is not None:
            path = image_dir / f"face{i}.png"
            path.write_bytes(png_bytes(i))
            image = str(path)
        else:
            image = {"bytes": png_bytes(i), "path": None}
        rows.append(mfa_row(image, au, i % 8, f"subject{i // 2}", -1, "test"))
    return Dataset.from_dict(rows_to_columns(rows), features=MFA_FEATURES)


def test_template_to_parquet_and_disk(tmp_path):
    (tmp_path / "images").mkdir()
    data = DatasetDict({"train": make_dataset(6, image_dir=tmp_path / "images"), "validation": make_dataset(3, 6)})
    captioned = caption_dataset(data, tmp_path / "out", TemplateCaptioner(), progress=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ["train.parquet", "validation.parquet"]
    # Images are embedded, so the Parquet files stand alone (no machine paths).
    images = pq.read_table(tmp_path / "out" / "train.parquet", columns=["image"]).column("image").to_pylist()
    assert all(image["bytes"] and "/" not in (image["path"] or "") for image in images)
    reloaded = load_mfa(tmp_path / "out", cache_dir=str(tmp_path / "hf"))
    template = TemplateCaptioner()
    for name in ("train", "validation"):
        assert reloaded[name].features == MFA_FEATURES
        rows = reloaded[name].remove_columns("image").to_list()
        assert rows == captioned[name].remove_columns("image").to_list()
        for row in rows:
            assert row["au_caption"] == template.caption(row["au"], row["emotion"]).au_caption
            assert row["emotion_caption"] and row["key_au_caption"]

    data["train"].save_to_disk(str(tmp_path / "raw"))
    code = main(
        [
            "--input",
            str(tmp_path / "raw"),
            "--output",
            str(tmp_path / "disk"),
            "--format",
            "disk",
            "--captioner",
            "template",
            "--no-progress",
        ]
    )
    assert code == 0
    on_disk = load_from_disk(str(tmp_path / "disk"))
    assert on_disk.features == MFA_FEATURES and on_disk["emotion_caption"] == captioned["train"]["emotion_caption"]
    with pytest.raises(ValueError, match="other than its input"):
        caption_dataset(tmp_path / "raw", tmp_path / "raw", TemplateCaptioner())


def test_an_output_folder_holding_another_dataset_is_refused_before_captioning(tmp_path, capsys):
    """`load_mfa` reads a `save_to_disk` dataset before Parquet files and every Parquet file as a split: writing one
    kind over the other, or fewer splits, would leave the earlier dataset to be read as this one's."""
    data = DatasetDict({"train": make_dataset(4), "validation": make_dataset(2, 4)})
    data["train"].save_to_disk(str(tmp_path / "raw"))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "raw"), "--output", str(out), "--captioner", "template", "--no-progress"]
    assert main([*argv, "--format", "disk"]) == 0
    assert main(argv) == 2  # Parquet over the save_to_disk dataset
    assert "holds another dataset (state.json)" in capsys.readouterr().err and not (out / "train.parquet").exists()
    assert main([*argv, "--format", "disk"]) == 0  # the same kind again: replaced
    caption_dataset(data, tmp_path / "parquet", TemplateCaptioner(), progress=False)
    with pytest.raises(DataError, match=r"holds another dataset \(validation.parquet\)"):
        caption_dataset(data["train"], tmp_path / "parquet", TemplateCaptioner(), progress=False)
    assert main(["--input", str(tmp_path / "missing"), "--output", str(out)]) == 2  # one line, no traceback
    assert "no such folder or file" in capsys.readouterr().err


def test_a_file_that_is_not_an_mfa_parquet_is_one_line(tmp_path, capsys):
    other = tmp_path / "ferplus_like.parquet"
    Dataset.from_dict({"emotion": ["happiness"], "file_name": ["a.png"]}).to_parquet(str(other))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(other.read_bytes()[:64])
    for path, says in ((other, "lacks the MFA columns"), (truncated, "not a readable Parquet file")):
        assert main(["--input", str(path), "--output", str(tmp_path / "out"), "--captioner", "template"]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err


def read_cache(path: Path) -> set[tuple[str, str]]:
    pairs = set()
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written at the kill
        pairs.add((record["image_sha256"], record["caption_type"]))
    return pairs


def test_llm_run_killed_halfway_resumes_without_asking_twice(chat_server, tmp_path):
    count = 16
    make_dataset(count).save_to_disk(str(tmp_path / "raw"))
    chat_server.delay = 0.15  # slow enough to kill the run in the middle
    output, cache = tmp_path / "out", tmp_path / "cache.jsonl"
    command = [
        sys.executable,
        "-m",
        "mf2.data.caption_dataset",
        "--input",
        str(tmp_path / "raw"),
        "--output",
        str(output),
        "--captioner",
        "llm",
        "--base-url",
        chat_server.url,
        "--model",
        "test-model",
        "--workers",
        "2",
        "--cache",
        str(cache),
        "--timeout",
        "10",
        "--backoff",
        "0.01",
        "--no-progress",
    ]
    env = {**os.environ, "MF2_LLM_API_KEY": "k", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}

    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if cache.exists() and len(cache.read_text().splitlines()) >= 8:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    cached = read_cache(cache)
    assert 8 <= len(cached) < 3 * count
    assert not (output / "train.parquet").exists()
    first_run = len(chat_server.log)

    # Re-run the same command (in this process, which spares a second interpreter start-up).
    assert main(command[3:]) == 0

    second_run = chat_server.log[first_run:]
    assert not {(entry["sha"], entry["type"]) for entry in second_run} & cached  # nothing cached is asked again
    for entry in chat_server.log:
        pair = (entry["sha"], entry["type"])
        oks = [e for e in chat_server.log if (e["sha"], e["type"]) == pair and e["outcome"] == "ok"]
        # One success each; only a reply in flight at the kill (answered, never cached) may be asked again.
        assert len(oks) == 1 or (pair not in cached and len(oks) == 2)
    assert len(read_cache(cache)) == 3 * count

    result = load_mfa(output / "train.parquet", cache_dir=str(tmp_path / "hf"))
    assert len(result) == count and result.features == MFA_FEATURES
    for row in result.remove_columns("image"):
        for label, caption in zip(row["au"], row["au_caption"]):
            assert caption and (label == 0 or caption[:2] == "AU")
        assert row["emotion_caption"] and row["key_au_caption"]
    assert not (output / "caption_failures.jsonl").exists()
