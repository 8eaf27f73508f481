#!/usr/bin/env python
"""img2dataset doing our ingestion work: the peer of bench/ingest.py's peer suite (issue #14).

Runs in a side environment holding img2dataset (not a dependency of this project). Python 3.11:
    python3 -m venv /work/i2d-venv
    /work/i2d-venv/bin/pip install "img2dataset==1.47.0" "tensorflow-cpu==2.17.1" "tensorflow-io==0.37.1"
    /work/i2d-venv/bin/pip install "pyarrow<23"   # pyarrow 23+ needs numpy 2; TF 2.17 pins numpy 1.26
(tensorflow-io 0.37.1 is built for TF 2.17; img2dataset's TFRecord writer imports it only for its side
effects, and writes through tensorflow's own TFRecordWriter.)

    /work/i2d-venv/bin/python bench/img2dataset_ref.py LIST OUT --processes 2 --threads 32
bench/ingest.py --img2dataset /work/i2d-venv/bin/python runs it for you.

LIST: lines `id,url,l0,...,l12` as bench/ingest.py's make_list writes them. They become a parquet file
(url; id as the caption, stored as the `txt` feature; l0..l12 as int64 extra columns) that
`img2dataset.download` reads. The work matches ours: short side to 256 (INTER_AREA) then a 256x256 center
crop (resize_mode="center_crop"; "keep_ratio" would only do the resize), JPEG q95, TFRecord output,
multiprocessing distributor, no retries, no wandb, and no EXIF extraction or sha256 (ours does neither).

img2dataset gives each shard to one process, whose threads only download: decode, resize and encode run
on that process's main thread. So with fewer shards than processes some processes idle; by default the
list is cut into exactly `--processes` shards (`--shard-size` overrides).

OUT gets NNNNN.tfrecord (features: jpg, key, txt and caption (= id), l0..l12, url, status, width, height, ...),
NNNNN.parquet (per-sample status), NNNNN_stats.json per shard. Exit 0 and print `ok N` only when the
stats files count N successes for N lines; a failed shard is only printed by img2dataset, so it shows
up here as a missing stats file.

Every image is a new connection (urllib, no keep-alive), P x T at once: the server's listen backlog must
hold them (socketserver's default of 5 overflows: SYN retries of 1-7 s, then "timed out" failures).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise checks PyPI at import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("WANDB_MODE", "disabled")


def to_parquet(lst: str, path: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, urls, labels = [], [], [[] for _ in range(13)]
    with open(lst) as f:
        for line in f:
            parts = line.rstrip("\n").split(",")
            if len(parts) < 2:
                continue
            ids.append(parts[0])
            urls.append(parts[1])
            for k in range(13):
                labels[k].append(int(parts[2 + k]) if 2 + k < len(parts) else 0)
    cols = {"id": pa.array(ids, pa.string()), "url": pa.array(urls, pa.string())}
    cols.update({f"l{k}": pa.array(v, pa.int64()) for k, v in enumerate(labels)})
    pq.write_table(pa.table(cols), path)
    return len(urls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("list", help="id,url,l0..l12 lines")
    ap.add_argument("out", help="output folder: created if missing, must be empty")
    ap.add_argument("--processes", type=int, default=2, help="img2dataset processes_count")
    ap.add_argument("--threads", type=int, default=32, help="img2dataset thread_count (per process)")
    ap.add_argument("--shard-size", type=int, default=0, help="number_sample_per_shard (0: ceil(N / processes))")
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args()

    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if os.listdir(args.out):
        sys.exit(f"{args.out} is not empty (img2dataset would skip the shards it finds done there)")

    from img2dataset import download

    with tempfile.TemporaryDirectory(prefix="i2d-list-") as tmp:
        src = os.path.join(tmp, "list.parquet")
        n = to_parquet(args.list, src)
        if n == 0:
            sys.exit("empty list")
        shard = args.shard_size or math.ceil(n / args.processes)
        download(
            url_list=src,
            input_format="parquet",
            url_col="url",
            caption_col="id",
            save_additional_columns=[f"l{k}" for k in range(13)],
            output_folder=args.out,
            output_format="tfrecord",
            image_size=args.image_size,
            resize_mode="center_crop",
            resize_only_if_bigger=False,
            downscale_interpolation="area",
            encode_quality=95,
            encode_format="jpg",
            skip_reencode=False,
            disable_all_reencoding=False,
            processes_count=args.processes,
            thread_count=args.threads,
            number_sample_per_shard=shard,
            distributor="multiprocessing",
            retries=0,
            max_shard_retry=0,
            timeout=10,
            enable_wandb=False,
            extract_exif=False,
            compute_hash=None,
        )
    stats = [json.loads(Path(p).read_text()) for p in sorted(glob.glob(os.path.join(args.out, "*_stats.json")))]
    ok = sum(s["successes"] for s in stats)
    shards = math.ceil(n / shard)
    if ok != n or len(stats) != shards:
        errors: dict[str, int] = {}
        for s in stats:
            for k, v in s.get("status_dict", {}).items():
                errors[k] = errors.get(k, 0) + v
        sys.exit(
            f"img2dataset wrote {ok} of {n} images; stats for {len(stats)} of {shards} shards; "
            f"failed_to_download {sum(s['failed_to_download'] for s in stats)}, "
            f"failed_to_resize {sum(s['failed_to_resize'] for s in stats)}; statuses {errors}"
        )
    print(f"ok {n} ({shards} shards of <= {shard}, {time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
