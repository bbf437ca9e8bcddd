"""Pipeline files: a study in YAML, read into the library's config objects.

Every section maps one-to-one onto a config dataclass (no class paths in
YAML): ``extract`` onto :class:`~embedcache.config.ExtractConfig`,
``fit`` onto :class:`~embedcache.config.FitConfig` (with its nested
``decoder``, ``targets`` and ``loss``), ``probe`` onto
:class:`~embedcache.config.ProbeConfig`, ``cells`` onto
:class:`~embedcache.config.CellsConfig` with its ``probe`` (a cell-level
ProbeConfig). Settings are layered: the
defaults of each config, then the file's top-level section, then the
dataset's, then (for extraction) the encoder's own fields.

>>> p = parse_pipeline({"datasets": {"d": {"path": "data"}},
...                     "encoders": {"lite0": {"encoder": "efficientnet_lite0"}, "uni": {}}}, "study.yaml")
>>> [p.extract_config(p.datasets[0], e).encoder for e in p.encoders]  # the name when no 'encoder'
['efficientnet_lite0', 'uni']

Unknown keys, duplicate keys and invalid values are refused with the file,
line and section, and a close match when there is one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from embedcache.config import CellsConfig, ExtractConfig, FitConfig, ProbeConfig
from embedcache.config.base import type_problem
from embedcache.errors import ConfigError

ON_ERROR = ("stop", "skip")
PROTOCOLS = ("auto", "hovernet", "pannuke", "conic")
MAGNIFICATIONS = ("40x", "20x")


class _Map(dict):
    """A YAML mapping that remembers the line of each key."""

    line: int = 0
    lines: dict

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines = {}


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        loader.flatten_mapping(node)
        out = _Map()
        out.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in out:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first at line {out.lines[key]})")
            out[key] = loader.construct_object(value_node, deep=True)
            out.lines[key] = line
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the study.

    Attributes
    ----------
    name : str
    path : str or None
        A dataset folder or slide (any layout ``extract`` reads).
    synthetic : dict or None
        Or synthetic tiles made by the pipeline: ``demo-data``'s ``tiles``,
        ``seed``, ``folds``, ``size``.
    extract, decoder : dict
        Settings over the file's top-level ``extract`` and ``fit`` sections for this dataset.
    probe : tuple of dict
        Probe settings (ProbeConfig fields); empty: no probe.
    protocol : str
        ``auto`` (PanNuke or CoNIC for their classes, else HoVer-Net) or one protocol.
    magnification : {"40x", "20x"}
    tta : {"none", "flips", "d4"}
        Test-time augmentation of the evaluation over the cached variants.
    tune : str or None
        A split (``--val`` syntax) apart from training and validation on
        which post-processing is tuned before the evaluation
        (:mod:`embedcache.infer.tune`); None: the magnification's defaults.
    cells : dict or None
        Per-nucleus vectors and the cell probe (CellsConfig fields, and
        ``probe``: ProbeConfig fields); None: no cells.
    """

    name: str
    path: str | None = None
    synthetic: dict | None = None
    extract: dict = field(default_factory=dict)
    decoder: dict = field(default_factory=dict)
    probe: tuple = ()
    protocol: str = "auto"
    magnification: str = "40x"
    tta: str = "none"
    tune: str | None = None
    cells: dict | None = None


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder of the study: a name for the report and ExtractConfig fields (``encoder``, ``weights``, ...)."""

    name: str
    settings: dict = field(default_factory=dict)
    where: str = field(default="", compare=False)  # file:line of its entry, for messages


@dataclass(frozen=True)
class ReportSpec:
    """The report: bootstrap resamples and seed, overlay tiles shown per dataset."""

    n_boot: int = 2000
    seed: int = 0
    overlays: int = 4


@dataclass(frozen=True)
class Pipeline:
    """A parsed pipeline file. Relative paths are relative to the directory the command runs in."""

    name: str
    source: str
    out: Path
    datasets: tuple[DatasetSpec, ...]
    encoders: tuple[EncoderEntry, ...]
    seeds: tuple[int, ...] = (0,)
    extract: dict = field(default_factory=dict)
    decoder: dict = field(default_factory=dict)
    report: ReportSpec = ReportSpec()
    on_error: str = "stop"
    threads: int | None = None  # the run's thread budget (embedcache.threads); None: the cores

    def extract_config(self, dataset: DatasetSpec, encoder: EncoderEntry) -> ExtractConfig:
        """Defaults, then the file's ``extract``, the dataset's, then the encoder's fields."""
        where = f"{self.source}: extract settings of {encoder.name} on {dataset.name}"
        return _build(ExtractConfig, {**self.extract, **dataset.extract, **encoder.settings}, where)

    def fit_config(self, dataset: DatasetSpec, seed: int):
        """Defaults, then the file's ``fit``, the dataset's, with ``seed``.

        Seeds vary the training, not the held-out tiles: a drawn split
        (``frac:F``) is drawn with ``split_seed`` (0 unless the file says)
        for every seed, so every seed and encoder is tested on the same images.
        """
        merged = _merge(self.decoder, dataset.decoder)
        return _build(FitConfig, {"split_seed": 0, **merged, "seed": seed},
                      f"{self.source}: fit settings of {dataset.name}")

    def probe_configs(self, dataset: DatasetSpec) -> list[ProbeConfig]:
        return [_build(ProbeConfig, p, f"{self.source}: probe of {dataset.name}") for p in dataset.probe]

    def cells_configs(self, dataset: DatasetSpec) -> tuple[CellsConfig, ProbeConfig] | None:
        """The cells of ``dataset`` and their probe (labels ``type``, all layers by default), or None."""
        if dataset.cells is None:
            return None
        where = f"{self.source}: cells of {dataset.name}"
        settings = {k: v for k, v in dataset.cells.items() if k != "probe"}
        probe = {"layers": "all", **(dataset.cells.get("probe") or {}), "level": "cell", "labels": "type"}
        return _build(CellsConfig, settings, where), _build(ProbeConfig, probe, f"{where} (probe)")


