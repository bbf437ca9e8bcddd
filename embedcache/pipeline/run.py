"""Plan and run a pipeline: extract, probe, fit, evaluate for every encoder and dataset, then the report.

:func:`plan` turns a :class:`~embedcache.pipeline.spec.Pipeline` into
:class:`~embedcache.pipeline.steps.Step` objects keyed by content (no work
is done, beyond fingerprinting datasets: memoised by file sizes and
times). :func:`execute` runs the steps in order, skipping those already
done, then rebuilds the report when anything it shows has changed.

Keys. A dataset is its content fingerprint (or, when the pipeline makes
synthetic tiles, their settings). An extraction is the dataset, the
encoder's spec and weights (a local file by its SHA-256), and the
settings that change the store (not batch size, device or loader
workers). Probes and fits add their settings to the store's key (not
workers, preload or device); an evaluation adds protocol and
magnification to the fit's. Adding an encoder adds only its own steps;
another decoder setting re-trains without re-extracting. Seeds vary the
training, not the held-out images (``FitConfig.split_seed``, see
:meth:`~embedcache.pipeline.spec.Pipeline.fit_config`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from embedcache.claims import Claims, claims_place
from embedcache.errors import ConfigError, EmbedcacheError, PipelineError, WeightsError
from embedcache.pipeline.spec import DatasetSpec, EncoderEntry, Pipeline, describe
from embedcache.files import write_json
from embedcache.pipeline.steps import Step, content_key

STEP_KINDS = ("data", "extract", "probe", "cells", "cellprobe", "fit", "evaluate", "report")
RUNTIME_EXTRACT = ("batch_size", "device", "loader_workers")  # change how fast, not what is stored
RUNTIME_FIT = ("loader_workers", "preload", "device")
FINGERPRINTS = "fingerprints.json"


@dataclass
class Cell:
    """The steps of one encoder on one dataset."""

    dataset: str
    encoder: str
    extract: Step
    probes: list[Step] = field(default_factory=list)
    fits: dict[int, Step] = field(default_factory=dict)
    evals: dict[int, Step] = field(default_factory=dict)
    nuclei: Step | None = None  # the per-nucleus vectors (cell store), when the dataset has cells


@dataclass
class Plan:
    """Every step of a pipeline, in the order they run."""

    pipeline: Pipeline
    steps: list[Step]
    cells: list[Cell]
    failed: dict[str, str] = field(default_factory=dict)  # encoder name -> reason
    cell_probes: dict[str, Step] = field(default_factory=dict)  # dataset -> the cell probe over its encoders

    def report_key(self) -> str:
        """The report's inputs: its settings, the failures, and the steps finished so far (what it shows)."""
        done = lambda s: s.key if s.done else None  # noqa: E731
        return content_key({
            "pipeline": describe(self.pipeline)["report"],
            "cells": [{"dataset": c.dataset, "encoder": c.encoder, "extract": done(c.extract),
                       "probes": [done(s) for s in c.probes], "fits": {str(k): done(s) for k, s in c.fits.items()},
                       "evals": {str(k): done(s) for k, s in c.evals.items()}} for c in self.cells],
            "failed": self.failed,
            # keyed only when there are cell probes, so reports made before cells existed stay current
            **({"cell_probes": {ds: done(s) for ds, s in self.cell_probes.items()}} if self.cell_probes else {}),
        })


# ----------------------------------------------------------------------------- datasets


