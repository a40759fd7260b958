"""A sampling campaign planned before Ray starts: checks, targets, manifest, hull, summary.

Everything here runs on the driver without Ray, so bad input fails fast with one line and
nothing is written. ``options`` is the parsed command line of ``crysray sample`` (any object
with those attributes, named as the options are: ``options.num_samples`` is
``--num-samples``).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from crysray.sample.campaign import CampaignSpec

# enough tasks per replica that the last ones end close together (short tail), few enough
# that the driver's per-task cost stays small next to the replicas' work
TASKS_PER_REPLICA = 8
# a steady rate needs this many finished units after the first, over at least this long:
# two units landing 16 ms apart would otherwise claim tens of thousands of crystals/s
STEADY_MIN_UNITS = 3
STEADY_MIN_SECONDS = 2.0
POSITIVE_OPTIONS = ("num_samples", "steps", "batch_size", "unit_size", "replicas",
                    "units_per_task", "max_atoms", "num_atoms")  # fmt: skip


@dataclass
class CampaignPlan:
    """What the Ray pipeline needs: the manifest, the targets and the units still to do."""

    spec: CampaignSpec
    targets: object  # crysray.sample.targets.Targets
    todo: list[int]
    skipped: int = 0  # compositions skipped (--skip-invalid-compositions)
    skipped_lines: list[str] = field(default_factory=list)
    out_of_domain: dict = field(default_factory=dict)  # crysray.data.domain.OutOfDomain


def validate(options) -> None:
    for name in POSITIVE_OPTIONS:
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def sampler_record(options, model_config: dict) -> tuple[int, dict]:
    """Steps and the complete sampler options, completed and checked by the checkpoint's
    method (the caller does not know which method it runs)."""
    from crysray.methods.registry import config_from_dict, method_class
    from crysray.sample.sampler import sampler_options_from_args

    method = method_class(config_from_dict(model_config))
    return options.steps or method.default_steps, method.sampler_options(
        **sampler_options_from_args(options)
    )


def plan_campaign(options, store, checkpoint: dict, funnel_config=None) -> CampaignPlan:
    """Check everything, then create or resume the run in ``store``; the units to do.

    A composition file is checked and converted on local scratch space first; it joins the
    run (compositions.parquet) only once the run directory is accepted. With the funnel, its
    hull is prepared for the compositions' chemical systems before the run directory is
    created, so a missing key or cache leaves nothing behind. CSP compositions outside the
    checkpoint's training domain (a ``read_checkpoint`` payload) are counted, not refused.
    """
    from crysray.sample.campaign import open_run, record_manifest_section
    from crysray.sample.composition_store import publish

    model_config = checkpoint["config"]
    task = options.task or model_config["method"]["task"]
    if model_config["method"]["task"] != task:
        raise ValueError(
            f"{options.checkpoint} is a {model_config['method']['task']} model, not {task}"
        )
    with tempfile.TemporaryDirectory(prefix="crysray-compositions-") as scratch:
        ood = {}
        if task == "dng":
            targets, skipped, lines = dng_targets(options, model_config), 0, []
        else:
            targets, skipped, lines = csp_targets(options, model_config, scratch)
            ood = domain_check(checkpoint, targets)
        spec = campaign_spec(options, model_config, task, targets)
        hull = prepare_funnel_hull(options, funnel_config, task, targets)
        todo = open_run(store, spec)
        skipped_section = {"count": skipped, "lines": lines} if skipped else None
        record_manifest_section(store, "skipped_compositions", skipped_section)
        known_or_not = ood.get("count") or ood.get("unknown")
        record_manifest_section(store, "out_of_domain", ood if known_or_not else None)
        if task == "csp":
            targets = publish(targets, store)
    if funnel_config is not None:
        from crysray.filter.campaign import open_funnel, pending_funnel_units

        open_funnel(store, funnel_config, hull)
        todo = sorted(set(todo) | set(pending_funnel_units(store)))
    return CampaignPlan(spec, targets, todo, skipped, lines, ood)


def domain_check(checkpoint: dict, targets) -> dict:
    """Compositions outside the checkpoint's training domain (``OutOfDomain.to_dict``), or
    ``{"unknown": why}`` when the domain cannot be known (a checkpoint without a stored domain
    whose training split is unavailable): the summary and manifest then say so instead of
    staying silent."""
    from crysray.data.domain import checkpoint_domain, out_of_domain
    from crysray.resources import ResourceError

    try:
        domain = checkpoint_domain(checkpoint)
    except ResourceError as err:
        return {"unknown": f"training domain unknown ({err})"}
    found = out_of_domain(targets.known_compositions(), domain)
    return {"domain": domain.dataset, **found.to_dict()}


def campaign_spec(options, model_config: dict, task: str, targets) -> CampaignSpec:
    from crysray.train.checkpoint import checkpoint_hash

    steps, sampler_options = sampler_record(options, model_config)
    return CampaignSpec(
        task=task,
        checkpoint_hash=checkpoint_hash(options.checkpoint),
        compositions_digest=targets.digest(),
        num_samples=options.num_samples or targets.count,
        steps=steps,
        seed=options.seed,
        unit_size=options.unit_size,
        batch_size=options.batch_size,
        precision=options.precision,
        dataset=model_config["data"]["dataset"],
        targets=targets.kind,
        sampler_options=sampler_options,
    )


def prepare_funnel_hull(options, funnel_config, task: str, targets):
    """The funnel's hull for the compositions' chemical systems (None without the funnel).

    Holds one reduced formula per distinct composition: for lists of tens of millions of
    distinct formulas, prefer --hull local or the funnel after sampling.
    """
    if funnel_config is None:
        return None
    from crysray.filter.composition import composition_of
    from crysray.filter.hulls import prepare_hull

    if task == "dng" and funnel_config.hull == "mp":
        raise ValueError(
            "--funnel --hull mp needs the chemical systems before sampling, which DNG does not "
            "know; use --hull local, or run the funnel (crysray funnel) on the finished run"
        )
    formulas = {
        composition_of(c.atomic_numbers).reduced_formula for c in targets.known_compositions()
    }
    return prepare_hull(funnel_config, formulas, options.mp_api_key)


def csp_targets(options, model_config: dict, scratch: str):
    """(targets, skipped count, skipped lines): the checked composition list, converted to
    Parquet in ``scratch`` (streamed: any size)."""
    from crysray.data.csv import dataset_path
    from crysray.sample.composition_store import STORE_KEY, StoredCompositions, convert_compositions
    from crysray.sample.compositions import DEFAULT_MAX_ATOMS, CompositionLimits

    if options.num_atoms:
        raise ValueError("--num-atoms is for --task dng; CSP cells follow --compositions")
    limits = CompositionLimits(
        options.max_atoms or DEFAULT_MAX_ATOMS, model_config["net"]["max_atomic_number"]
    )
    converted = convert_compositions(
        options.compositions or dataset_path(model_config["data"]["dataset"], "test"),
        Path(scratch) / STORE_KEY,
        limits,
        options.skip_invalid_compositions,
    )
    targets = StoredCompositions(scratch, converted.count, converted.digest)
    return targets, sum(converted.skipped.values()), converted.skipped_lines


def dng_targets(options, model_config: dict):
    """Atom counts from --num-atoms or the training split's distribution in the checkpoint."""
    from crysray.sample.compositions import DEFAULT_MAX_ATOMS
    from crysray.sample.targets import AtomCountTargets

    if options.compositions or options.skip_invalid_compositions:
        raise ValueError("--compositions is for --task csp; a dng model generates compositions")
    if not options.num_samples:
        raise ValueError("--task dng needs --num-samples")
    max_atoms = options.max_atoms or DEFAULT_MAX_ATOMS
    if options.num_atoms:
        if options.num_atoms > max_atoms:
            raise ValueError(f"--num-atoms {options.num_atoms} is above --max-atoms {max_atoms}")
        return AtomCountTargets.fixed(options.num_atoms)
    counts = list(model_config["data"]["num_atoms_counts"])
    if len(counts) - 1 > max_atoms:  # cells above the limit are not drawn
        counts = counts[: max_atoms + 1]
    return AtomCountTargets(tuple(counts))


