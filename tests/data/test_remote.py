"""Shards from anywhere (issue 21, item 1): training from WebDataset shards served over HTTP by a
local server and read through ``pipe:cat``, resampled; every method trains; the batches do not
depend on the workers; resume is exact; 2-process DDP; a shard that vanishes mid-run."""

from __future__ import annotations

import functools
import http.server
import re
import threading

import numpy as np
import pytest
import torch
from helpers import files_run_cfg

from manifold_ssl.config import apply_overrides
from manifold_ssl.data.remote import fetch_shards, is_remote, shard_samples, shard_urls
from manifold_ssl.data.synthetic import write_shards
from manifold_ssl.methods import METHODS
from manifold_ssl.run import train as pretrain
from manifold_ssl.training.metrics import read_metrics


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 classes; 4 shards per split: 48 training images, 12 test images (16×16 JPEGs)."""
    root = tmp_path_factory.mktemp("remote") / "shards"
    write_shards(root, 3, {"train": 48, "test": 12}, side=16, shards=4, seed=0)
    return root


@pytest.fixture(scope="module")
def server(shards):
    """An HTTP server on 127.0.0.1 serving the shards' folder; its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(shards))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request lines in the test output
        pass


def _url(server):
    return f"{server}/{{split}}-{{000000..000003}}.tar"


def _cfg(tmp_path, path, *overrides):
    resampled = ["--data.loader=resampled", "--data.samples_per_epoch=32", "--data.streams=3"]
    return files_run_cfg(
        tmp_path, "webdataset", path, *resampled, "--data.shuffle_buffer=16", *overrides
    )


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


# --------------------------------------------------------------------------- reading shards
def test_http_pipe_and_file_shards_read_the_same_samples(shards, server):
    local = [s for s in shard_samples(str(shards / "train-000001.tar"))]
    http = list(shard_samples(f"{server}/train-000001.tar"))
    pipe = list(shard_samples(f"pipe:cat {shards / 'train-000001.tar'}"))
    assert len(local) == 12 and local == http == pipe  # 48 images over 4 shards
    assert set(local[0]) == {"__key__", "jpg", "cls"}
    assert is_remote(server) and is_remote("pipe:cat x") and not is_remote(str(shards))
    assert shard_urls(f"{server}/{{split}}-{{0..2}}.tar", "test")[-1] == f"{server}/test-2.tar"


def test_a_missing_shard_is_a_clear_error_from_every_source(shards, server):
    for url, expected in (
        (f"{server}/train-000009.tar", "HTTP 404"),
        (f"pipe:cat {shards / 'nope.tar'}", "exited with status 1"),
        (str(shards / "nope.tar"), "no such file"),
        ("http://127.0.0.1:9/x.tar", "shard http://127.0.0.1:9/x.tar"),
    ):
        with pytest.raises(OSError, match=expected):
            list(shard_samples(url))
    cut = shards.parent / "cut"  # a shard that ends midway, as a dropped connection leaves it
    cut.mkdir(exist_ok=True)
    (cut / "train-000000.tar").write_bytes((shards / "train-000000.tar").read_bytes()[:5000])
    with pytest.raises(OSError, match=r"train-000000.tar: not a readable tar stream"):
        list(shard_samples(f"pipe:cat {cut / 'train-000000.tar'}"))


def test_fetched_shards_index_as_the_local_ones(shards, server, tmp_path):
    from manifold_ssl.data.files import index_shards
    from manifold_ssl.run.build import brace_list

    local = index_shards(str(shards / "{split}-*.tar"), "test", tmp_path / "a")
    train, skipped = fetch_shards(shard_urls(_url(server), "train"), tmp_path / "c")
    test, _ = fetch_shards(shard_urls(_url(server), "test"), tmp_path / "c")
    assert len(train) == len(test) == 4 and not skipped and not set(train) & set(test)
    again, _ = fetch_shards(shard_urls(_url(server), "test"), tmp_path / "c")
    assert again == test  # fetched once: the copies are named by their URLs
    fetched = {"train": brace_list(train), "test": brace_list(test)}
    copy = index_shards(fetched, "test", tmp_path / "b")
    assert copy.labels.tolist() == local.labels.tolist()
    assert all(copy.read(i) == local.read(i) for i in range(len(local)))


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", sorted(m for m in METHODS))
def test_every_method_trains_from_shards_served_over_http(server, tmp_path, method):
    extra = {
        "byol": ["--method.momentum=0.99", "--model.predictor=32-16"],
        "simsiam": ["--model.predictor=32-16"],
        "matrix_ssl": ["--method.momentum=0.99", "--model.predictor=32-16"],
    }.get(method, [])
    cfg = _cfg(tmp_path, _url(server), f"--method.name={method}", "--method.loss={}", *extra)
    result = pretrain(apply_overrides(cfg, ["--train.max_steps=3"]), progress=False)
    assert result.status == "max_steps"
    values = list(_losses(result.run_dir).values())
    assert len(values) == 3 and all(np.isfinite(values))


