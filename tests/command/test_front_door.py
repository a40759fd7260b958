"""The command line as a new user meets it: Ctrl-C, a private Ray, composition files, relative
outputs inside a job, help, Parquet folders that readers open, steady rates, progress."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import REPO, start_job

from crysray import commands
from crysray.command.common import HelpFormatter, ray_failure
from crysray.console import Progress
from crysray.data.domain import LARGER_CELL, NOT_PEROVSKITE, UNSEEN_ELEMENTS, checkpoint_domain
from crysray.sample.campaign import finished_units
from crysray.sample.compositions import formula_atoms, read_targets
from crysray.sample.plan import plan_campaign, steady_rate, summary_lines
from crysray.sizing import ActorResources, actor_resources
from crysray.storage import Storage
from crysray.train.checkpoint import read_checkpoint


def sample_options(**given) -> argparse.Namespace:
    """``crysray sample``'s parsed options: the defaults, with ``given`` on top."""
    p = argparse.ArgumentParser()
    from crysray.command.sample import add_arguments

    add_arguments(p)
    args = p.parse_args(["--out", "unused"])
    return argparse.Namespace(**{**vars(args), **given})


# ---- Ctrl-C -------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_is_one_line_not_a_failed_attempt_and_the_rerun_finishes(tiny_checkpoint, tmp_path,
                                                                         job):  # fmt: skip
    out = tmp_path / "run"
    formulas = tmp_path / "f.txt"
    formulas.write_text("SrTiO3\nBaTiO3\nCa2Ti2O6\n")
    args = ["--checkpoint", tiny_checkpoint, "--compositions", formulas, "--num-samples", 300,
            "--unit-size", 10, "--batch-size", 2, "--steps", 60, "--out", out]  # fmt: skip
    # 60 steps in batches of 2: units slow enough that the run is still going when it is
    # interrupted (with 10 steps the 30 units could all finish first, on a fast machine)
    proc = start_job("mass_sample.py", *args)  # a private Ray of its own, in its own session
    deadline = time.time() + 300
    while not finished_units(out) or not list((out / "attempts").glob("*.json")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no unit in flight"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output[-3000:]
    assert "mass_sample: interrupted; rerun the same command to resume" in output
    assert "Traceback" not in output and "died" not in output
    # Ray's own lines went to the run's log, not the terminal
    assert "Started a local Ray instance" not in output
    assert "Started a local Ray instance" in (out / "logs" / "sample.log").read_text()
    records = [json.loads(p.read_text()) for p in (out / "attempts").glob("*.json")]
    assert records == []  # the interrupted attempts are not counted
    again = job("mass_sample.py", *args)  # resumed on the session's Ray instance
    assert again.returncode == 0, again.stderr[-3000:]
    # the rows as people read them: pandas on the data folder
    frame = pd.read_parquet(out / "data")
    assert len(frame) == 300 and frame["sample_id"].nunique() == 300


# ---- Ray: private by default, one line when it fails ----------------------------------------


@pytest.mark.parametrize(
    "address, environment, joined",
    [(None, None, "local"), (None, "10.0.0.1:6379", "10.0.0.1:6379"), ("auto", "x:1", "auto")],
)
def test_an_embedded_run_starts_a_private_ray_unless_told(monkeypatch, address, environment,
                                                          joined):  # fmt: skip
    """Never a bare ``ray.init()``: that joins whatever cluster another user started."""
    import ray

    from crysray import distributed

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    if environment is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", environment)
    assert distributed.start_ray(address) == joined and seen["address"] == joined


def test_help_says_the_run_is_private_without_an_address(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no words broken at hyphens
    with pytest.raises(SystemExit):
        commands.main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a private Ray instance of this run's own" in text and "$RAY_ADDRESS" in text


def test_a_ray_failure_is_one_line_naming_what_a_worker_raised():
    class ActorDiedError(Exception):
        pass

    message = ("The actor died because of an error raised in its creation task, \x1b[36mray::"
               "MapWorker\x1b[39m\nTraceback (most recent call last):\n  File \"x.py\"\n"
               "crysray.train.checkpoint.CheckpointError: m.pt was written for another model")
    line = ray_failure(ActorDiedError(message))
    assert line == "a Ray worker failed: CheckpointError: m.pt was written for another model"
    assert "\n" not in ray_failure(ActorDiedError("GCS unreachable\n" + "state dump\n" * 90))


def test_a_ray_that_will_not_start_is_one_line(monkeypatch, capsys):
    """A Ray that times out at start (an overloaded machine) raises builtin types: still one
    line, not a traceback."""
    import ray

    from crysray import distributed
    from crysray.command.common import finish

    def timeout(**kwargs):
        message = "The current node timed out during startup.\n" + "raylet log\n" * 50
        raise Exception(message)  # noqa: TRY002 - what Ray raises here

    monkeypatch.setattr(ray, "init", timeout)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = finish("mass_sample", lambda args: distributed.start_ray(), argparse.Namespace())
    err = capsys.readouterr().err.strip()
    assert code == 3 and "\n" not in err
    assert err.startswith("mass_sample: error: could not start a private Ray instance: "
                          "Exception: The current node timed out during startup.")  # fmt: skip


# ---- composition files ----------------------------------------------------------------------


def test_every_bad_line_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("SrTiO3\nXx2O3\nNaCl\nFe2O3 O2\nnot a formula!\nCa2 Ti2 O6\n")
    with pytest.raises(ValueError) as error:
        read_targets(bad)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{bad}: 3 bad lines (fix them, or skip them with " \
        "--skip-invalid-compositions):"  # fmt: skip
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [
        f"{bad}:2", f"{bad}:4", f"{bad}:5"]  # fmt: skip
    assert "'Fe2O3 O2' holds more than one formula" in lines[2]


def test_two_formulas_on_one_line_are_refused_one_cell_with_spaces_is_not():
    with pytest.raises(ValueError, match="more than one formula"):
        formula_atoms("Fe2O3 O2", "f.txt:1")
    assert formula_atoms("Ca2 Ti2 O6").tolist() == [20, 20, 22, 22, 8, 8, 8, 8, 8, 8]


def test_skipped_lines_are_named_in_the_summary_and_the_manifest(tiny_checkpoint, tmp_path):
    formulas = tmp_path / "f.txt"
    formulas.write_text("SrTiO3\nXx2O3\nNaCl\nFe2O3 O2\n")
    options = sample_options(checkpoint=tiny_checkpoint, compositions=formulas, steps=3,
                             skip_invalid_compositions=True)  # fmt: skip
    store = Storage(tmp_path / "run")
    plan = plan_campaign(options, store, read_checkpoint(tiny_checkpoint))
    assert plan.skipped == 2 and plan.spec.num_samples == 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    named = manifest["skipped_compositions"]
    assert named["count"] == 2 and [x.split(": ")[0] for x in named["lines"]] == [
        f"{formulas}:2", f"{formulas}:4"]  # fmt: skip
    summary = {"rows": 2, "unique_ids": 2, "valid_fraction": 1.0, "generated_now": 2,
               "wall_seconds": 1.0, "crystals_per_second": 2.0, "output": "o",
               "steady_crystals_per_second": float("nan"), "failed_units": {},
               "skipped_compositions": plan.skipped, "skipped_lines": plan.skipped_lines}
    text = "\n".join(summary_lines(summary))
    assert f"{formulas}:2: unknown element 'Xx'" in text and f"{formulas}:4: " in text


# ---- a relative --out inside `ray job submit --working-dir` ---------------------------------


def test_a_relative_out_inside_a_jobs_working_dir_is_refused(monkeypatch, tmp_path, capsys,
                                                             tiny_checkpoint):  # fmt: skip
    config = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))
    monkeypatch.chdir(tmp_path)
    assert commands.main(["sample", "--checkpoint", str(tiny_checkpoint), "--out", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crysray sample: error: --out out is relative, and this job runs in a "
                          "temporary copy") and "\n" not in err  # fmt: skip
    assert not (tmp_path / "out").exists()
    for command in (["funnel", "--run", "run"], ["report", "--run", "run"]):
        assert commands.main(command) == 2
        assert "is relative" in capsys.readouterr().err


# ---- help that helps ------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_option_of_every_command_states_its_default():
    top = commands.parser()
    parsers = dict(_subparsers(top))
    parsers.update({f"data {k}": v for k, v in _subparsers(parsers.pop("data")).items()})
    parsers.pop("eval")  # crysray.eval's own commands
    for name, parser in parsers.items():
        formatter = HelpFormatter(name)
        for action in parser._actions:
            if not action.option_strings or action.default == argparse.SUPPRESS:
                continue
            if action.required or isinstance(action, argparse._StoreTrueAction):
                continue
            text = formatter._get_help_string(action)
            assert "default" in text, f"crysray {name} {action.option_strings[0]}: {text}"


def test_checkpoint_is_explained(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        commands.main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model" in text and "--checkpoint" in text and "crysray-train --export" in text
    assert "perov5 (the shipped CrysBFN CSP model of Perov-5" in text and "mp (the shipped" in text


def test_an_unknown_config_lists_the_packaged_ones(tmp_path, capsys):
    from crysray.cli import train_main

    assert train_main(["--config", "nope", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crysray-train: error: ") and "\n" not in err
    assert "crysbfn_perov5" in err and "kldm_perov5" in err


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    cif = tmp_path / "model.cif"
    cif.write_text("data_NaCl\n_cell_length_a 5.6\n")
    assert commands.main(["sample", "--checkpoint", str(cif), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crysray sample: error: ") and "is not a crysray checkpoint" in err
    assert "\n" not in err and "weights_only" not in err


def test_data_mp_without_a_key_names_only_its_own_options(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.delenv("CRYSRAY_OFFLINE", raising=False)
    assert commands.main(["data", "mp", "--max-sites", "4", "--out", str(tmp_path / "d"),
                          "--cache-dir", str(tmp_path / "c")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "no Materials Project API key" in err and "--mp-api-key" in err
    assert "--hull" not in err and "\n" not in err


# ---- outputs open where people open them ----------------------------------------------------


def test_pandas_and_duckdb_read_the_funnel_folder_as_its_rows(tmp_path):
    from test_distributed_uniqueness import UNITS, write_run

    from crysray.filter.campaign import finalize_run, open_funnel, read_decisions
    from crysray.filter.config import FunnelConfig

    store = write_run(tmp_path / "run")
    open_funnel(store, FunnelConfig(hull="local"), {"name": "local"})
    finalize_run(store)
    rows = sum(len(v) for v in UNITS.values())
    for folder in ("data", "funnel"):
        frame = pd.read_parquet(tmp_path / "run" / folder)
        assert len(frame) == rows and frame["sample_id"].nunique() == rows
    duckdb = pytest.importorskip("duckdb")
    query = f"select count(*) from read_parquet('{tmp_path / 'run' / 'funnel'}/*.parquet')"
    assert duckdb.sql(query).fetchall()[0][0] == rows
    assert read_decisions(store).num_rows == rows
    assert (tmp_path / "run" / "funnel" / "_summary.json").is_file()


def test_a_run_filtered_before_the_underscore_names_still_reads_and_resumes(tmp_path):
    from test_distributed_uniqueness import write_run

    from crysray.filter.campaign import finalize_run, open_funnel, read_decisions
    from crysray.filter.config import FunnelConfig

    store = write_run(tmp_path / "run")
    config = FunnelConfig(hull="local")
    store.write_text("funnel/manifest.json", json.dumps({"config": config.as_dict(), "hull": {}}))
    finalize_run(store)
    decided = read_decisions(store)
    funnel = tmp_path / "run" / "funnel"
    (funnel / "unique").mkdir()
    for shard in (funnel / "_unique").iterdir():
        shard.rename(funnel / "unique" / shard.name)
    assert read_decisions(store).num_rows == decided.num_rows
    open_funnel(store, config, {})  # the legacy manifest is found: same settings resume
    with pytest.raises(ValueError, match="other funnel settings"):
        open_funnel(store, FunnelConfig(hull="local", fmax=0.1), {})


# ---- rates and progress ---------------------------------------------------------------------


def test_ray_output_goes_to_the_log_unless_verbose(tmp_path, capfd):
    from crysray.console import quiet_stderr

    log = tmp_path / "logs" / "sample.log"
    with quiet_stderr(log) as terminal:
        os.write(2, b"(raylet) a state dump\n")  # what Ray and its C++ core write
        terminal.write("sampled  1/2 crystals\n")
    err = capfd.readouterr().err
    assert "sampled  1/2 crystals" in err and "state dump" not in err
    assert "state dump" in log.read_text()
    with quiet_stderr(log, verbose=True):
        os.write(2, b"(raylet) shown with --verbose\n")
    assert "shown with --verbose" in capfd.readouterr().err


def test_the_steady_rate_needs_units_and_time():
    assert np.isnan(steady_rate([(0.0, 1024), (0.016, 1024)]))  # not 59,559 crystals/s
    assert np.isnan(steady_rate([(0.0, 10)] + [(0.001 * i, 10) for i in range(1, 10)]))
    assert steady_rate([(float(i), 100) for i in range(5)]) == pytest.approx(100.0)


def test_progress_shows_done_total_rate_and_eta(monkeypatch):
    import io

    clock = iter([0.0, 10.0, 10.0, 10.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = Progress("sampled", 1000, initial=100, stream=stream, every=0.0)
    progress.update_to(300, "2/9 units")
    assert stream.getvalue().strip() == "sampled  300/1000 crystals  30%  20.0/s  ETA 0:00:35  " \
        "2/9 units"  # fmt: skip


def test_a_replica_reports_every_batch(tiny_checkpoint, tmp_path):
    from crysray.sample.campaign import CampaignWorker

    options = sample_options(checkpoint=tiny_checkpoint, num_samples=7, unit_size=7,
                             batch_size=3, steps=2)  # fmt: skip
    store = Storage(tmp_path / "run")
    plan = plan_campaign(options, store, read_checkpoint(tiny_checkpoint))

    class Counter:
        def __init__(self):
            self.batches = []

        def add(self, n):
            self.batches.append(n)

    counter = Counter()
    worker = CampaignWorker(str(tiny_checkpoint), store.location, plan.spec.__dict__,
                            plan.targets, threads=1, session="s1", progress=counter)  # fmt: skip
    worker({"unit": np.array([0])})
    assert counter.batches == [3, 3, 1]


def test_one_sizing_rule_for_every_pool():
    assert actor_resources({"CPU": 2.0}, 1) == ActorResources(1.5, 0.0, 2)
    assert actor_resources({"CPU": 2.0}, 2) == ActorResources(0.75, 0.0, 1)
    assert actor_resources({"CPU": 64.0, "GPU": 8.0}, 8) == ActorResources(1.0, 1.0, None)
    assert actor_resources({"CPU": 8.0, "GPU": 1.0}, 2, gpus=0.5) == ActorResources(1, 0.5, None)
    assert actor_resources({"CPU": 8.0}, 2, cpus=3, threads=2) == ActorResources(3.0, 0.0, 2)


def test_interrupted_attempts_are_taken_back_others_are_kept(tmp_path):
    from crysray.sample.campaign import attempts_key, forget_interrupted_attempts

    store = Storage(tmp_path)
    records = {0: {"attempts": 1, "error": "died", "in_flight": "s1", "before": None},
               1: {"attempts": 2, "error": "died", "in_flight": "s1", "before": "OOM"},
               2: {"attempts": 1, "error": "died", "in_flight": "old", "before": None},
               3: {"attempts": 1, "error": "ValueError: x"}}  # fmt: skip
    for unit, record in records.items():
        store.write_text(attempts_key(unit), json.dumps(record))
    assert forget_interrupted_attempts(store, "s1") == 2
    assert not store.exists(attempts_key(0))
    assert json.loads(store.read_text(attempts_key(1))) == {"attempts": 1, "error": "OOM"}
    for unit in (2, 3):
        assert json.loads(store.read_text(attempts_key(unit))) == records[unit]


def test_jobs_are_thin_and_never_edit_sys_path():
    jobs = REPO / "jobs"
    texts = [p.read_text() for p in jobs.glob("*.py")]
    assert sum(len(t.splitlines()) for t in texts) <= 400
    assert not any("sys.path" in t for t in texts)


def test_training_progress_has_a_total_and_an_eta():
    from support import tiny_config

    from crysray.train.loop import _eta

    config = tiny_config().replace("train", max_steps=1000, max_minutes=0)
    assert _eta(config, {"step": 250, "elapsed": 10.0}) == "0:30"
    assert _eta(config, {"step": 0, "elapsed": 0.0}) == "--:--"
    by_time = config.replace("train", max_minutes=60)  # the minutes run out first
    assert _eta(by_time, {"step": 10, "elapsed": 45.0}) == "0:15"


def test_compositions_outside_the_training_domain_are_counted_not_refused(tiny_checkpoint,
                                                                          tmp_path):  # fmt: skip
    """The tiny model is a Perov-5 CSP model: GaN and NaCl get an answer and a warning."""
    formulas = tmp_path / "f.txt"
    formulas.write_text("SrTiO3\nGaN\nNaCl\nBaTiO3\n")
    options = sample_options(checkpoint=tiny_checkpoint, compositions=formulas, steps=3)
    plan = plan_campaign(options, Storage(tmp_path / "run"), read_checkpoint(tiny_checkpoint))
    assert plan.spec.num_samples == 4 and plan.skipped == 0
    ood = json.loads((tmp_path / "run" / "manifest.json").read_text())["out_of_domain"]
    assert ood == plan.out_of_domain and ood["domain"] == "perov_5" and ood["count"] == 2
    assert ood["reasons"] == {NOT_PEROVSKITE: 2, UNSEEN_ELEMENTS: 1}  # NaCl: Cl never seen
    assert [line.split(" (")[0] for line in ood["named"]] == ["GaN", "NaCl"]
    summary = {"rows": 4, "unique_ids": 4, "valid_fraction": 1.0, "generated_now": 4,
               "wall_seconds": 1.0, "crystals_per_second": 4.0, "output": "o",
               "steady_crystals_per_second": float("nan"), "failed_units": {},
               "skipped_compositions": 0, "skipped_lines": [], "out_of_domain": ood}
    text = "\n".join(summary_lines(summary))
    assert "WARNING           2 compositions outside the model's training domain (perov_5)" in text


def test_model_names_pick_the_shipped_checkpoints():
    from crysray.command.sample import resolve_model

    assert resolve_model("perov5") == REPO / "checkpoints" / "crysbfn_perov5.pt"
    mp = resolve_model("mp")
    assert mp == REPO / "checkpoints" / "crysbfn_mp20_csp.pt" and mp.is_file()
    assert resolve_model("my/model.pt") == Path("my/model.pt")
    domain = checkpoint_domain(read_checkpoint(mp))  # stored in the shipped file
    assert "domain" in read_checkpoint(mp) and domain.max_atoms == 20
    assert domain.reasons(formula_atoms("LiFePO4")) == []
    assert [r for r, _ in domain.reasons(formula_atoms("Li8Fe8P8O32"))] == [LARGER_CELL]
