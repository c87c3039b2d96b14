"""Image–text pretraining on caption-only shards, evaluated zero-shot on another labelled data
set (issue 21, item 4), on the CPU.

The pretraining set: scikit-learn's digits *training* images written as caption-only WebDataset
shards, DataComp/CC3M-style (``<key>.png`` + ``<key>.txt`` with every generated caption of the
image, one per line; no ``.cls``, so the run sees no label). The evaluation set: the digits
*test* images written as a labelled image folder of PNGs (``eval.zero_shot_data=imagefolder``),
read by another loader, as RGB, and prompted with the held-out templates ensembled. For
reference, the same recipe on the labelled digits with generated captions, zero-shot on its own
test split. Both data sets come from the same 8x8 digits: the number shows that the caption-only
path and the transfer evaluation work end to end, not how CLIP transfers across domains.

    python benchmarks/caption_transfer.py [--epochs 20] [--out results/caption_transfer.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import tempfile
import time
from pathlib import Path

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.captions import CAPTION_TEMPLATES, GeneratedCaptions, ImageAttributes
from manifold_ssl.data.datasets import load_dataset
from manifold_ssl.data.synthetic import write_caption_shards, write_class_folder
from manifold_ssl.run import evaluate_run, pretrain
from manifold_ssl.runinfo import run_metadata, write_json


def _data(tmp: Path) -> tuple[str, Path]:
    train = load_dataset("digits", "train", tmp / "data")
    test = load_dataset("digits", "test", tmp / "data")
    made = GeneratedCaptions(train, ImageAttributes.fit(train.images, train.labels))
    t = len(CAPTION_TEMPLATES["grey"])
    captions = [made.text([i] * t, list(range(t))) for i in range(len(made))]
    pattern = write_caption_shards(tmp / "shards", train.images, captions, shards=4)
    folder = tmp / "digits-folder"
    write_class_folder(folder, train.images, train.labels, train.classes, "train")
    write_class_folder(folder, test.images, test.labels, test.classes, "test")
    return pattern, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/caption_transfer.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        pattern, folder = _data(tmp)
        common = [
            f"--data.root={tmp / 'data'}",
            f"--train.out_dir={tmp / 'runs'}",
            f"--train.epochs={args.epochs}",
            "--train.knn_every=0",
            "--eval.baselines=false",
        ]
        caption_only = ["--data.name=webdataset", f"--data.path={pattern}", "--text.captions=files"]
        caption_only += ["--eval.zero_shot_data=imagefolder", f"--eval.zero_shot_path={folder}"]
        for recipe in ("digits_clip", "digits_multimodal_mmcr"):
            for setting, extra in (("caption-only shards", caption_only), ("labelled digits", [])):
                cfg = apply_overrides(load_recipe(recipe), [*common, *extra])
                start = time.perf_counter()
                result = pretrain(cfg, progress=False)
                seconds = time.perf_counter() - start
                r = evaluate_run(
                    cfg, result.method, result.splits, result.run_dir, "cpu", {}, False
                )
                zs = r.get("zero_shot_transfer") or r["zero_shot"]
                rows.append(
                    {
                        "recipe": recipe,
                        "pretraining": setting,
                        "evaluated on": "digits test as an image folder"
                        if "zero_shot_transfer" in r
                        else "its own test split",
                        "top1": zs["zero_shot_test_accuracy"],
                        "top5": zs["zero_shot_test_top5"],
                        "chance": zs["chance"],
                        "train_seconds": seconds,
                    }
                )
    print(f"{'recipe':<24} {'pretraining':<20} {'zero-shot on':<32} {'top-1':>6} {'top-5':>6}")
    for r in rows:
        print(
            f"{r['recipe']:<24} {r['pretraining']:<20} {r['evaluated on']:<32} "
            f"{100 * r['top1']:5.1f}% {100 * r['top5']:5.1f}%"
        )
    write_json(
        Path(__file__).parent / args.out,
        {"rows": rows, "settings": {"epochs": args.epochs}, "meta": run_metadata(0)},
    )


if __name__ == "__main__":
    main()
