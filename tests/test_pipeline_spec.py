"""Pipeline files (embedcache.pipeline.spec): parsing, layering, and one-line errors with file and line."""

from __future__ import annotations

import re
import textwrap

import pytest
from click.testing import CliRunner

from embedcache.cli import main
from embedcache.errors import ConfigError
from embedcache.pipeline.spec import load_pipeline, parse_pipeline

GOOD = """\
name: study
out: outdir
datasets:
  syn:
    synthetic: {tiles: 6, folds: 2, size: 64}
    extract: {unit_tiles: 2}
    fit:
      epochs: 3
      decoder: {depth: 2}
    evaluate: {magnification: 20x}
encoders:
  cnn: {encoder: "timm:test_efficientnet", weights: random}
  vit:
    encoder: timm:test_vit
    weights: random
    unit_tiles: 1
    variants: flips
  efficientnet_lite0:
extract: {variants: rot90, batch_size: 8, unit_tiles: 4}
fit:
  epochs: 2
  batch_size: 4
  lr: 0.01
  decoder: {width: 8}
seeds: [0, 1]
probe: {labels: tissue, n_boot: 200}
report: {n_boot: 200, overlays: 2}
"""

MINIMAL = """\
datasets:
  d: {synthetic: {tiles: 6}}
encoders:
  cnn: {encoder: "timm:test_efficientnet", weights: random}
"""


def write(tmp_path, text: str, name: str = "study.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


def line_of_key(text: str, key: str) -> int:
    """1-based line of the first line where ``key:`` is a key (in block or flow style)."""
    pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}:")
    return next(i + 1 for i, line in enumerate(text.splitlines()) if pattern.search(line))


