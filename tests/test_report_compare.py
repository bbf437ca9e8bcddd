"""Leaderboard statistics (embedcache.report.compare): protocol values recomputed from per-image rows,
two-stage bootstrap intervals, paired comparisons and Holm's correction.

No torch: label maps are small numpy arrays, per-image scores are simulated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedcache.errors import DataError
from embedcache.metrics.protocols import conic, hovernet, pannuke
from embedcache.report.compare import (
    HEADLINE, ImageScores, compare, holm, leaderboard, resample_plan, score_encoder, summarise,
)

# ----------------------------------------------------------------------------- label maps


def _maps(rng, n_images: int, size: int = 48, cell: int = 8, n_types: int = 3, p_nucleus: float = 0.5,
          empty: tuple[int, ...] = ()):
    """Truth and prediction (instance and type maps) of square nuclei on a grid of cells.

    The prediction shifts each nucleus by up to a pixel, loses some, adds a few
    false positives and changes some types. Images listed in ``empty`` have no
    true nucleus (their prediction has one false positive).
    """
    ti, pi, tt, pt = [], [], [], []
    for k in range(n_images):
        t_inst = np.zeros((size, size), np.int32)
        p_inst = np.zeros((size, size), np.int32)
        t_type = np.zeros((size, size), np.int32)
        p_type = np.zeros((size, size), np.int32)
        nid = 1
        for r in range(0, size, cell):
            for c in range(0, size, cell):
                side = int(rng.integers(4, 7))
                r0, c0 = r + 1, c + 1
                if k not in empty and rng.random() < p_nucleus:
                    typ = int(rng.integers(1, n_types + 1))
                    t_inst[r0:r0 + side, c0:c0 + side] = nid
                    t_type[r0:r0 + side, c0:c0 + side] = typ
                    if rng.random() < 0.85:  # detected, a little off
                        dr, dc = rng.integers(-1, 2, size=2)
                        ptyp = typ if rng.random() < 0.75 else int(rng.integers(1, n_types + 1))
                        sl = (slice(r0 + dr, r0 + dr + side), slice(c0 + dc, c0 + dc + side))
                        p_inst[sl] = nid + 1000
                        p_type[sl] = ptyp
                elif rng.random() < 0.1 or (k in empty and nid == 1):  # a false positive
                    p_inst[r0:r0 + side, c0:c0 + side] = nid + 1000
                    p_type[r0:r0 + side, c0:c0 + side] = int(rng.integers(1, n_types + 1))
                nid += 1
        ti.append(t_inst)
        pi.append(p_inst)
        tt.append(t_type)
        pt.append(p_type)
    return ti, pi, tt, pt


def _assert_same(summary: dict, reference: dict, metrics):
    for m in metrics:
        got, want = float(summary[m][0]), float(reference[m])
        if math.isnan(want):
            assert math.isnan(got), m
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15), m


def test_summarise_on_all_images_is_the_hovernet_protocol():
    rng = np.random.default_rng(0)
    ti, pi, tt, pt = _maps(rng, 7)
    ti.append(np.zeros_like(ti[0]))  # nothing on either side: NaN row, skipped by the means
    pi.append(np.zeros_like(pi[0]))
    ref = hovernet(ti, pi)
    assert ref["n_images_scored"] == 7
    s = ImageScores.from_rows("hovernet", ref["images"])
    assert s.n == 8 and s.names == [str(i) for i in range(8)]
    out = summarise(s, np.arange(s.n)[None])
    assert set(out) == set(HEADLINE["hovernet"])
    _assert_same(out, ref, HEADLINE["hovernet"])
    assert 0 < ref["pq"] < 1 and 0 < ref["f1_detection"] < 1  # a non-trivial test


def test_summarise_on_all_images_is_the_pannuke_protocol_with_tissues():
    rng = np.random.default_rng(1)
    ti, pi, tt, pt = _maps(rng, 9, n_types=5, empty=(8,))
    # Three tissues of unequal size; "skin" has only the image without nuclei (NaN, left out of the tissue mean).
    tissue = ["breast", "colon", "breast", "liver", "colon", "breast", "liver", "breast", "skin"]
    ref = pannuke(ti, pi, tt, pt, tissue=tissue)
    assert math.isnan(ref["tissues"]["skin"]["bpq"])
    assert ref["bpq"] != pytest.approx(ref["bpq_images"])  # the tissue step matters here
    s = ImageScores.from_rows("pannuke", ref["images"])
    assert s.tissues == ["breast", "colon", "liver", "skin"]
    out = summarise(s, np.arange(s.n)[None])
    _assert_same(out, ref, ("bpq", "mpq", "bpq_images", "mpq_images"))


def test_summarise_on_all_images_is_the_conic_protocol():
    rng = np.random.default_rng(2)
    ti, pi, tt, pt = _maps(rng, 8, n_types=4)  # classes 5 and 6 absent: PQ 0, R2 of constant truth
    ref = conic(ti, pi, tt, pt)
    s = ImageScores.from_rows("conic", ref["images"])
    assert s.classes == (1, 2, 3, 4, 5, 6)
    out = summarise(s, np.arange(s.n)[None])
    _assert_same(out, ref, ("bpq", "mpq_plus", "r2"))
    # Explicit classes (a subset) agree with the protocol run on those classes.
    ref3 = conic(ti, pi, tt, pt, classes=(1, 2, 3))
    s3 = ImageScores.from_rows("conic", ref3["images"], classes=(1, 2, 3))
    _assert_same(summarise(s3, np.arange(s3.n)[None]), ref3, ("bpq", "mpq_plus", "r2"))


def test_summarise_on_a_resample_is_the_protocol_on_the_resampled_images():
    rng = np.random.default_rng(3)
    ti, pi, tt, pt = _maps(rng, 6, n_types=4)
    tissue = ["a", "b", "a", "b", "c", "a"]
    idx = np.array([0, 0, 2, 5, 4, 4])
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    for protocol, fn, kw in (("hovernet", hovernet, {}), ("pannuke", pannuke, {}), ("conic", conic, {})):
        if protocol == "hovernet":
            full, sub = fn(ti, pi), fn(pick(ti), pick(pi))
        elif protocol == "pannuke":
            full = fn(ti, pi, tt, pt, tissue=tissue)
            sub = fn(pick(ti), pick(pi), pick(tt), pick(pt), tissue=pick(tissue))
        else:
            full, sub = fn(ti, pi, tt, pt), fn(pick(ti), pick(pi), pick(tt), pick(pt))
        s = ImageScores.from_rows(protocol, full["images"])
        _assert_same(summarise(s, idx[None]), sub, HEADLINE[protocol])


def test_summarise_and_from_rows_refuse_bad_input():
    with pytest.raises(DataError, match="unknown protocol"):
        ImageScores.from_rows("nope", [])
    s = ImageScores.from_rows("hovernet", [{"name": "a", "pq": 0.5}])
    with pytest.raises(DataError, match="lack 'aji'"):
        summarise(s, np.zeros((1, 1), int))
    with pytest.raises(ValueError, match="idx must be"):
        summarise(s, np.zeros(3, int))


# ----------------------------------------------------------------------------- simulated scores


def _hov(pq, det=(10, 2, 2)) -> ImageScores:
    """HoVer-Net rows with every instance metric equal to ``pq``."""
    rows = [{"name": f"img{i:03d}", "pq": float(v), "aji": float(v), "aji_plus": float(v), "dice": float(v),
             "dq": float(v), "sq": float(v), "det_tp": det[0], "det_fp": det[1], "det_fn": det[2]}
            for i, v in enumerate(pq)]
    return ImageScores.from_rows("hovernet", rows)


def _width(interval) -> float:
    return interval[1] - interval[0]


def test_a_known_difference_is_found_and_named():
    rng = np.random.default_rng(10)
    n = 60
    base = rng.uniform(0.3, 0.7, n)
    a = base + rng.normal(0, 0.03, n)
    b = base + 0.05 + rng.normal(0, 0.03, n)
    plan = resample_plan(n, 1000, seed=1)
    sa, sb = score_encoder("A", [_hov(a)], plan), score_encoder("B", [_hov(b)], plan)
    assert sa.point["pq"] == pytest.approx(a.mean())
    c = compare(sa, sb, "pq")
    assert c["a"] == "A" and c["b"] == "B" and c["metric"] == "pq"
    assert c["diff"] == pytest.approx(a.mean() - b.mean())
    assert c["lo"] < c["diff"] < c["hi"] < 0
    assert c["p"] < 0.05
    # Each encoder's own interval holds its point estimate.
    for s in (sa, sb):
        lo, hi = s.interval("pq")
        assert lo < s.point["pq"] < hi

    lb = leaderboard("demo", {"A": [_hov(a)], "B": [_hov(b)]}, n_boot=1000, seed=1)
    assert [r["encoder"] for r in lb.rows] == ["B", "A"]  # best first
    pq = [c for c in lb.comparisons if c["metric"] == "pq"]
    assert len(pq) == 1 and pq[0]["a"] == "B" and pq[0]["b"] == "A"
    assert pq[0]["diff"] > 0 and pq[0]["p_holm"] < 0.05 and pq[0]["verdict"] == "B better"
    # Same numbers with the names the other way round: the verdict follows the data, not the order.
    lb2 = leaderboard("demo", {"B": [_hov(a)], "A": [_hov(b)]}, n_boot=1000, seed=1)
    assert [c for c in lb2.comparisons if c["metric"] == "pq"][0]["verdict"] == "A better"
    # Pooled detection counts are equal: no difference there.
    f1 = [c for c in lb.comparisons if c["metric"] == "f1_detection"][0]
    assert f1["diff"] == 0 and f1["verdict"] == "no clear difference"


def test_no_difference_gives_few_false_positives_and_intervals_cover_the_mean():
    rng = np.random.default_rng(11)
    n, sims, n_boot = 60, 100, 400
    false_pos, covered = 0, 0
    for k in range(sims):
        base = rng.normal(0.5, 0.1, n)  # image difficulty, shared
        a = base + rng.normal(0, 0.05, n)
        b = base + rng.normal(0, 0.05, n)  # same distribution, drawn independently per image
        plan = resample_plan(n, n_boot, seed=k)
        sa, sb = score_encoder("A", [_hov(a)], plan), score_encoder("B", [_hov(b)], plan)
        false_pos += compare(sa, sb, "pq")["p"] < 0.05
        lo, hi = sa.interval("pq")
        covered += lo <= 0.5 <= hi
    assert false_pos / sims <= 0.12
    assert covered / sims >= 0.85


def test_pairing_by_image_narrows_the_difference():
    rng = np.random.default_rng(12)
    n = 60
    image_effect = rng.normal(0.5, 0.2, n)  # a hard image is hard for both
    a = image_effect + rng.normal(0, 0.01, n)
    b = image_effect + 0.02 + rng.normal(0, 0.01, n)
    plan = resample_plan(n, 1000, seed=0)
    sa, sb = score_encoder("A", [_hov(a)], plan), score_encoder("B", [_hov(b)], plan)
    c = compare(sa, sb, "pq")
    paired = c["hi"] - c["lo"]
    own = min(_width(sa.interval("pq")), _width(sb.interval("pq")))
    assert paired < 0.2 * own
    assert c["hi"] < 0 and c["p"] < 0.05  # small but consistent: found thanks to the pairing
    # Unpaired, the two intervals overlap almost entirely.
    assert sa.interval("pq")[1] > sb.interval("pq")[0]


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(13)
    n = 40
    base = rng.uniform(0.4, 0.6, n)
    offsets = (-0.06, 0.0, 0.06)  # seeds whose means differ
    seeds = [_hov(base + o + rng.normal(0, 0.005, n)) for o in offsets]
    plan = resample_plan(n, 1000, seed=0)
    three = score_encoder("A", seeds, plan)
    one = score_encoder("A", seeds[1:2], plan)
    assert three.n_seeds == 3 and one.n_seeds == 1
    assert three.per_seed["pq"] == pytest.approx([s.column("pq").mean() for s in seeds])
    assert three.point["pq"] == pytest.approx(np.mean(three.per_seed["pq"]))
    assert _width(three.interval("pq")) > 1.5 * _width(one.interval("pq"))
    # With one seed, the plan's seed draws are all that seed: the ordinary bootstrap over images.
    assert np.array_equal(one.boot["pq"], summarise(seeds[1], plan.images)["pq"])


def test_seed_draws_depend_on_the_name_not_on_the_other_encoders():
    plan = resample_plan(10, 200, seed=4)
    assert plan.n_boot == 200 and plan.images.shape == (200, 10)
    assert np.array_equal(plan.seed_draws("A", 3), plan.seed_draws("A", 3))
    assert not np.array_equal(plan.seed_draws("A", 3), plan.seed_draws("B", 3))
    assert np.array_equal(resample_plan(10, 200, seed=4).images, plan.images)
    with pytest.raises(DataError, match="no images"):
        resample_plan(0)


def test_encoders_on_other_images_are_refused():
    a = _hov([0.5, 0.6, 0.7])
    b = _hov([0.5, 0.6])
    with pytest.raises(DataError, match="same test images"):
        leaderboard("demo", {"A": [a], "B": [b]}, n_boot=100)
    with pytest.raises(DataError, match="same test images"):
        score_encoder("A", [a, b], resample_plan(3, 100))


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, and never below an earlier step
    assert holm([0.2]) == pytest.approx([0.2])
    assert holm([]) == []


def test_leaderboards_say_when_classes_are_not_the_protocols_and_refuse_mixed_ones():
    from embedcache.report.study import leaderboard_markdown

    rng = np.random.default_rng(4)
    ti, pi, tt, pt = _maps(rng, 6, n_types=4)
    six = ImageScores.from_rows("conic", conic(ti, pi, tt, pt)["images"])
    lb = leaderboard("d", {"A": [six], "B": [six]}, n_boot=100)
    assert lb.published and "Not the published" not in leaderboard_markdown(lb)
    three = ImageScores.from_rows("conic", conic(ti, pi, tt, pt, classes=(1, 2, 3))["images"], classes=(1, 2, 3))
    lb3 = leaderboard("d", {"A": [three], "B": [three]}, n_boot=100)
    assert not lb3.published
    assert "**Not the published conic protocol**: scored on classes 1, 2, 3" in leaderboard_markdown(lb3)
    with pytest.raises(DataError, match=r"B was scored on classes \[1, 2, 3\], another evaluation on \[1, 2, 3, 4"):
        leaderboard("d", {"A": [six], "B": [three]}, n_boot=100)


def test_sign_flip_test_holds_at_small_n():
    """3 images: no p below 0.25, however large and consistent the difference; the report says so."""
    from embedcache.report.compare import sign_flip_test
    from embedcache.report.study import leaderboard_markdown

    a, b = _hov([0.9, 0.8, 0.85]), _hov([0.1, 0.2, 0.15])
    t = sign_flip_test(a, b, "pq")
    assert (t["method"], t["patterns"], t["n_units"]) == ("exact", 8, 3)
    assert t["p"] == t["min_p"] == 0.25
    lb = leaderboard("three", {"A": [a], "B": [b]}, n_boot=200)
    c = [c for c in lb.comparisons if c["metric"] == "pq"][0]
    # The interval excludes 0 and the test cannot reject: at this n the test decides, and says why.
    assert c["p"] == 0.25 and c["lo"] > 0
    assert c["verdict"] == "too few images to tell (3: p cannot go below 0.25)"
    md = leaderboard_markdown(lb)
    assert "exact sign-flip test over the 3 images (all 8 patterns)" in md
    assert "**3 images: the smallest possible p is 0.25; no difference can be significant at 0.05" in md
    assert "At small n the test decides" in md
    (row,) = [line for line in md.splitlines() if line.startswith("| A - B")]
    assert row.endswith("| too few images to tell (3: p cannot go below 0.25) |")


def _pq_comparison(a, b, n_boot=500):
    lb = leaderboard("d", {"A": [_hov(a)], "B": [_hov(b)]}, n_boot=n_boot, seed=3)
    return [c for c in lb.comparisons if c["metric"] == "pq"][0]


def test_the_verdict_claims_a_difference_only_where_test_and_interval_agree():
    """Constructed paired scores: n = 3 (the test decides), n = 6 (the two disagree), n = 20 (they agree)."""
    # 3 images, A better on each by 0.1: the interval is [0.1, 0.1], yet no difference is claimed.
    c = _pq_comparison([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert c["lo"] > 0 and c["verdict"].startswith("too few images to tell")
    # 6 images, A better on five by 0.1 and worse on one by 0.02: p = 4/64 (exact) while the interval,
    # whose resamples almost never draw only the one image, excludes 0: "unclear", no claim.
    base = np.linspace(0.4, 0.65, 6)
    c = _pq_comparison(base + np.array([0.1] * 5 + [-0.02]), base)
    assert c["p"] == pytest.approx(4 / 64) and c["lo"] > 0
    assert c["verdict"] == "unclear: the interval excludes 0 but p (Holm) is 0.0625"
    # 20 images, A better on each: both agree, A is better.
    base = np.linspace(0.3, 0.7, 20)
    c = _pq_comparison(base + 0.05 + np.linspace(-0.01, 0.01, 20), base)
    assert c["lo"] > 0 and c["p_holm"] < 0.05 and c["verdict"] == "A better"
    # 20 images with no difference on average: neither finds one.
    c = _pq_comparison(base + np.tile([0.05, -0.05], 10), base)
    assert c["lo"] < 0 < c["hi"] and c["verdict"] == "no clear difference"


def test_the_verdict_rule_by_hand():
    from embedcache.report.compare import verdict

    c = {"a": "A", "b": "B", "diff": -0.04, "lo": -0.06, "hi": -0.01, "p_holm": 0.01, "min_p": 1e-4, "n_units": 40}
    assert verdict(c) == "B better"
    assert verdict({**c, "hi": 0.01}) == "unclear: p (Holm) 0.01 but the interval includes 0"
    assert verdict({**c, "p_holm": 0.2}) == "unclear: the interval excludes 0 but p (Holm) is 0.2"
    assert verdict({**c, "hi": 0.01, "p_holm": 0.2}) == "no clear difference"
    # An interval off 0 on the other side of the point difference is no support for it.
    assert verdict({**c, "lo": 0.01, "hi": 0.02}).startswith("unclear")
    # Five images alone could reach 0.0625 > 0.05; 6 could (0.031), but not across two pairs after Holm.
    assert verdict({**c, "min_p": 2 / 2 ** 6, "n_units": 6}) == "B better"
    assert verdict({**c, "min_p": 2 / 2 ** 6, "n_units": 6}, n_pairs=2).startswith("too few images to tell (6:")
    assert verdict({**c, "p_holm": float("nan")}) == "n/a"


def test_no_verdict_contradicts_its_interval_or_test():
    """Random paired scores at several n: a claimed difference has p (Holm) < 0.05 and an interval off 0 on
    its side; 'no clear difference' never stands beside an interval that excludes 0."""
    rng = np.random.default_rng(31)
    seen = set()
    for n in (3, 5, 8, 12, 30):
        for shift in (0.0, 0.02, 0.08):
            base = rng.uniform(0.3, 0.7, n)
            c = _pq_comparison(base + shift + rng.normal(0, 0.04, n), base + rng.normal(0, 0.04, n), n_boot=300)
            v, excludes = c["verdict"], c["lo"] > 0 or c["hi"] < 0
            seen.add(v.split(" ")[0])
            if v.endswith("better"):
                assert c["p_holm"] < 0.05 and excludes and (c["lo"] > 0) == (v == "A better"), c
            if v == "no clear difference":
                assert not excludes and c["p_holm"] >= 0.05, c
            if n <= 5:
                assert v.startswith("too few images"), c
    assert {"A", "too"} <= seen


def test_sign_flip_test_is_exact_and_calibrated_without_a_difference():
    from embedcache.report.compare import sign_flip_test

    rng = np.random.default_rng(21)
    ps = []
    for _ in range(200):
        base = rng.uniform(0.3, 0.7, 8)
        ps.append(sign_flip_test(_hov(base + rng.normal(0, 0.05, 8)), _hov(base + rng.normal(0, 0.05, 8)), "pq")["p"])
    ps = np.array(ps)
    assert ps.min() >= 2 / 2 ** 8  # never below what 8 units allow
    assert np.mean(ps < 0.05) <= 0.1 and 0.35 <= np.mean(ps < 0.5) <= 0.65  # roughly uniform
    # A pooled metric is recomputed per pattern: swapping every image swaps the encoders, same |difference|.
    a, b = _hov([0.5] * 4, det=(10, 1, 1)), _hov([0.5] * 4, det=(5, 6, 6))
    t = sign_flip_test(a, b, "f1_detection")
    assert t["p"] == pytest.approx(2 / 16)  # only "no swap" and "swap all" are as extreme


def test_sign_flip_test_finds_a_difference_among_many_units():
    from embedcache.report.compare import RANDOM_PATTERNS, sign_flip_test

    rng = np.random.default_rng(22)
    base = rng.uniform(0.3, 0.7, 40)
    t = sign_flip_test(_hov(base + 0.03 + rng.normal(0, 0.03, 40)), _hov(base + rng.normal(0, 0.03, 40)), "pq")
    assert t["method"] == "random" and t["patterns"] == RANDOM_PATTERNS + 1 and t["p"] < 0.01


def test_with_several_seeds_p_never_ignores_seed_noise():
    """Seeds that disagree: the image-level test alone would be confident; p also heeds the seed bootstrap."""
    rng = np.random.default_rng(23)
    n = 20
    base = rng.uniform(0.4, 0.6, n)
    a = [_hov(base + 0.02 + o + rng.normal(0, 0.002, n)) for o in (-0.08, 0.08)]  # seeds far apart
    b = [_hov(base + rng.normal(0, 0.002, n)) for _ in range(2)]
    plan = resample_plan(n, 1000, seed=0)
    c = compare(score_encoder("A", a, plan), score_encoder("B", b, plan), "pq")
    assert c["p_sign_flip"] < 0.01 and c["p_bootstrap"] > 0.05
    assert c["p"] == max(c["p_sign_flip"], c["p_bootstrap"]) and c["lo"] < 0 < c["hi"]
    one = compare(score_encoder("A", a[:1], plan), score_encoder("B", b[:1], plan), "pq")
    assert one["p"] == one["p_sign_flip"] and one["test"] == "sign-flip over images"


def _grouped(pq, groups) -> ImageScores:
    s = _hov(pq)
    return ImageScores.from_rows("hovernet", [{"name": n, **{k: float(v[i]) for k, v in s.columns.items()}}
                                              for i, n in enumerate(s.names)], groups=groups)


def test_patches_of_one_source_are_resampled_and_flipped_together():
    """Patches cut from one image (CoNIC) are one unit: resamples hold whole sources, sign flips swap them."""
    from embedcache.report.compare import sign_flip_test

    groups = [f"img{k // 5}" for k in range(30)]  # 6 source images of 5 patches each
    plan = resample_plan(30, 300, seed=2, groups=_grouped(np.zeros(30), groups).groups)
    members = {g: {i for i, h in enumerate(groups) if h == g} for g in set(groups)}
    for row in plan.rows[:50]:
        drawn = list(row)
        for g, idx in members.items():  # every source is in a resample 0, 1, 2 ... whole times
            counts = [drawn.count(i) for i in idx]
            assert len(set(counts)) == 1
        assert len(drawn) % 5 == 0
    # A difference carried by one source's patches: over independent patches it looks real, over sources not.
    rng = np.random.default_rng(3)
    base = rng.uniform(0.4, 0.6, 30)
    a, b = base.copy(), base.copy()
    b[:5] += 0.3  # one source image much better for b, the others equal
    b[5:] += rng.normal(0, 0.001, 25)
    alone = sign_flip_test(_hov(a), _hov(b), "pq")
    grouped = sign_flip_test(_grouped(a, groups), _grouped(b, groups), "pq")
    assert alone["n_units"] == 30 and grouped["n_units"] == 6 and grouped["method"] == "exact"
    assert alone["p"] < 0.05 <= grouped["p"]
    lb = leaderboard("conic", {"A": [_grouped(a, groups)], "B": [_grouped(b, groups)]}, n_boot=300, seed=1)
    assert [c for c in lb.comparisons if c["metric"] == "pq"][0]["n_units"] == 6
    with pytest.raises(DataError, match="grouped by source otherwise"):
        leaderboard("conic", {"A": [_grouped(a, groups)], "B": [_hov(b)]}, n_boot=50)