def _merge(base: dict, over: dict) -> dict:
    """``over`` on ``base``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _build(cls, values: dict, where: str):
    try:
        return cls.from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _nested_fields(cls) -> dict[str, type]:
    """Fields of a config dataclass that are config dataclasses themselves (FitConfig's decoder, ...)."""
    out = {}
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            out[f.name] = factory
    return out


class _Reader:
    """Walks the parsed YAML with the file name at hand for messages."""

    def __init__(self, source: str):
        self.source = source

    def at(self, mapping, key=None) -> str:
        line = None
        if isinstance(mapping, _Map):
            line = mapping.lines.get(key, mapping.line) if key is not None else mapping.line
        return f"{self.source}:{line}" if line else self.source

    def fail(self, mapping, key, message: str):
        raise ConfigError(f"{self.at(mapping, key)}: {message}")

    def mapping(self, value, where: str, parent=None, key=None) -> dict:
        if value is None:
            return _Map()
        if not isinstance(value, dict):
            self.fail(parent, key, f"{where} must be a mapping of keys to values, not {type(value).__name__}")
        return value

    def keys(self, mapping: dict, known, where: str):
        for key in mapping:
            if key not in known:
                close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(map(str, known)))}"
                self.fail(mapping, key, f"unknown key {key!r} in {where}{hint}")

    def types(self, cls, mapping: dict, where: str):
        """Each value's type against its field's annotation (``epochs: "ten"`` names file, line and key)."""
        for key, value in mapping.items():
            problem = type_problem(cls, key, value) if key in {f.name for f in dataclasses.fields(cls)} else None
            if problem:
                self.fail(mapping, key, f"{where}.{key} {problem}")

    def config_keys(self, cls, mapping: dict, where: str):
        """Check keys (and nested sections) against the dataclass's fields."""
        mapping = self.mapping(mapping, where)
        self.keys(mapping, [f.name for f in dataclasses.fields(cls)], where)
        self.types(cls, mapping, where)
        for name, sub in _nested_fields(cls).items():
            if name in mapping:
                self.config_keys(sub, self.mapping(mapping[name], f"{where}.{name}", mapping, name),
                                 f"{where}.{name}")
        return mapping


TOP_KEYS = ("name", "out", "datasets", "encoders", "seeds", "extract", "fit", "probe", "cells", "evaluate", "report",
            "on_error", "threads")
DATASET_KEYS = ("path", "synthetic", "format", "extract", "fit", "probe", "cells", "evaluate")
SYNTHETIC_KEYS = ("tiles", "seed", "folds", "size")
EVALUATE_KEYS = ("protocol", "magnification", "tta", "tune")
TTA = ("none", "flips", "d4")


