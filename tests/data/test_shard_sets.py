"""Shard sets as users give them (issue 27): per-split patterns, the splits never the same files,
truncated shards, what a remote run reads and keeps, and what it prints when a shard fails.

* item 2: a pattern without ``{split}`` is refused (local, remote), a mapping gives each split
  its own range, ``data.test_split=train`` is refused;
* item 5: a shard cut at a member boundary is an error naming it, or a counted skip, in the
  resampled loader, the random-access index and the evaluation's fetch;
* item 7: the fetch skips under ``data.shard_errors=skip`` (counted, one line), and copies the
  test shards and ``data.eval_shards`` training shards, not the training set;
* item 8: shard GETs per sample consumed are bounded by the shuffle buffer's arithmetic;
* item 13: an error after a checkpoint prints the exact resume command;
* item 17a: each skip is one line, counted for the run;
* item 17f: generated shards draw class c the same way in every split.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import re
import shutil
import tarfile
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from helpers import files_run_cfg
from PIL import Image

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides
from manifold_ssl.data.files import index_shards
from manifold_ssl.data.remote import fetch_shards, shard_samples
from manifold_ssl.data.splits import load_splits
from manifold_ssl.data.synthetic import write_shards
from manifold_ssl.run import train as pretrain
from manifold_ssl.training.checkpoint import load_checkpoint

PER_SHARD = 12  # 48 training images over 4 shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 classes; 4 shards per split (12 samples each); ``cut/``: the same with
    ``train-000002.tar`` cut at a member boundary halfway (as a dropped connection leaves a
    copy), and ``test-000003.tar`` missing."""
    root = tmp_path_factory.mktemp("sets")
    write_shards(root / "whole", 3, {"train": 48, "test": 48}, side=16, shards=4, seed=0)
    shutil.copytree(root / "whole", root / "cut")
    cut = root / "cut" / "train-000002.tar"
    with tarfile.open(cut) as tar:
        half = tar.getmembers()[len(tar.getmembers()) // 2].offset  # a header's first byte
    cut.write_bytes(cut.read_bytes()[:half])
    (root / "cut" / "test-000003.tar").unlink()
    return root


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    gets: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).gets.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(shards):
    """An HTTP server on 127.0.0.1 over the module's folder (``/whole/``, ``/cut/``), counting
    the GETs it answers (``_CountingHandler.gets``)."""
    handler = functools.partial(_CountingHandler, directory=str(shards))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _cfg(tmp_path, path, *overrides):
    resampled = ["--data.loader=resampled", "--data.samples_per_epoch=32", "--data.streams=3"]
    return files_run_cfg(
        tmp_path, "webdataset", path, *resampled, "--data.shuffle_buffer=16", *overrides
    )


# --------------------------------------------------------------------------- item 2
def test_a_pattern_without_split_is_refused_for_every_reader(shards, server, tmp_path):
    same = str(shards / "whole" / "train-{000000..000003}.tar")
    with pytest.raises(ValueError, match=r"the 'test' split reads 4 of the training split's"):
        index_shards(same, "test", tmp_path)
    for loader in ("memory", "stream"):
        cfg = files_run_cfg(tmp_path, "webdataset", same, f"--data.loader={loader}")
        with pytest.raises(ValueError, match=r"'test' split reads .*train-000000\.tar"):
            pretrain(cfg, progress=False)
    remote = f"{server}/whole/train-{{000000..000003}}.tar"
    with pytest.raises(ValueError, match=r"'test' split reads 4 .*whole/train-000000\.tar"):
        pretrain(_cfg(tmp_path, remote), progress=False)
    with pytest.raises(ValueError, match=r"test_split=train would measure"):
        apply_overrides(_cfg(tmp_path, remote), ["--data.test_split=train"])
    with pytest.raises(ValueError, match=r"test_split=train would measure"):
        load_splits("digits", str(tmp_path), test_split="train")  # any source


def test_a_mapping_gives_each_split_its_own_range(shards, server, tmp_path):
    whole = shards / "whole"
    text = f"{{train: {whole}/train-{{000000..000003}}.tar, test: {whole}/test-{{000001..000002}}.tar}}"
    cfg = files_run_cfg(tmp_path, "webdataset", text, "--train.max_steps=2")
    assert cfg.data.path == {
        "train": f"{whole}/train-{{000000..000003}}.tar",
        "test": f"{whole}/test-{{000001..000002}}.tar",
    }
    result = pretrain(cfg, progress=False)
    assert len(result.splits.test) == 2 * PER_SHARD  # shards 1 and 2 of the test split
    assert len(result.splits.train) + len(result.splits.val) == 4 * PER_SHARD
    remote = f"{{train: {server}/whole/train-{{000000..000003}}.tar, test: {server}/whole/test-000000.tar}}"
    result = pretrain(_cfg(tmp_path / "r", remote, "--train.max_steps=2"), progress=False)
    assert len(result.splits.test) == PER_SHARD
    with pytest.raises(ValueError, match=r"data.path must be a mapping with a 'train' entry"):
        files_run_cfg(tmp_path, "webdataset", f"{{test: {whole}/test-000000.tar}}")
    with pytest.raises(ValueError, match=r"mapping from split to pattern is for webdataset"):
        files_run_cfg(tmp_path, "imagefolder", text)