def num_tasks(units: int, replicas: int, units_per_task: int | None = None) -> int:
    """Ray tasks the units are spread over. The driver's CPU cost is per task, not per unit,
    so thousands of units go in a few tasks per replica; a task that dies is redone, and its
    units that were already written are skipped, so larger tasks cost nothing on retry."""
    per_task = units_per_task or max(1, units // (replicas * TASKS_PER_REPLICA))
    return -(-units // per_task)


def steady_rate(arrivals: list[tuple[float, int]]) -> float:
    """Crystals/s between the first and the last finished unit; NaN unless at least
    STEADY_MIN_UNITS units landed after the first, over at least STEADY_MIN_SECONDS (a rate
    over a few milliseconds is noise, not throughput)."""
    if len(arrivals) < STEADY_MIN_UNITS + 1:
        return float("nan")
    span = arrivals[-1][0] - arrivals[0][0]
    if span < STEADY_MIN_SECONDS:
        return float("nan")
    return sum(rows for _, rows in arrivals[1:]) / span


def rows_to_do(spec: CampaignSpec, todo: list[int]) -> int:
    return sum(spec.unit_range(u)[1] - spec.unit_range(u)[0] for u in todo)


def summarize(store, plan: CampaignPlan, seconds: float) -> dict:
    """Counts of the finished dataset and of what this invocation generated."""
    import pyarrow.compute as pc

    from crysray.sample.campaign import finished_units, unit_key
    from crysray.sample.schema import SCHEMA

    finished = finished_units(store)
    table = store.dataset([unit_key(u) for u in finished], schema=SCHEMA).to_table(
        columns=["sample_id", "valid_structure"]
    )
    generated = rows_to_do(plan.spec, sorted(set(plan.todo) & set(finished)))
    return {
        "rows": table.num_rows,
        "unique_ids": pc.count_distinct(table.column("sample_id")).as_py(),
        "valid_fraction": pc.mean(table.column("valid_structure").cast("float64")).as_py(),
        "generated_now": generated,
        "crystals_per_second": generated / seconds if seconds > 0 else float("nan"),
        "wall_seconds": seconds,
        "output": store.display("data"),
        "skipped_compositions": plan.skipped,
        "skipped_lines": plan.skipped_lines,
        "out_of_domain": plan.out_of_domain,
    }


def summary_lines(summary: dict) -> list[str]:
    """The human summary printed at the end of a sampling run."""
    steady = summary["steady_crystals_per_second"]
    steady = "too few units for a steady rate" if math.isnan(steady) else (
        f"{steady:.1f} after the first unit"
    )  # fmt: skip
    lines = [
        "== crysray mass sampling ==",
        f"rows in dataset   {summary['rows']} ({summary['unique_ids']} unique sample_ids)",
        f"valid structures  {(summary['valid_fraction'] or 0):.1%}",
        (
            f"generated now     {summary['generated_now']} in {summary['wall_seconds']:.1f} s "
            f"({summary['crystals_per_second']:.1f} crystals/s end to end, {steady})"
        ),
        f"output            {summary['output']}",
    ]
    if summary["skipped_compositions"]:
        lines.append(f"skipped           {summary['skipped_compositions']} invalid compositions "
                     "(named in manifest.json):")  # fmt: skip
        lines += [f"  {line}" for line in summary["skipped_lines"][:10]]
        if summary["skipped_compositions"] > 10:
            lines.append(f"  ... {summary['skipped_compositions'] - 10} more")
    ood = summary.get("out_of_domain") or {}
    if ood.get("count"):
        reasons = ", ".join(f"{n} {r}" for r, n in ood["reasons"].items())
        lines.append(f"WARNING           {ood['count']} compositions outside the model's training "
                     f"domain ({ood['domain']}): {reasons}; named in manifest.json")  # fmt: skip
        lines += [f"  {line}" for line in ood["named"][:10]]
    elif ood.get("unknown"):
        lines.append(f"WARNING           {ood['unknown']}")
    for unit, error in summary["failed_units"].items():
        lines.append(f"FAILED unit {unit}  {error} (recorded in manifest.json)")
    return lines
