"""Worker entry point: ``python -m targets.tvm._worker <job_dir>`` (started by
:func:`targets.tvm._jobs.run_in_worker`).

Reads ``<job_dir>/program.pt2`` (a saved ``torch.export`` program) and ``<job_dir>/job.pkl``
(``entry``, example inputs, torch reference outputs, keyword arguments), runs the entry in this
fresh process — ``measure``: ``measure_exported``, its ``MeasureResult.to_dict()``; ``curve``:
``tune_and_measure`` (one step of a tuning curve), its outcome — and writes it to
``<job_dir>/result.json``. Exit status 0 when a result was written (which may itself report an
error), 1 otherwise.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run one job; see the module docstring."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(argv) != 2:
        logging.error("usage: python -m targets.tvm._worker <job_dir>")
        return 1
    job = Path(argv[1])
    with open(job / "job.pkl", "rb") as fh:
        payload = pickle.load(fh)
    kwargs = payload["kwargs"]
    from ._env import intrinsic_families, register_cpu_tensor_intrinsics

    families = intrinsic_families(kwargs["tvm_target"])
    if families is not None:
        # This process is ours and only schedules CPU code: skip the ~20 s registration of
        # GPU tensor intrinsics (see register_cpu_tensor_intrinsics).
        register_cpu_tensor_intrinsics(families)
    import torch

    exported = torch.export.load(str(job / "program.pt2"))
    if payload.get("entry", "measure") == "curve":
        from ._tuning_curve import tune_and_measure

        result = tune_and_measure(exported, payload["inputs"], payload["reference"], **kwargs)
    else:
        from ._measure import measure_exported

        result = measure_exported(exported, payload["inputs"], payload["reference"], **kwargs).to_dict()
    tmp = job / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, job / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