def test_keys_of_the_resampled_reader_are_refused_for_a_random_access_run(shards, tmp_path):
    """Helper 15: a local run ignored ``data.samples_per_epoch`` and ``data.shard_errors``."""
    local = str(shards / "whole" / "{split}-{000000..000003}.tar")
    for key, expected in (
        ("--data.samples_per_epoch=64", r"samples_per_epoch=64 sets the epoch of .*resampled"),
        ("--data.shard_errors=skip", r"shard_errors=skip is for shards read in order"),
    ):
        for loader in ("auto", "memory", "stream"):
            with pytest.raises(ValueError, match=expected):
                files_run_cfg(tmp_path, "webdataset", local, f"--data.loader={loader}", key)
    files_run_cfg(tmp_path, "webdataset", local, "--data.shard_errors=raise")  # the default


# --------------------------------------------------------------------------- item 5
def test_a_shard_cut_at_a_member_boundary_is_an_error_naming_it(shards, server, tmp_path):
    cut = shards / "cut" / "train-000002.tar"
    whole = len(list(shard_samples(str(shards / "whole" / "train-000002.tar"))))
    assert whole == PER_SHARD
    for url in (str(cut), f"pipe:cat {cut}", f"{server}/cut/train-000002.tar"):
        with pytest.raises(OSError, match=r"train-000002\.tar: truncated"):
            list(shard_samples(url))
    with pytest.raises(ValueError, match=r"shard .*cut/train-000002\.tar is truncated"):
        index_shards(str(shards / "cut" / "{split}-{000000..000003}.tar"), "train", tmp_path)
    with pytest.raises(OSError, match=r"cut/train-000002\.tar: truncated"):
        fetch_shards([f"{server}/cut/train-000002.tar"], tmp_path / "copies")
    assert not list((tmp_path / "copies").glob("*.tar"))  # never a partial copy
    copies, skipped = fetch_shards([f"{server}/cut/train-000002.tar"], tmp_path / "c", "skip")
    assert copies == [] and len(skipped) == 1 and "truncated" in skipped[0]


def test_the_resampled_loader_stops_at_a_cut_shard_or_counts_it(shards, server, tmp_path, capsys):
    path = f"{server}/cut/{{split}}-{{000000..000003}}.tar"
    local = f"--data.eval_path={shards}/whole/{{split}}-*.tar"
    with pytest.raises(OSError, match=r"cut/train-000002\.tar: truncated"):
        pretrain(_cfg(tmp_path / "a", path, local), progress=False)
    done = pretrain(_cfg(tmp_path / "b", path, local, "--data.shard_errors=skip"), progress=False)
    assert done.status == "finished"
    skipped = load_checkpoint(done.run_dir / "checkpoints" / "last.pt")["shards_skipped"]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "skipped an unreadable" in ln]
    # item 17a: one line per skipped shard, numbered for the run (not per stream), no source
    assert skipped > 0 and len(lines) == skipped
    assert [int(re.search(r"\(skip (\d+) this run", ln).group(1)) for ln in lines] == list(
        range(1, skipped + 1)
    )
    assert all("train-000002.tar: truncated" in ln for ln in lines)
    # helper 16: skips count draws (with replacement); the distinct shards are named apart
    assert all("of 1 distinct shards" in ln for ln in lines)
    state = load_checkpoint(done.run_dir / "checkpoints" / "last.pt")
    assert state["bad_shards"] == [f"{server}/cut/train-000002.tar"]


