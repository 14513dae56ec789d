"""Sliced vs whole batches through prepare_for_inference, in a plain process or one keeping freed memory.

    python benchmarks/slices.py plain   # -> results/slices-plain.json
    python benchmarks/slices.py kept    # -> results/slices-kept.json (vitkit.keep_freed_memory() first)

keep_freed_memory is process-wide and cannot be undone, hence one process per setting; within
each, the two ways alternate (round robin, median of 6). prepare_for_inference slices a batch
whose widest activation would pass 24 MiB only when freed memory is not kept (see slice_size);
here both ways are forced through InferenceModel.run.
"""
from __future__ import annotations

import argparse
import json
import warnings

import torch

import vitkit
from bench_inference import RESULTS, round_robin  # benchmarks/ is on sys.path when run as a script
from vitkit.inference.prepare import prepare_for_inference, slice_size
from vitkit.models import create_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("malloc", choices=("plain", "kept"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    kept = vitkit.keep_freed_memory() if args.malloc == "kept" else False
    torch.manual_seed(0)
    x = torch.randn(32, 3, 224, 224)
    rows = []
    for name in ("vit_base_patch16_224", "vit_small_patch16_224"):
        base = create_model(name)
        for precision in ("int8", "bf16"):
            prepared, size = prepare_for_inference(base, precision), slice_size(base, precision)
            secs = round_robin({"sliced": lambda: prepared.run(x, size), "whole": lambda: prepared.run(x, None)},
                               reps=6)
            row = dict(model=name, precision=precision, batch=32, slice_images=size,
                       **{f"{k}_images_per_s": 32 / v for k, v in secs.items()})
            rows.append(row)
            print(f"{args.malloc} {name} {precision}: sliced {row['sliced_images_per_s']:.2f}, "
                  f"whole {row['whole_images_per_s']:.2f} img/s", flush=True)
    path = RESULTS / f"slices-{args.malloc}.json"
    path.write_text(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads(),
                                    keep_freed_memory=kept, rows=rows), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
