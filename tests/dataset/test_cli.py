"""python -m analysis.dataset: the same job and output as run(), recorded in the audit trail."""
from __future__ import annotations

import json

import pytest

from analysis.audit.trail import open_store
from analysis.core.config import load_config
from analysis.core.errors import ParameterError
from analysis.core.models.loaders import ModelSpec
from analysis.dataset.__main__ import _parser, main
from analysis.dataset.executor import JobSpec, load_result


def test_cli_audit_runs_the_job_and_records_it(digits, tmp_path, capsys):
    rc = main(["audit", "--model", "digits", "--dataset", "digits", "--kind", "predict", "--indices", "0-63,100",
               "--batch-size", "16", "--params", '{"top_k": 3}', "--data-dir", str(tmp_path), "--quiet",
               "--user", "ada"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["complete"] and out["rows"] == 65 and out["skipped"] == 0
    spec = JobSpec("predict", ModelSpec("digits"), "digits", params={"top_k": 3}, batch_size=16,
                   indices=tuple(range(64)) + (100,))
    res = load_result(spec, data_dir=tmp_path)
    assert res is not None and res.key == out["key"] and res.array("top_ids").shape == (65, 3)
    rec = open_store().get(out["audit_run"])
    assert rec.page == "dataset" and rec.user == "ada" and rec.model_id == digits.model_id
    assert rec.context["job"] == spec.to_dict() and rec.view == {"page": "dataset", "params": {"job": res.key}}
    assert rec.metrics["n_rows"] == 65 and 0 < rec.metrics["mean_confidence"] <= 1
    assert rec.dataset_hash == res.meta["dataset_hash"]


def test_cli_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    rc = main(["audit", "--model", "digits", "--dataset", str(tmp_path / "missing.csv"), "--data-dir",
               str(tmp_path), "--no-record"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error:") and "does not exist" in err and "Traceback" not in err
    rc = main(["audit", "--model", "digits", "--dataset", "digits", "--params", '{"top_k": 0}', "--no-record",
               "--data-dir", str(tmp_path)])
    assert rc == 1 and "top_k" in capsys.readouterr().err


def test_cli_and_config_choose_the_ray_pipeline(tmp_path):
    none = tmp_path / "none.toml"
    assert load_config(none, env={}).ray_pipeline == "data"                 # Ray Data by default
    assert load_config(none, env={"CONVLENS_RAY_PIPELINE": " Pool"}).ray_pipeline == "pool"
    (tmp_path / "c.toml").write_text('engine = "ray"\nray_pipeline = "pool"\n')
    cfg = load_config(tmp_path / "c.toml", env={})
    assert (cfg.engine, cfg.ray_pipeline) == ("ray", "pool")
    with pytest.raises(ParameterError, match="ray_pipeline must be 'data' or 'pool'"):
        load_config(none, env={"CONVLENS_RAY_PIPELINE": "warm"})
    base = ["audit", "--model", "digits", "--dataset", "digits"]
    assert _parser().parse_args(base).ray_pipeline is None                  # then the configured one
    assert _parser().parse_args(base + ["--ray-pipeline", "pool"]).ray_pipeline == "pool"
    with pytest.raises(SystemExit):
        _parser().parse_args(base + ["--ray-pipeline", "warm"])