def load_pipeline(path) -> Pipeline:
    """Read and validate a pipeline file.

    Raises
    ------
    ConfigError
        Missing or unreadable file, YAML syntax errors, unknown or duplicate
        keys, invalid values: one line naming the file, line and section.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        data = yaml.load(path.read_text(), Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    return parse_pipeline(data, str(path))


def parse_pipeline(data: Any, source: str = "<pipeline>") -> Pipeline:
    """Validate a pipeline already read from YAML (a mapping)."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a pipeline file is a mapping with datasets and encoders at the top")
    r.keys(data, TOP_KEYS, "the pipeline")
    for need in ("datasets", "encoders"):
        if not data.get(need):
            raise ConfigError(f"{source}: the pipeline needs a '{need}' section with at least one entry")
    name = str(data.get("name") or Path(source).stem)
    out = Path(str(data.get("out") or Path("runs") / name))

    extract = dict(r.config_keys(ExtractConfig, data.get("extract"), "extract"))
    decoder = dict(r.config_keys(FitConfig, data.get("fit"), "fit"))
    probe = _probe_list(r, data.get("probe"), data, "probe")
    cells = _cells(r, data["cells"], data, "cells") if "cells" in data else None
    evaluate = _evaluate(r, data.get("evaluate"), data, "evaluate")
    seeds = data.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        r.fail(data, "seeds", "seeds must be an integer or a list of distinct integers, e.g. [0, 1, 2]")
    on_error = data.get("on_error", "stop")
    if on_error not in ON_ERROR:
        r.fail(data, "on_error", f"on_error must be stop or skip, not {on_error!r}")
    threads = data.get("threads")
    if threads is not None and (not _is_int(threads) or threads < 1):
        r.fail(data, "threads", f"threads must be a whole number of at least 1, not {threads!r}")
    report = r.mapping(data.get("report"), "report", data, "report")
    r.keys(report, [f.name for f in dataclasses.fields(ReportSpec)], "report")
    for key, value in report.items():
        if not _is_int(value):
            r.fail(report, key, f"report.{key} must be an integer, not {value!r}")
    report_spec = ReportSpec(**report)
    if report_spec.n_boot < 100 or report_spec.overlays < 0:
        r.fail(data, "report", "report.n_boot must be at least 100 and report.overlays at least 0")

    datasets = _named(r, data, "datasets")
    encoders = _named(r, data, "encoders")
    ds_specs = []
    for ds_name, entry in datasets:
        where = f"datasets.{ds_name}"
        entry = r.mapping(entry, where, data["datasets"], ds_name)
        r.keys(entry, DATASET_KEYS, where)
        if ("path" in entry) == ("synthetic" in entry):
            r.fail(data["datasets"], ds_name, f"{where} needs either 'path' (a dataset folder) or 'synthetic' "
                                              "(tiles made by the pipeline)")
        synthetic = None
        if "synthetic" in entry:
            synthetic = dict(r.mapping(entry["synthetic"], f"{where}.synthetic", entry, "synthetic"))
            r.keys(synthetic, SYNTHETIC_KEYS, f"{where}.synthetic")
            for key, value in synthetic.items():
                if not _is_int(value) or (key != "seed" and value < 1):
                    r.fail(entry["synthetic"], key, f"{where}.synthetic.{key} must be "
                                                    f"{'an integer' if key == 'seed' else 'a positive integer'}, "
                                                    f"not {value!r}")
            synthetic = {"tiles": 48, "seed": 0, "folds": 3, "size": 256, **synthetic}
            if synthetic["tiles"] < synthetic["folds"]:
                r.fail(entry["synthetic"], "tiles", f"{where}.synthetic: {synthetic['tiles']} tiles are fewer "
                                                    f"than the {synthetic['folds']} folds")
        ds_extract = dict(r.config_keys(ExtractConfig, entry.get("extract"), f"{where}.extract"))
        if "format" in entry:
            ds_extract["format"] = entry["format"]
        ds_decoder = dict(r.config_keys(FitConfig, entry.get("fit"), f"{where}.fit"))
        ds_probe = _probe_list(r, entry["probe"], entry, f"{where}.probe") if "probe" in entry else probe
        ds_eval = {**evaluate, **_evaluate(r, entry.get("evaluate"), entry, f"{where}.evaluate")}
        ds_cells = _cells(r, entry["cells"], entry, f"{where}.cells") if "cells" in entry else cells
        ds_specs.append(DatasetSpec(ds_name, str(entry["path"]) if "path" in entry else None, synthetic,
                                    ds_extract, ds_decoder, tuple(ds_probe), **ds_eval, cells=ds_cells))
    enc_specs = []
    for enc_name, entry in encoders:
        where = f"encoders.{enc_name}"
        settings = r.config_keys(ExtractConfig, entry, where)
        settings = {"encoder": enc_name, **settings}
        line = r.at(entry, "encoder") if isinstance(entry, _Map) and "encoder" in entry else \
            r.at(data["encoders"], enc_name)
        enc_specs.append(EncoderEntry(enc_name, dict(settings), line))

    pipeline = Pipeline(name, source, out, tuple(ds_specs), tuple(enc_specs), tuple(seeds), extract, decoder,
                        report_spec, on_error, threads)
    # Build every config now, so a bad value fails before any work starts.
    for ds in pipeline.datasets:
        for enc in pipeline.encoders:
            pipeline.extract_config(ds, enc)
        for s in pipeline.seeds:
            pipeline.fit_config(ds, s)
        pipeline.probe_configs(ds)
        pipeline.cells_configs(ds)
    return pipeline


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _named(r: _Reader, data: dict, key: str) -> list[tuple[str, Any]]:
    """A section of named entries: a mapping ``name: {...}`` or a list of names."""
    value = data[key]
    if isinstance(value, list):
        value = _Map({str(v): None for v in value}) if all(isinstance(v, str) for v in value) else None
    if not isinstance(value, dict):
        r.fail(data, key, f"{key} must map names to settings (or list names), e.g. '{key}: {{uni: {{}}}}'")
    for name in value:
        if not isinstance(name, str) or not name or "/" in name:
            r.fail(value, name, f"{key} names must be non-empty strings without '/', not {name!r}")
    return list(value.items())