def error_of(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- a valid file


def test_a_valid_file_parses_into_layered_configs(tmp_path):
    p = load_pipeline(write(tmp_path, GOOD))
    assert p.name == "study" and str(p.out) == "outdir" and p.seeds == (0, 1) and p.on_error == "stop"
    assert [d.name for d in p.datasets] == ["syn"]
    assert [e.name for e in p.encoders] == ["cnn", "vit", "efficientnet_lite0"]
    ds = p.datasets[0]
    assert ds.synthetic == {"tiles": 6, "seed": 0, "folds": 2, "size": 64} and ds.path is None
    assert ds.magnification == "20x" and ds.protocol == "auto"
    assert p.report.n_boot == 200 and p.report.overlays == 2 and p.report.seed == 0

    cnn, vit, lite0 = (p.extract_config(ds, e) for e in p.encoders)
    # Defaults < top-level extract < dataset extract < encoder fields.
    assert cnn.encoder == "timm:test_efficientnet" and cnn.weights == "random"
    assert cnn.variants == "rot90" and cnn.batch_size == 8 and cnn.unit_tiles == 2
    assert vit.encoder == "timm:test_vit" and vit.variants == "flips" and vit.unit_tiles == 1
    # Without 'encoder', the entry's name is the encoder; unset fields keep their defaults.
    assert lite0.encoder == "efficientnet_lite0" and lite0.weights is None and lite0.dtype == "float16"

    # Fit: top-level fit < dataset fit, nested decoder merged key by key; the seed is the pipeline's.
    f = p.fit_config(ds, 1)
    assert f.epochs == 3 and f.batch_size == 4 and f.lr == 0.01 and f.seed == 1
    assert f.decoder.width == 8 and f.decoder.depth == 2

    probes = p.probe_configs(ds)
    assert len(probes) == 1 and probes[0].labels == "tissue" and probes[0].n_boot == 200


def test_defaults_and_list_forms():
    p = parse_pipeline({"datasets": {"d": {"path": "data"}}, "encoders": ["lite0", "timm:test_vit"],
                        "seeds": 3}, "dir/my-study.yaml")
    assert p.name == "my-study" and str(p.out) == "runs/my-study" and p.seeds == (3,)
    assert [e.name for e in p.encoders] == ["lite0", "timm:test_vit"]
    assert p.extract_config(p.datasets[0], p.encoders[1]).encoder == "timm:test_vit"
    assert p.fit_config(p.datasets[0], 3).seed == 3
    assert p.datasets[0].probe == ()  # no probe unless asked


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("where, edit, key, hint", [
    ("top", ("report: {n_boot: 200, overlays: 2}", "report: {n_boot: 200, overlays: 2}\nreprot: {}"),
     "reprot", "did you mean 'report'?"),
    ("fit", ("  lr: 0.01", "  lr: 0.01\n  epoch: 3"), "epoch", "did you mean 'epochs'?"),
    ("fit.decoder", ("  decoder: {width: 8}", "  decoder: {width: 8,\n            widht: 16}"),
     "widht", "did you mean 'width'?"),
    ("encoder", ("    unit_tiles: 1", "    unit_tiles: 1\n    wieghts: x.safetensors"),
     "wieghts", "did you mean 'weights'?"),
    ("dataset", ("    evaluate: {magnification: 20x}", "    evaluate: {magnification: 20x}\n    pth: data"),
     "pth", "did you mean 'path'?"),
    ("dataset.fit", ("      decoder: {depth: 2}", "      decoder: {depth: 2}\n      learning_rate: 0.1"),
     "learning_rate", None),
])
def test_unknown_key_names_file_line_and_key(tmp_path, where, edit, key, hint):
    text = GOOD.replace(*edit)
    assert text != GOOD
    path = write(tmp_path, text)
    message = error_of(path)
    line = line_of_key(text, key)
    assert message.startswith(f"{path}:{line}: "), message
    assert f"unknown key {key!r}" in message
    if hint:
        assert hint in message
    else:
        assert "known: " in message and "lr" in message  # no close match: the known keys are listed


def test_unknown_key_sections_are_named(tmp_path):
    text = GOOD.replace("  lr: 0.01", "  lr: 0.01\n  epoch: 3")
    assert "in fit;" in error_of(write(tmp_path, text))
    text = GOOD.replace("  decoder: {width: 8}", "  decoder: {widht: 8}")
    assert "in fit.decoder;" in error_of(write(tmp_path, text))
    text = GOOD.replace("    variants: flips", "    variant: flips")
    assert "in encoders.vit;" in error_of(write(tmp_path, text))
    text = GOOD.replace("synthetic: {tiles: 6,", "synthetic: {tile: 6,")
    message = error_of(write(tmp_path, text))
    assert "in datasets.syn.synthetic;" in message and "did you mean 'tiles'?" in message


def test_duplicate_key_gives_both_lines(tmp_path):
    text = GOOD.replace("  batch_size: 4\n", "  batch_size: 4\n  lr: 0.1\n")
    path = write(tmp_path, text)
    message = error_of(path)
    first, second = line_of(text, "lr: 0.1"), line_of(text, "lr: 0.01")  # the new one comes first
    assert first < second
    assert str(path) in message and "duplicate key 'lr'" in message
    assert f"line {second}" in message and f"first at line {first}" in message
    # A duplicate dataset name is caught the same way.
    text = MINIMAL.replace("encoders:", "  d: {path: x}\nencoders:")
    message = error_of(write(tmp_path, text))
    assert "duplicate key 'd'" in message and "line 3" in message and "first at line 2" in message


# ----------------------------------------------------------------------------- missing parts and bad values


def test_missing_datasets_or_encoders(tmp_path):
    message = error_of(write(tmp_path, "encoders: [lite0]\n"))
    assert "needs a 'datasets' section" in message
    message = error_of(write(tmp_path, "datasets:\n  d: {path: x}\nencoders: {}\n"))
    assert "needs a 'encoders' section" in message
    assert "is a mapping" in error_of(write(tmp_path, "- datasets\n"))
    assert "is a mapping" in error_of(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "absent.yaml")


def test_dataset_needs_path_or_synthetic_not_both(tmp_path):
    text = "datasets:\n  d: {path: x, synthetic: {tiles: 6}}\nencoders: [lite0]\n"
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:2: datasets.d needs either 'path'")
    message = error_of(write(tmp_path, "datasets:\n  d: {format: conic}\nencoders: [lite0]\n"))
    assert "datasets.d needs either 'path'" in message


@pytest.mark.parametrize("edit, expect", [
    (("  epochs: 2", "  epochs: 0", "      epochs: 3\n", ""), "fit settings of syn: epochs must be at least 1, got 0"),
    (("      epochs: 3", "      epochs: 0"), "fit settings of syn: epochs must be at least 1"),
    (("  decoder: {width: 8}", "  decoder: {width: 0}"), "fit settings of syn: decoder width"),
    (("batch_size: 8,", "batch_size: 0,"), "extract settings of cnn on syn: batch size must be at least 1"),
    (("    unit_tiles: 1", "    unit_tiles: 0"), "extract settings of vit on syn: unit_tiles must be at least 1"),
    (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds must be an integer or a list of distinct integers"),
    (("report: {n_boot: 200,", "report: {n_boot: 50,"), "report.n_boot must be at least 100"),
    (("report: {n_boot: 200,", "report: {n_boot: many,"), "report.n_boot must be an integer, not 'many'"),
    (("{magnification: 20x}", "{magnification: 10x}"), "magnification must be 40x or 20x"),
    (("{magnification: 20x}", "{protocol: tcga}"), "protocol must be one of auto, hovernet, pannuke, conic"),
    (("{magnification: 20x}", "{tta: d8}"), "tta must be one of none, flips, d4, not 'd8'"),
    (("{tiles: 6,", "{tiles: six,"), "datasets.syn.synthetic.tiles must be a positive integer, not 'six'"),
    (("{tiles: 6,", "{tiles: 1,"), "datasets.syn.synthetic: 1 tiles are fewer than the 2 folds"),
    (("name: study", "name: study\non_error: maybe"), "on_error must be stop or skip, not 'maybe'"),
])
def test_bad_values_name_the_section(tmp_path, edit, expect):
    text = GOOD
    for old, new in zip(edit[::2], edit[1::2]):
        text = text.replace(old, new)
    assert text != GOOD
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(str(path)) and expect in message, message


def test_bad_values_with_a_line_give_the_line(tmp_path):
    text = GOOD.replace("report: {n_boot: 200,", "report: {n_boot: many,")
    path = write(tmp_path, text)
    assert error_of(path).startswith(f"{path}:{line_of(text, 'n_boot: many')}: ")
    text = GOOD.replace("{tiles: 6,", "{tiles: six,")
    assert error_of(write(tmp_path, text)).startswith(f"{path}:{line_of(text, 'tiles: six')}: ")
    text = GOOD.replace("seeds: [0, 1]", "seeds: [0, x]")
    assert error_of(write(tmp_path, text)).startswith(f"{path}:{line_of(text, 'seeds:')}: ")


def test_invalid_yaml_gives_the_line(tmp_path):
    text = GOOD.replace("fit:\n  epochs: 2", "fit:\n  epochs: [2\n  lr2: 3")
    path = write(tmp_path, text)
    message = error_of(path)
    m = re.match(rf"{re.escape(str(path))}:(\d+): not valid YAML", message)
    assert m, message
    assert abs(int(m.group(1)) - line_of(text, "epochs: [2")) <= 2
    message = error_of(write(tmp_path, "datasets:\n  d: {path: x\nencoders: [lite0]\n"))
    assert "not valid YAML" in message


def test_a_missing_data_path_is_a_clear_error_from_plan(tmp_path):
    from embedcache.pipeline.run import plan

    missing = tmp_path / "no-such-data"
    p = parse_pipeline({"datasets": {"real": {"path": str(missing)}},
                        "encoders": {"cnn": {"encoder": "timm:test_efficientnet", "weights": "random"}},
                        "out": str(tmp_path / "out")}, "study.yaml")
    with pytest.raises(ConfigError) as info:
        plan(p, progress=False)
    message = str(info.value)
    assert "study.yaml" in message and "datasets.real" in message and str(missing) in message
    assert "does not exist" in message
    assert not (tmp_path / "out").exists()  # nothing written


# ----------------------------------------------------------------------------- the command line


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart


@pytest.mark.parametrize("text, needle", [
    (GOOD.replace("  lr: 0.01", "  lr: 0.01\n  epoch: 3"), "did you mean 'epochs'?"),
    (GOOD.replace("  batch_size: 4\n", "  batch_size: 4\n  lr: 0.1\n"), "duplicate key 'lr'"),
    (GOOD.replace("      epochs: 3", "      epochs: 0"), "epochs must be at least 1"),
    (GOOD.replace("report: {n_boot: 200,", "report: {n_boot: many,"), "must be an integer"),
    ("datasets: {d: {path: x}\n", "not valid YAML"),
], ids=["unknown-key", "duplicate-key", "bad-value", "not-an-integer", "bad-yaml"])
def test_cli_bad_file_is_one_error_line(tmp_path, text, needle):
    path = write(tmp_path, text)
    result = _runner().invoke(main, ["run", str(path), "--dry-run"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and str(path) in err[0] and needle in err[0], err
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert not result.stdout.strip()


def test_cli_missing_file_and_missing_data(tmp_path):
    result = _runner().invoke(main, ["run", str(tmp_path / "absent.yaml")])
    assert result.exit_code != 0 and result.stderr.startswith("Error: ") and "no such pipeline file" in result.stderr
    path = write(tmp_path, f"datasets:\n  d: {{path: {tmp_path / 'nothing'}}}\nencoders: [lite0]\n"
                           f"out: {tmp_path / 'out'}\n")
    result = _runner().invoke(main, ["run", str(path), "--dry-run"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "does not exist" in err[0]


# ----------------------------------------------------------------------------- value types


@pytest.mark.parametrize("edit, key, expect", [
    (("  epochs: 2", '  epochs: "ten"'), "epochs", "fit.epochs must be a whole number, not 'ten'"),
    (("  lr: 0.01", "  lr: fast"), "lr", "fit.lr must be a number, not 'fast'"),
    (("  decoder: {width: 8}", "  decoder: {width: 1.5}"), "width", "fit.decoder.width must be a whole number"),
    (("      epochs: 3", "      epochs: [3]"), "epochs", "datasets.syn.fit.epochs must be a whole number"),
    (("batch_size: 8,", "batch_size: eight,"), "batch_size", "extract.batch_size must be a whole number"),
    (("    unit_tiles: 1", "    unit_tiles: 1.0"), "unit_tiles", "encoders.vit.unit_tiles must be a whole number"),
    (("    weights: random", "    weights: 3"), "weights", "encoders.vit.weights must be a string or null, not 3"),
    (("    variants: flips", "    variants: 8"), "variants", "must be a string, not 8 (quote it: '8')"),
    (("extract: {variants: rot90,", "extract: {norm: yes please, variants: rot90,"), "norm",
     "extract.norm must be true or false, not 'yes please'"),
    (("probe: {labels: tissue, n_boot: 200}", "probe: {labels: tissue, n_boot: lots}"), "n_boot",
     "probe.n_boot must be a whole number, not 'lots'"),
])
def test_values_of_the_wrong_type_name_file_line_and_key(tmp_path, edit, key, expect):
    """A value of the wrong type is refused at load with file:line and key (was a Python error from deep in
    the config, e.g. "'<' not supported between instances of 'str' and 'int'", with no file or key)."""
    text = GOOD.replace(*edit)
    assert text != GOOD
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(text, edit[1].strip())}: "), message
    assert expect in message, message
    assert "not supported between" not in message


def test_cells_sections_are_type_checked_too(tmp_path):
    text = MINIMAL + "cells:\n  radius: big\n  probe: {n_boot: x}\n"
    message = error_of(write(tmp_path, text))
    assert f":{line_of(text, 'radius: big')}: cells.radius must be" in message, message
    text = MINIMAL + "cells:\n  probe: {n_boot: x}\n"
    message = error_of(write(tmp_path, text))
    assert f":{line_of(text, 'n_boot: x')}: cells.probe.n_boot must be a whole number, not 'x'" in message


def test_config_from_dict_refuses_wrong_types_without_a_file():
    from embedcache.config import ExtractConfig, FitConfig

    with pytest.raises(ConfigError, match=r"^epochs must be a whole number, not 'ten'$"):
        FitConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="mpp must be a number or null"):
        ExtractConfig.from_dict({"mpp": "0.25um"})
    assert FitConfig.from_dict({"lr": 1, "split_seed": None}).lr == 1  # an integer is a number
