"""The data-set trust check's deletion setting, measured (docs/dataset_audit.md): the
executor's ``trust`` job on the digits CNN over a stratified sample of digits, for black vs
blurred deletion and 1/8 vs 1/4 of the side, Grad-CAM and gradient against 3 random maps per
image. Prints one verdict sentence per (setting, method, curve).

    PYTHONPATH=$PWD .venv/bin/python bench/dataset_trust_default.py [--n 40]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CONVLENS_DATA_DIR", tempfile.mkdtemp(prefix="convlens-trust-"))

from analysis.core.datasets import load_digits_dataset
from analysis.dataset.evaluate import stratified_sample, trust_verdicts
from analysis.dataset.executor import JobSpec, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="images (stratified sample, seed 0)")
    args = ap.parse_args()
    idx = tuple(int(i) for i in stratified_sample(load_digits_dataset().labels, args.n, seed=0))
    for patch in (8, 4):
        for substrate in ("zero", "blur"):
            aucs, rand = {}, None
            for method in ("gradcam", "gradient"):
                params = {"method": method, "steps": 16, "substrate": substrate, "patch": patch,
                          "n_random": 3, "seed": 0}
                res = run(JobSpec("trust", "digits", "digits", params=params, indices=idx), "local")
                aucs[method] = {"deletion": res.array("deletion_auc"), "insertion": res.array("insertion_auc")}
                rand = rand or {"deletion": res.array("random_deletion_auc"),
                                "insertion": res.array("random_insertion_auc")}
            for v in trust_verdicts(aucs, rand):
                print(f"{substrate:5s} {patch} px  {v.sentence}", flush=True)


if __name__ == "__main__":
    main()