def _probe_list(r: _Reader, value, parent, where: str) -> list[dict]:
    if value is None or value is False:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        item = r.mapping(item, where, parent, where.rsplit(".", 1)[-1])
        r.keys(item, [f.name for f in dataclasses.fields(ProbeConfig)], where)
        r.types(ProbeConfig, item, where)
        out.append(dict(item))
    return out


def _cells(r: _Reader, value, parent, where: str) -> dict | None:
    """A ``cells`` section: CellsConfig fields and a ``probe`` mapping of ProbeConfig fields (empty: the
    defaults); ``false``: no cells."""
    if value is False:
        return None
    value = r.mapping(value, where, parent, where.rsplit(".", 1)[-1])
    r.keys(value, [f.name for f in dataclasses.fields(CellsConfig)] + ["probe"], where)
    r.types(CellsConfig, value, where)
    if "probe" in value:
        probe = r.mapping(value["probe"], f"{where}.probe", value, "probe")
        r.keys(probe, [f.name for f in dataclasses.fields(ProbeConfig) if f.name not in ("level", "labels")],
               f"{where}.probe")
        r.types(ProbeConfig, probe, f"{where}.probe")
        value = {**value, "probe": dict(probe)}
    return dict(value)


def _evaluate(r: _Reader, value, parent, where: str) -> dict:
    value = r.mapping(value, where, parent, where.rsplit(".", 1)[-1])
    r.keys(value, EVALUATE_KEYS, where)
    if value.get("protocol", "auto") not in PROTOCOLS:
        r.fail(value, "protocol", f"protocol must be one of {', '.join(PROTOCOLS)}, not {value['protocol']!r}")
    if value.get("magnification", "40x") not in MAGNIFICATIONS:
        r.fail(value, "magnification", f"magnification must be 40x or 20x, not {value['magnification']!r}")
    if value.get("tta", "none") not in TTA:
        r.fail(value, "tta", f"tta must be one of {', '.join(TTA)}, not {value['tta']!r}")
    if "tune" in value and not (isinstance(value["tune"], str) and value["tune"].strip()):
        r.fail(value, "tune", "tune is a split of images apart from training and validation, e.g. sources:A,B")
    return dict(value)


def describe(pipeline: Pipeline) -> Mapping:
    """Plain data of a pipeline (what ``run`` records next to its outputs)."""
    return {"name": pipeline.name, "source": pipeline.source, "out": str(pipeline.out),
            "datasets": [dataclasses.asdict(d) for d in pipeline.datasets],
            "encoders": [dataclasses.asdict(e) for e in pipeline.encoders],
            "seeds": list(pipeline.seeds), "extract": pipeline.extract, "fit": pipeline.decoder,
            "report": dataclasses.asdict(pipeline.report), "on_error": pipeline.on_error}