def test_http_and_pipe_cat_give_one_run_whatever_the_workers(shards, server, tmp_path):
    by_http = pretrain(_cfg(tmp_path / "a", _url(server), "--train.max_steps=5"), progress=False)
    pipe = f"pipe:cat {shards}/{{split}}-{{000000..000003}}.tar"
    by_pipe = pretrain(
        _cfg(tmp_path / "b", pipe, "--train.max_steps=5", "--data.workers=2"), progress=False
    )
    a, b = _losses(by_http.run_dir), _losses(by_pipe.run_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    from manifold_ssl.dispatch import DispatchCounter

    with DispatchCounter() as counter:  # a stream stopped mid-epoch left no host-side mark
        torch.ones(2).add(1)
    assert counter.by_op["add"] == 1
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_a_resumed_run_draws_the_same_batches(server, tmp_path):
    full = pretrain(_cfg(tmp_path, _url(server)), progress=False)
    assert full.step == 2 * 4  # two epochs of 32 samples in batches of 8
    stopped = pretrain(_cfg(tmp_path, _url(server), "--train.max_steps=3"), progress=False)
    resumed = pretrain(
        _cfg(tmp_path, _url(server), "--data.workers=2"), resume=stopped.run_dir, progress=False
    )
    assert resumed.step == full.step
    a, b = _losses(full.run_dir), _losses(stopped.run_dir)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_two_process_ddp_trains_from_http_each_rank_its_own_streams(server, tmp_path):
    from helpers import one_and_two_process_losses

    cfg = _cfg(tmp_path, _url(server), "--train.max_steps=4", "--data.workers=1")
    single, ddp = one_and_two_process_losses(cfg, tmp_path)
    assert sorted(single) == sorted(ddp) == [1, 2, 3, 4]
    assert all(np.isfinite(list(ddp.values())))
    # the ranks read other samples than the single process's (documented): not equal
    assert any(ddp[s] != pytest.approx(single[s], rel=1e-6) for s in single)


def test_a_shard_that_vanishes_mid_run_is_an_error_or_a_counted_skip(shards, tmp_path, capsys):
    import shutil

    from manifold_ssl.training.checkpoint import load_checkpoint

    source = tmp_path / "source"
    shutil.copytree(shards, source)
    path = f"pipe:cat {source}/{{split}}-{{000000..000003}}.tar"
    first = pretrain(_cfg(tmp_path, path, "--train.max_steps=1"), progress=False)
    for gone in ("train-000001.tar", "train-000002.tar"):  # after the run fetched its splits
        (source / gone).unlink()
    with pytest.raises(OSError, match=r"train-00000[12]\.tar.*exited with status 1"):
        pretrain(_cfg(tmp_path, path), resume=first.run_dir, progress=False)
    capsys.readouterr()
    done = pretrain(_cfg(tmp_path, path, "--data.shard_errors=skip"), progress=False)
    assert done.status == "finished"
    state = load_checkpoint(done.run_dir / "checkpoints" / "last.pt")
    skips = [ln for ln in capsys.readouterr().err.splitlines() if "skipped an unreadable" in ln]
    assert state["shards_skipped"] == len(skips) > 0
    assert 1 <= len(state["bad_shards"]) <= 2 and all(  # the two failing shards, by name
        re.search(r"train-00000[12]\.tar", url) for url in state["bad_shards"]
    )
    assert f"of {len(state['bad_shards'])} distinct shards" in skips[-1]


def test_a_local_copy_serves_the_evaluation_and_nothing_is_fetched(shards, server, tmp_path):
    cfg = _cfg(
        tmp_path, _url(server), "--train.max_steps=2", f"--data.eval_path={shards}/{{split}}-*.tar"
    )
    result = pretrain(cfg, progress=False)
    assert result.status == "max_steps" and len(result.splits.test) == 12
    assert not (tmp_path / "data" / "cache" / "shards").exists()


def test_streams_that_never_give_a_kept_sample_stop_with_an_error(shards):
    from manifold_ssl.data.resampled import _Lane

    urls = [str(shards / f"train-00000{i}.tar") for i in range(2)]
    lane = _Lane(urls, np.random.default_rng(0), 4, "raise", keep=lambda sample: False)
    with pytest.raises(ValueError, match="8 shards in a row .* held no image"):
        lane.next()


def test_bad_settings_name_the_key(server, tmp_path):
    with pytest.raises(ValueError, match="set data.samples_per_epoch"):
        _cfg(tmp_path, _url(server), "--data.samples_per_epoch=0")
    with pytest.raises(ValueError, match="data.loader=memory reads by random access"):
        _cfg(tmp_path, _url(server), "--data.loader=memory")
    with pytest.raises(ValueError, match="data.name must be webdataset"):
        _cfg(tmp_path, _url(server), "--data.name=imagefolder")