# --------------------------------------------------------------------------- item 7
def test_the_evaluation_fetch_skips_counts_and_keeps_a_bounded_copy(
    shards, server, tmp_path, capsys
):
    path = f"{server}/cut/{{split}}-{{000000..000003}}.tar"
    with pytest.raises(OSError, match=r"train-000002\.tar: truncated.*shard_errors=skip"):
        pretrain(_cfg(tmp_path / "a", path, "--train.max_steps=1"), progress=False)
    cut_test = (
        f"{{train: {server}/whole/train-{{000000..000003}}.tar, "
        f"test: {server}/cut/test-{{000000..000003}}.tar}}"
    )
    with pytest.raises(OSError, match=r"test-000003\.tar: HTTP 404.*shard_errors=skip"):
        pretrain(_cfg(tmp_path / "a", cut_test, "--train.max_steps=1"), progress=False)
    cfg = _cfg(
        tmp_path / "b",
        path,
        "--train.max_steps=1",
        "--data.shard_errors=skip",
        "--data.eval_shards=2",
        "--data.shuffle_initial=4",
    )
    result = pretrain(cfg, progress=False)
    err = capsys.readouterr().err
    # the training split's pick of 2 may hold the cut shard: 1 (test) or 2 of 6 shards skipped
    found = re.search(r"skipped (\d) of the 6 shards fetched for the evaluation", err)
    assert found, err
    # recorded with the run (helper 15: the checkpoint's count is the training stream's)
    recorded = json.loads((result.run_dir / "meta.json").read_text())["eval_shards_skipped"]
    assert len(recorded) == int(found.group(1)) and "test-000003.tar: HTTP 404" in recorded[-1]
    assert len(result.splits.shards_skipped) == len(recorded)
    copies = sorted((tmp_path / "b" / "data" / "cache" / "shards").glob("*.tar"))
    assert len(copies) == 6 - int(found.group(1))  # 2 training + 3 test shards at most
    assert len(result.splits.test) == 3 * PER_SHARD
    trained_on = len(result.splits.train) + len(result.splits.val)
    assert trained_on == (2 - (int(found.group(1)) - 1)) * PER_SHARD


# --------------------------------------------------------------------------- item 8
def test_shard_gets_per_sample_are_bounded_by_the_buffer_arithmetic(shards, server, tmp_path):
    """3 lanes, batch 8, 4 steps: lane 0 gives 16 samples, lanes 1 and 2 give 8 each. A lane
    that gives c samples reads at most min(2c + initial, c + buffer) of them, so opens at most
    floor(that / 12) + 1 shards of 12 samples."""
    initial, buffer = 4, 1000
    cfg = _cfg(
        tmp_path,
        f"{server}/whole/{{split}}-{{000000..000003}}.tar",
        f"--data.eval_path={shards}/whole/{{split}}-*.tar",
        "--train.epochs=1",
        f"--data.shuffle_buffer={buffer}",
        f"--data.shuffle_initial={initial}",
    )
    _CountingHandler.gets.clear()
    assert pretrain(cfg, progress=False).step == 4
    given = [16, 8, 8]
    bound = sum(min(2 * c + initial, c + buffer) // PER_SHARD + 1 for c in given)
    assert 0 < len(_CountingHandler.gets) <= bound  # 8 (before: a full buffer, ~250 GETs)


# --------------------------------------------------------------------------- item 13
def test_a_shard_error_mid_run_prints_the_resume_command(shards, tmp_path, capsys):
    source = tmp_path / "source"
    shutil.copytree(shards / "whole", source)
    path = f"pipe:cat {source}/{{split}}-{{000000..000003}}.tar"
    first = pretrain(_cfg(tmp_path, path, "--train.max_steps=1"), progress=False)
    for gone in ("train-000001.tar", "train-000002.tar"):
        (source / gone).unlink()
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(first.run_dir)]) == 2  # with its progress bar
    err = capsys.readouterr().err
    command = f"manifold-ssl pretrain --resume {first.run_dir} --data.shard_errors=skip"
    # on a line of its own under the bar, and the command given gets past the shard
    assert f"\nthe last completed step was checkpointed; resume with: {command}\n" in err
    assert re.search(r"error: shard .*train-00000[12]\.tar", err)
    assert main([*command.split()[1:], "--quiet"]) == 0
    assert load_checkpoint(first.run_dir / "checkpoints" / "last.pt")["shards_skipped"] > 0


# --------------------------------------------------------------------------- item 17f
def test_generated_shards_tint_each_class_alike_in_every_split(tmp_path):
    write_shards(tmp_path, 3, {"train": 60, "test": 60}, side=16, shards=1, seed=0)
    means = {}
    for split in ("train", "test"):
        colour: dict[int, list[np.ndarray]] = {}
        for sample in shard_samples(str(tmp_path / f"{split}-000000.tar")):
            image = np.asarray(Image.open(io.BytesIO(sample["jpg"])), dtype=np.float64)
            colour.setdefault(int(sample["cls"]), []).append(image.reshape(-1, 3).mean(0))
        means[split] = {c: np.mean(v, axis=0) for c, v in colour.items()}
    for c in range(3):  # noise averages to 127.5 / 2 in both: the tint alone differs
        assert np.abs(means["train"][c] - means["test"][c]).max() < 3, c
    assert Path(tmp_path / "test-000000.tar").is_file()