def _file_stats(path: Path) -> list:
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            st = (Path(root) / name).stat()
            out.append([str((Path(root) / name).relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def dataset_fingerprint(path: Path, options: dict, memo_file: Path | None = None) -> str:
    """The dataset's content fingerprint, memoised by its files' sizes and modification times.

    The memo (``OUT/fingerprints.json``) spares re-reading gigabytes when a
    finished pipeline runs again; any file changed, added or removed
    misses it and the content is hashed again.
    """
    from embedcache.datasets import open_dataset

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such dataset file or folder")
    memo_key = content_key({"path": str(path.resolve()), "options": options, "files": _file_stats(path)})
    memo = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
    if memo_key in memo:
        return memo[memo_key]
    fingerprint = open_dataset(path, **options).fingerprint()
    if memo_file is not None:
        memo[memo_key] = fingerprint
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(memo_file, memo)
    return fingerprint


def _weights_identity(weights: str | None) -> str | None:
    """A local weights file by content; ``random``, None or a hub/package source as written."""
    if weights and weights != "random":
        from embedcache.encoders.load import sha256_file

        p = Path(weights)
        if not p.is_file():
            raise ConfigError(f"weights file {weights} does not exist")
        return f"sha256:{sha256_file(p)}"
    return weights


# ----------------------------------------------------------------------------- planning


def plan(pipeline: Pipeline, *, progress: bool = True, workers: int = 0, scheduler: str | None = None) -> Plan:
    """The steps of ``pipeline`` with their keys; nothing runs.

    An encoder that cannot be planned (unknown name, missing weights file)
    stops planning, or with ``on_error: skip`` is left out with the reason.
    """
    root = pipeline.out
    steps: list[Step] = []
    cells: list[Cell] = []
    failed: dict[str, str] = {}
    cell_probes: dict[str, Step] = {}
    for ds in pipeline.datasets:
        data_step, data_key, data_path = _data_step(pipeline, ds, root)
        if data_step is not None:
            steps.append(data_step)
        for enc in pipeline.encoders:
            if enc.name in failed:
                continue
            try:
                cell = _cell(pipeline, ds, enc, root, data_key, data_path, data_step, progress, workers, scheduler)
            except EmbedcacheError as exc:
                if pipeline.on_error != "skip":
                    where = f"{enc.where}: " if enc.where else ""
                    raise PipelineError(f"{where}encoder {enc.name}: {exc}", exc.exit_code) from exc
                failed[enc.name] = str(exc)
                continue
            cells.append(cell)
            steps += [cell.extract, *cell.probes] + ([cell.nuclei] if cell.nuclei else [])
            for seed in pipeline.seeds:
                steps += [cell.fits[seed], cell.evals[seed]]
        probe = _cell_probe_step(pipeline, ds, [c for c in cells if c.dataset == ds.name and c.nuclei], root)
        if probe is not None:
            cell_probes[ds.name] = probe
            steps.append(probe)
    return Plan(pipeline, steps, cells, failed, cell_probes)


def _data_step(pipeline: Pipeline, ds: DatasetSpec, root: Path):
    if ds.synthetic is not None:
        params = dict(ds.synthetic)

        def make(d: Path) -> dict:
            from embedcache.datasets.synthetic import write_demo_data

            folds = write_demo_data(d / "data", n_tiles=params["tiles"], seed=params["seed"],
                                    folds=params["folds"], size=params["size"])
            return {"folds": [str(f) for f in folds], "tiles": params["tiles"]}

        step = Step("data", f"make synthetic tiles for {ds.name}", {"synthetic": params}, make, root,
                    group=f"dataset:{ds.name}")
        return step, step.key, step.dir / "data"
    path = Path(ds.path)
    if not path.exists():
        raise ConfigError(f"{pipeline.source}: datasets.{ds.name}: {path} does not exist (paths are relative to "
                          f"the directory the command runs in)")
    return None, None, path


def _cell(pipeline: Pipeline, ds: DatasetSpec, enc: EncoderEntry, root: Path, data_key, data_path: Path,
          data_step, progress: bool, workers: int, scheduler) -> Cell:
    from embedcache.encoders.registry import get_spec

    xcfg = pipeline.extract_config(ds, enc)
    spec = get_spec(xcfg.encoder)
    options = {"format": xcfg.format, **xcfg.dataset_options()}
    if data_key is None:
        data_key = dataset_fingerprint(data_path, options, root / FINGERPRINTS)
    stored = {k: v for k, v in xcfg.to_dict().items() if k not in RUNTIME_EXTRACT}
    stored["weights"] = _weights_identity(xcfg.weights)
    extract_inputs = {"dataset": data_key, "dataset_options": options, "encoder_spec": spec.to_dict(),
                      "extract": stored}
    label = f"{enc.name} on {ds.name}"

    def do_extract(d: Path) -> dict:
        from embedcache.store import open_store

        from embedcache.extract import extract

        out = d / "store.zarr"
        r = extract(data_path, out, xcfg, workers=workers, scheduler=scheduler, progress=progress)
        summary = open_store(out).summary()
        return {"store": str(out), "n_tiles": r.n_tiles, "n_variants": r.n_variants, "layers": list(r.layers),
                "seconds": r.seconds, "tiles_per_second": r.tiles_per_second, "bytes": summary["bytes"],
                "unit_ms_per_tile_variant": [1000 * u["compute_s"] / max(1, u["tiles"] * r.n_variants)
                                             for u in r.units if "compute_s" in u],
                "encoder": xcfg.encoder, "weights": xcfg.weights or spec.weights}

    extract_step = Step("extract", f"extract {label}", extract_inputs, do_extract, root,
                        deps=[data_step] if data_step else [], group=enc.name)
    if not extract_step.done:
        # Before any step runs: a gated or unreachable model fails now, not hours into the study.
        from embedcache.encoders.load import weights_status

        status = weights_status(spec, xcfg.weights)
        if not status.ok:
            raise WeightsError(f"weights cannot be had here: {status.line}")
    store_path = extract_step.dir / "store.zarr"
    cell = Cell(ds.name, enc.name, extract_step)

    for pcfg in pipeline.probe_configs(ds):
        def do_probe(d: Path, pcfg=pcfg) -> dict:
            from embedcache.report.stats import score_predictions
            from embedcache.probes import run_probes

            preds, info = run_probes([store_path], pcfg)
            table = score_predictions(preds, n_boot=pcfg.n_boot, seed=pcfg.seed, info=info)
            table.write_json(d / "probe.json")
            return {"best": table.to_dict()["best"]}

        cell.probes.append(Step("probe", f"probe {pcfg.labels} ({pcfg.level}) {label}",
                                {"store": extract_step.key, "probe": pcfg.to_dict(), **_probe_files(pcfg)}, do_probe,
                                root,
                                deps=[extract_step], group=enc.name))

    cells_cfg = pipeline.cells_configs(ds)
    if cells_cfg is not None:
        ccfg = cells_cfg[0]
        nuclei = ccfg.nuclei if ccfg.nuclei == "store" else _file_identity(ccfg.nuclei, "cells nuclei")

        def do_cells(d: Path, ccfg=ccfg) -> dict:
            from embedcache.cells import build_cells

            r = build_cells(store_path, d / "cells.zarr", ccfg, overwrite=False, progress=progress)
            return {"cells": str(r.path), "n_cells": r.n_cells, "types": r.types, "seconds": r.seconds}

        cell.nuclei = Step("cells", f"pool nuclei {label}", {"store": extract_step.key, "cells": ccfg.to_dict(),
                                                             "nuclei": nuclei}, do_cells, root,
                           deps=[extract_step], group=enc.name)

    for seed in pipeline.seeds:
        fcfg = pipeline.fit_config(ds, seed)
        fit_inputs = {"store": extract_step.key,
                      "fit": {k: v for k, v in fcfg.to_dict().items() if k not in RUNTIME_FIT}}
        groups = fcfg.val.partition(",groups=")[2]
        if groups and groups != "tissue":  # the groups file by content, so editing it draws the held-out images again
            fit_inputs["groups"] = _file_identity(groups, "fit val groups file")

        def do_fit(d: Path, fcfg=fcfg) -> dict:
            from embedcache.config import PostprocessConfig
            from embedcache.infer.evaluate import pq_scorer
            from embedcache.infer.plan import check_fit_plan
            from embedcache.train.loop import fit

            scorer = None
            if fcfg.monitor == "pq":
                post = PostprocessConfig.for_magnification(ds.magnification)
                scorer = pq_scorer(fcfg.targets.directions, post, fcfg.batch_size)
            check_fit_plan(store_path, d / "run", fcfg, tune=ds.tune, tta=ds.tta)  # before the first epoch
            r = fit(store_path, d / "run", fcfg, progress=progress, scorer=scorer)
            return {"run": str(r.path), "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
                    "best_value": r.best_value, "monitor": r.monitor, "stopped_early": r.stopped_early,
                    "seconds": r.seconds}

        fit_step = Step("fit", f"fit decoder {label} (seed {seed})", fit_inputs, do_fit, root,
                        deps=[extract_step], group=enc.name)
        run_dir = fit_step.dir / "run"

        def do_evaluate(d: Path, run_dir=run_dir) -> dict:
            return evaluate_on_store(run_dir, store_path, d, ds.protocol, ds.magnification, ds.tta, progress,
                                     tune=ds.tune)

        eval_step = Step("evaluate", f"evaluate {label} (seed {seed})",
                         {"run": fit_step.key, "store": extract_step.key, "protocol": ds.protocol,
                          "magnification": ds.magnification,
                          # keyed only when asked for, so evaluations made before TTA existed stay done
                          **({"tta": ds.tta} if ds.tta != "none" else {}),
                          **({"tune": ds.tune} if ds.tune else {})},
                         do_evaluate, root, deps=[fit_step], group=enc.name)
        cell.fits[seed], cell.evals[seed] = fit_step, eval_step
    return cell


def _file_identity(path: str, what: str) -> str:
    """A file or folder named in the pipeline, by content (so editing it re-runs what reads it)."""
    from embedcache.cells.nuclei import content_fingerprint

    if not Path(path).exists():
        raise ConfigError(f"{what} {path} does not exist (paths are relative to the directory the command runs in)")
    return f"sha256:{content_fingerprint(Path(path))}"


def _probe_files(pcfg) -> dict:
    """The files a probe reads (a labels CSV, a groups CSV) by content, so editing them runs it again; keyed
    only when given, so the keys of probes without them stay as they were."""
    out = {}
    if pcfg.labels.endswith(".csv"):
        out["labels_file"] = _file_identity(pcfg.labels, "probe labels file")
    if pcfg.groups:
        out["groups_file"] = _file_identity(pcfg.groups, "probe groups file")
    return out


def _cell_probe_step(pipeline: Pipeline, ds: DatasetSpec, cells: list[Cell], root: Path) -> Step | None:
    """One cell probe over every encoder's cell store of ``ds`` (the same nuclei, folds and resamples)."""
    if not cells or pipeline.cells_configs(ds) is None:
        return None
    pcfg = pipeline.cells_configs(ds)[1]
    names = [c.encoder for c in cells]
    paths = [c.nuclei.dir / "cells.zarr" for c in cells]

    def do_cell_probe(d: Path) -> dict:
        from embedcache.probes.cell import run_cell_probes
        from embedcache.report.cells import score_cell_probes

        result = run_cell_probes(paths, pcfg, names=names)
        report = score_cell_probes(result, n_boot=pcfg.n_boot, seed=pcfg.seed)
        _, warnings = report.write(d)
        return {"best": report.best(), "stores": {n: str(p) for n, p in zip(names, paths)},
                **({"warnings": warnings} if warnings else {})}

    return Step("cellprobe", f"cell probe of types on {ds.name} ({', '.join(names)})",
                {"cells": [c.nuclei.key for c in cells], "encoders": names, "probe": pcfg.to_dict(),
                 **_probe_files(pcfg)},
                do_cell_probe, root, deps=[c.nuclei for c in cells], group=f"dataset:{ds.name}")


def evaluate_on_store(run_dir: Path, store_path: Path, out: Path, protocol: str = "auto",
                      magnification: str = "40x", tta: str = "none", progress: bool = True,
                      tune: str | None = None) -> dict:
    """Score a run's held-out tiles from the cache (:func:`embedcache.infer.evaluate.evaluate_run`).

    With ``tune`` (a split apart from training and validation) post-processing is first tuned there
    (:func:`embedcache.infer.tune.tune_postprocess`, on the maps of the same ``tta``, recorded in
    ``out/postprocess.json``, the fit step's run left as it is). Writes ``out/eval.json`` and the
    predictions the report shows to ``out/pred``; returns what the step records.
    """
    from embedcache.infer.evaluate import evaluate_run

    if tune:
        from embedcache.infer.tune import tune_postprocess

        tune_postprocess(run_dir, tune, store=store_path, magnification=magnification, out=out, tta=tta)
    result = evaluate_run(run_dir, store_path, out=out, predictions=out / "pred", protocol=protocol,
                          magnification=magnification, tuned=out if tune else None, tta=tta, progress=progress)
    data = result.to_dict()
    headline = {k: v for k, v in data.items() if isinstance(v, (int, float)) and k != "n_images"}
    n_nuclei = sum(int(r.get("n_pred", 0)) for r in result.rows) if result.rows else 0
    return {"protocol": result.protocol, "n_images": len(result.rows), "n_nuclei": n_nuclei, "summary": headline}


# ----------------------------------------------------------------------------- running


@dataclass
class RunOutcome:
    """What :func:`execute` did."""

    ran: list[str]
    reused: list[str]
    skipped: list[str]
    failed: dict[str, str]
    report: Path | None
    report_reused: bool


def execute(p: Plan, *, only: tuple[str, ...] = (), progress: bool = True,
            echo: Callable[[str], None] = print) -> RunOutcome:
    """Run every step not yet done, in order; then (re)build the report when its inputs changed.

    Parameters
    ----------
    p : Plan
    only : tuple of str
        Step kinds to run (``extract``, ``fit``, ...); others are reused when
        done and left alone otherwise. Empty: all.
    echo : callable
        Where one line per step goes.
    """
    unknown = [k for k in only if k not in STEP_KINDS]
    if unknown:
        raise ConfigError(f"--only {unknown[0]!r}: step kinds are {', '.join(STEP_KINDS)}")
    root = p.pipeline.out
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "pipeline.json", describe(p.pipeline))
    ran, reused, skipped = [], [], []
    failed = dict(p.failed)
    with Claims(claims_place(root / "steps"), "pipeline") as claims:
        pending = list(p.steps)
        while pending:
            # Steps another live process is computing (or whose inputs it is) wait for a later pass.
            held = [s for s in pending if _run_step(s, claims, only, failed, ran, reused, skipped, echo, p)]
            if not held:
                break
            _wait_for_any(held, claims)
            pending = held
        report, report_reused = None, False
        if not only or "report" in only:
            p.failed = failed
            claims.acquire_waiting("report")  # built once: a second process finds its key and reuses it
            try:
                report, report_reused = _report(p, echo)
            finally:
                claims.release("report")
    claims.job_done()  # every step settled
    return RunOutcome(ran, reused, skipped, failed, report, report_reused)


def _blocker(step: Step, claims: Claims) -> Step | None:
    """The step (this one or an input) a live other process is computing now, if any."""
    for s in [*step.deps, step]:
        if not s.done:
            state = claims.state(s.dir.name)
            if state is not None and state.state == "live":
                return s
    return None


def _wait_for_any(steps: list[Step], claims: Claims, poll_s: float = 0.5) -> None:
    """Until a step that held these back is done or no longer held by a live process."""
    while True:
        time.sleep(poll_s)
        if any(_blocker(s, claims) is None for s in steps):
            return


def _run_step(step: Step, claims: Claims, only, failed: dict, ran: list, reused: list, skipped: list, echo,
              p: Plan) -> bool:
    """Run, reuse or skip one step; True when it waits for another process (it or an input is being computed)."""
    if step.done:
        reused.append(step.label)
        return False
    if step.group in failed or any(d.group in failed for d in step.deps):
        skipped.append(step.label)
        return False
    if only and step.kind not in only:
        skipped.append(step.label)
        return False
    blocker = _blocker(step, claims)
    if blocker is not None:
        echo(f"wait  {step.label}: another process is computing "
             f"{'it' if blocker is step else blocker.label}")
        return True
    if any(not d.done for d in step.deps):
        skipped.append(step.label)
        echo(f"skip  {step.label}: needs {next(d.label for d in step.deps if not d.done)} first")
        return False
    if not claims.acquire(step.dir.name):
        echo(f"wait  {step.label}: another process is computing it")
        return True
    try:
        if step.done:  # finished by another process between the looks
            reused.append(step.label)
            return False
        echo(f"{'resume' if step.dir.exists() else 'run'}   {step.label}  ->  {step.dir}")
        try:
            step.run()
        except EmbedcacheError as exc:
            if p.pipeline.on_error == "skip" and step.group and not step.group.startswith("dataset:"):
                failed[step.group] = f"{step.label}: {exc}"
                echo(f"failed {step.label}: {exc} (skipping {step.group}'s other steps)")
                return False
            raise PipelineError(f"{step.label}: {exc} (finished steps are kept; run again to go on)",
                                exc.exit_code) from exc
        ran.append(step.label)
        return False
    finally:
        claims.release(step.dir.name)


def _report(p: Plan, echo) -> tuple[Path | None, bool]:
    from embedcache.report.study import write_study_report

    root = p.pipeline.out / "report"
    key = p.report_key()
    stamp = root / "report.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("key") == key:
                return root, True
        except (OSError, ValueError):
            pass
    cells = study_cells(p)
    cell_probes = {ds: step.dir for ds, step in p.cell_probes.items() if step.done}
    if not any(c.evals or c.probes for c in cells) and not cell_probes:
        echo("no finished evaluation or probe yet: no report")
        return None, False
    echo(f"report -> {root}")
    spec = p.pipeline.report
    write_study_report(p.pipeline.name, cells, p.failed, root, key, n_boot=spec.n_boot, seed=spec.seed,
                       overlays=spec.overlays, cell_probes=cell_probes)
    return root, False


def study_cells(p: Plan):
    """What the report reads: each cell's finished steps (an encoder shows once all its seeds are evaluated)."""
    from embedcache.report.study import CellResult

    out = []
    for c in p.cells:
        if c.encoder in p.failed or not c.extract.done:
            continue
        evals = {s: st.dir for s, st in c.evals.items() if st.done}
        if len(evals) != len(c.evals):
            evals = {}
        out.append(CellResult(c.dataset, c.encoder, c.extract.dir / "store.zarr", c.extract.record()["result"],
                              evals, {s: st.record()["result"] for s, st in c.fits.items() if st.done},
                              {i: st.dir / "probe.json" for i, st in enumerate(c.probes) if st.done}))
    return out


def dry_run(p: Plan, only: tuple[str, ...] = ()) -> list[tuple[str, str, Path]]:
    """``(state, label, directory)`` of every step: ``reuse``, ``resume``, ``run``, or ``skip`` (``--only``)."""
    rows = []
    for step in p.steps:
        state = step.state()
        if state != "reuse" and only and step.kind not in only:
            state = "skip"
        rows.append((state, step.label, step.dir))
    return rows
