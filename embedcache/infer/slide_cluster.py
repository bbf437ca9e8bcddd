"""``predict --slides`` on a dask cluster: every slide one task, the table written here as slides finish.

With ``workers`` (a local cluster of that many processes) or ``scheduler``
(a running one), each slide is a task; ``out`` must be a folder every
worker can write (a shared file system). A worker that dies fails its slide
(recorded with the reason) and the others go on.
"""

from __future__ import annotations

from pathlib import Path

from embedcache.errors import OutputMismatchError
from embedcache.infer.slide_output import write_table
from embedcache.infer.slides import SlideResult


def _slide_task(run, path: Path, out: Path, options: dict) -> SlideResult:
    """One slide on a dask worker (a local cluster's workers carry their share of the thread budget in
    ``EMBEDCACHE_THREADS``, which :func:`predict_slides` sizes torch by)."""
    from embedcache.infer.slides import predict_slides

    return predict_slides(run, path, out, progress=False, table=False, **options)[0]


def predict_on_cluster(run, paths: list[Path], out: Path, options: dict, workers: int, scheduler: str | None,
                        progress: bool) -> list[SlideResult]:
    """Every slide as one task on a dask cluster; slides.csv written here, in the slides' order, as they finish."""
    from distributed import as_completed
    from embedcache.progress import progress_bar

    from embedcache.extract.distributed import connect_cluster

    out.mkdir(parents=True, exist_ok=True)
    run = str(Path(run).resolve())
    done: dict[int, SlideResult] = {}
    with connect_cluster(workers or None, scheduler, options["device"], None) as (client, _):
        futures = {client.submit(_slide_task, run, p, out, options, key=f"slide-{k}-{p.name}", pure=False,
                                 retries=0): k for k, p in enumerate(paths)}
        bar = progress_bar(total=len(paths), unit="slide", desc="slides", disable=not progress, dynamic_ncols=True)
        for fut in as_completed(list(futures), loop=client.loop):  # ours, not the default client's
            k = futures[fut]
            try:
                done[k] = fut.result()
            except OutputMismatchError:
                raise
            except Exception as exc:  # a worker that died or failed outside the slide's own checks
                done[k] = SlideResult(paths[k].stem, "failed", reason=f"{type(exc).__name__}: {exc}")
            write_table(out, [done[i] for i in sorted(done)])
            bar.update(1)
        bar.close()
    return [done[k] for k in range(len(paths))]
