"""Lookup tables against the real ONNX Runtime backend (tiny settings keep it quick)."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import sqlite3
import warnings
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch

import netopt
from netopt.errors import LookupTableError
from netopt.ir import Builder, OpKind
from netopt.lut import LookupTable, fidelity, random_variants, units
from netopt.lut.stores import FORMAT_VERSION
from netopt.measure import MeasureSettings, NoisyMeasurementWarning, OnnxRuntimeCPU
from netopt.measure.base import Backend, Fingerprint, Measurement, summarize
from netopt.zoo import MobileNetV1

QUICK = MeasureSettings(warmup=1, runs=5, min_seconds=0.0)


def backend(threads: int = 1) -> OnnxRuntimeCPU:
    return OnnxRuntimeCPU(threads=threads, settings=QUICK)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", NoisyMeasurementWarning)


def tiny() -> netopt.Traced:
    return netopt.trace(MobileNetV1(0.25, 32, num_classes=10).eval(), torch.randn(1, 3, 32, 32))


def test_units_fuse_bn_and_activation_and_skip_views() -> None:
    b = Builder((3, 8, 8))
    x = b.relu(b.bn(b.conv(b.input, 16, 3)))
    y = b.add_(b.bn(b.conv(x, 16, 3)), x)
    net = b.build(b.linear(b.flatten(b.adaptive_avgpool(b.relu(y))), 4))
    ops = [[n.op for n in u.nodes] for u in units(net)]
    assert ops == [
        [OpKind.CONV2D, OpKind.BATCHNORM, OpKind.RELU],
        [OpKind.CONV2D, OpKind.BATCHNORM],
        [OpKind.ADD, OpKind.RELU],
        [OpKind.ADAPTIVE_AVGPOOL2D],
        [OpKind.LINEAR],
    ]


def test_equal_layers_share_one_signature() -> None:
    net = tiny().network
    sigs = [u.signature for u in units(net)]
    assert len(set(sigs)) < len(sigs)  # MobileNetV1 repeats its 512-channel block five times
    smaller = net.with_widths({net.groups[0].id: net.groups[0].min_width})
    changed = [a.signature != b.signature for a, b in zip(units(net), units(smaller), strict=True)]
    assert 1 <= sum(changed) <= 3  # the producer's unit and its readers' units, nothing else


def test_second_run_on_the_same_platform_measures_nothing(tmp_path: Path) -> None:
    traced = tiny()
    first = LookupTable.open(tmp_path / "lut.sqlite", backend())
    estimate = first.layer_sum(traced.network)
    assert first.measurements == len({u.signature for u in units(traced.network)}) + 2  # + overhead, yardstick
    first.close()
    second = LookupTable.open(tmp_path / "lut.sqlite", backend())
    assert second.layer_sum(traced.network) == estimate
    assert second.measurements == 0


def test_prebuild_covers_a_grid_once(tmp_path: Path) -> None:
    traced = tiny()
    lut = LookupTable.open(tmp_path / "lut.sqlite", backend())
    first = lut.prebuild(traced.network, points_per_group=2)
    assert first > len(units(traced.network)) // 2
    assert lut.prebuild(traced.network, points_per_group=2) == 0
    variant = traced.network.with_widths({g.id: g.min_width for g in traced.network.groups})
    before = lut.measurements
    lut.layer_sum(variant)  # every group at its minimum: on the grid
    assert lut.measurements == before


def _fill(path: str, seed: int) -> int:
    traced = tiny()
    lut = LookupTable.open(path, backend())
    for net in random_variants(traced.network, 3, seed=seed % 2):  # two seeds: processes overlap
        lut.layer_sum(net)
    return lut.measurements


def test_four_processes_fill_one_table_without_loss_or_duplicates(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    with mp.get_context("spawn").Pool(4) as pool:
        counts = pool.starmap(_fill, [(path, seed) for seed in range(4)])
    traced = tiny()
    wanted = {u.signature for s in (0, 1) for net in random_variants(traced.network, 3, seed=s) for u in units(net)}
    lut = LookupTable.open(path, backend())
    assert set(lut.store.signatures()) == wanted | {"overhead", "yardstick"}
    assert sum(counts) == len(wanted) + 2  # each signature measured by exactly one process


def test_calibration_is_stored_and_fidelity_reports(tmp_path: Path) -> None:
    traced = tiny()
    lut = LookupTable.open(tmp_path / "lut.sqlite", backend())
    raw = lut.layer_sum(traced.network)
    cal = lut.calibrate(traced, max_networks=6)
    assert len(cal.points) == 6 and all(r > 0 for r in cal.knots[1])  # the start, the smallest, 4 variants
    _, slope, per_weight = cal.plane
    assert slope > 0 and per_weight >= 0  # the cost never falls with the layer sum or the weights
    assert lut.estimate(traced.network) == pytest.approx(cal.apply(raw, lut.weights(traced.network)))
    assert LookupTable.open(tmp_path / "lut.sqlite", backend()).estimate(traced.network) == lut.estimate(traced.network)
    report = fidelity(lut, traced, variants=4)
    a = report.agreement()
    assert 0 <= a.within5 <= a.within10 <= 1 and a.rmspe >= 0
    assert "calibrated" in report.table() and "naive" in report.table()
    png = report.plot(tmp_path / "fidelity.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_foreign_or_corrupted_files_are_refused_and_left_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("my precious notes")
    with pytest.raises(LookupTableError, match="not an SQLite file"):
        LookupTable.open(text, backend())
    assert text.read_text() == "my precious notes"
    good = tmp_path / "lut.sqlite"
    lut = LookupTable.open(good, backend())
    lut.layer_sum(tiny().network)
    lut.close()
    data = bytearray(good.read_bytes())
    data[200:4000] = b"\xff" * 3800  # scribble over the first pages
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(bytes(data))
    with pytest.raises(LookupTableError, match="left untouched"):
        LookupTable.open(broken, backend())
    assert broken.read_bytes() == bytes(data)


def test_another_platform_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "lut.sqlite"
    LookupTable.open(path, backend(threads=1)).close()
    with pytest.raises(LookupTableError, match=r"threads: 2 != 1.*one lookup table file per platform"):
        LookupTable.open(path, backend(threads=2))


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LookupTableError, match="does not exist"):
        LookupTable.open(tmp_path / "nope" / "lut.sqlite", backend())


def test_calibration_fits_a_rising_line_and_lets_the_ratio_fall() -> None:
    from netopt.lut import Calibration

    exact = Calibration.fit([(2.0, 1.6), (1.0, 1.0), (4.0, 2.8), (3.0, 2.2)])  # cost = 0.4 + 0.6 * layer sum
    assert exact.line == pytest.approx((0.4, 0.6))
    x, ratios = exact.knots
    assert list(x) == [1.0, 2.0, 3.0, 4.0] and list(ratios) == sorted(ratios, reverse=True)  # fixed costs weigh less
    assert exact.apply(0.5) == pytest.approx(0.5)  # below the smallest network: its ratio, 1.0
    assert exact.apply(8.0) == pytest.approx(5.2)  # the line beyond the biggest
    cal = Calibration.fit([(2.0, 1.6), (1.0, 1.2), (3.0, 2.1), (4.0, 2.0)])  # measured out of order: scatter
    intercept, slope = cal.line
    assert intercept > 0 and slope > 0
    assert all(abs(cal.error(x, y)) < 0.12 for x, y in cal.points)  # a line through the scatter, not through each
    values = [cal.apply(v / 10) for v in range(1, 80)]
    assert all(a < b for a, b in itertools.pairwise(values)), values  # strictly: no flat stretch to shrink along
    spilling = Calibration.fit([(1.0, 1.0), (2.0, 2.3), (3.0, 3.6)])  # the ratio rises: cache spill
    assert spilling.line[0] < 0 and spilling.apply(3.0) / 3.0 > spilling.apply(1.0)
    more = cal.with_points([(2.0, 1.9), (2.5, 2.0)])  # a point at a layer sum already held replaces it
    assert dict(more.points) == {1.0: 1.2, 2.0: 1.9, 2.5: 2.0, 3.0: 2.1, 4.0: 2.0}


def test_calibration_prices_the_weights_where_they_vary_apart_from_the_layer_sum() -> None:
    from netopt.lut import Calibration
    from netopt.lut.calibration import stored_calibration

    sums, weights = [1.0, 2.0, 2.0, 3.0, 4.0, 4.0], [0.5, 0.5, 2.0, 1.0, 1.0, 3.0]
    exact = Calibration.fit([(x, 0.1 + 0.5 * x + 0.2 * w, w) for x, w in zip(sums, weights, strict=True)])
    assert exact.weighted and exact.plane == pytest.approx((0.1, 0.5, 0.2))
    assert exact.apply(3.0, 2.0) == pytest.approx(2.0)
    with pytest.raises(LookupTableError, match="pass the network's weights"):
        exact.apply(3.0)
    alike = Calibration.fit([(x, 0.1 + 0.7 * x, 0.3 * x) for x in sums])  # weights follow the layer sum
    assert not alike.weighted and alike.line == pytest.approx((0.1, 0.7))  # cannot be told apart: the line
    rng = np.random.default_rng(0)  # weights that cost nothing, in a scatter of ±5%: chance, not a price
    scattered = [(x, (0.1 + 0.7 * x) * rng.uniform(0.95, 1.05), rng.uniform(0.1, 3.0)) for x in np.linspace(1, 4, 12)]
    assert not Calibration.fit(scattered).weighted
    old = Calibration.fit([(x, 0.1 + 0.7 * x) for x in sums])  # an older netopt's points: the line
    assert not old.weighted and old.apply(2.0) == pytest.approx(1.5)
    assert old.with_points([(5.0, 3.6, 9.0)]).points[-1] == (5.0, 3.6)  # added to it, a point loses its weights
    assert stored_calibration(old.points) is None and stored_calibration(exact.points) == exact  # refitted when bound
    current = Calibration.fit([(*p, 1.0) for p in exact.points])  # traffic alike in every network: not priced
    assert stored_calibration(current.points) == current and current.plane == pytest.approx((0.1, 0.5, 0.2))
    assert not current.trafficked
    with pytest.raises(LookupTableError, match=r"got .* of another length"):
        Calibration.fit([(1.0, 1.0), (2.0, 2.0, 1.0)])


def test_calibration_prices_the_traffic_where_the_layer_sum_follows_the_units_edges() -> None:
    """A runtime that times a unit alone unlike inside the network (OpenVINO converts a lone
    unit's layouts): the layer sum tells little, the weights and the activations moved tell."""
    from netopt.lut import Calibration

    rng = np.random.default_rng(1)
    nets = [(rng.uniform(0.1, 3.5), rng.uniform(1.0, 4.5)) for _ in range(16)]  # (weights, traffic)
    points = [(0.3 + 0.6 * t + 0.1 * w + rng.uniform(-0.3, 0.3), 0.15 + 0.2 * w + 0.16 * t, w, t) for w, t in nets]
    cal = Calibration.fit(points)
    assert cal.trafficked and cal.weighted
    assert cal.coefficients == pytest.approx((0.15, 0.0, 0.2, 0.16), abs=2e-3)  # the slope at its floor
    assert cal.apply(2.0, 1.0, 3.0) == pytest.approx(0.15 + 0.2 + 0.48, rel=1e-2)
    with pytest.raises(LookupTableError, match="pass the network's traffic"):
        cal.apply(2.0, 1.0)
    without = Calibration.fit([p[:3] for p in points])  # the same networks, their traffic unknown
    worst = max(abs(without.error(*p[:3])) for p in points)
    assert worst > 0.05 and max(abs(cal.error(*p)) for p in points) < 0.005


class Fixed(Backend):
    """A deterministic "latency" (a call, a parameter, a layer): the backend tests/data/lut_v3.sqlite was filled on."""

    unit = "ms"

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({"backend": "test-fixed"})

    def measure(self, module: torch.nn.Module, example_input: torch.Tensor) -> Measurement:
        params = sum(p.numel() for p in module.parameters())
        layers = sum(1 for m in module.modules() if not list(m.children()))
        return summarize([0.05 + 2e-5 * params + 1e-3 * layers] * 5, "ms", self.fingerprint.key)


def two_convs() -> netopt.Traced:
    """The network tests/data/lut_v3.sqlite was calibrated on (its weights do not matter, only its shapes)."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 4))
    return netopt.trace(model.eval(), torch.zeros(1, 3, 8, 8))


def test_a_table_written_by_netopt_of_format_3_opens_and_estimates_as_it_did(tmp_path: Path) -> None:
    """tests/data/lut_v3.sqlite was written at commit 8440563 (meta rows `format` and `version`):
    `calibrate(traced, max_networks=6)` on `Fixed`, then the four estimates below, as printed then."""
    path = tmp_path / "lut.sqlite"
    path.write_bytes((Path(__file__).parent / "data" / "lut_v3.sqlite").read_bytes())
    traced = two_convs()
    nets = [traced.network, *random_variants(traced.network, 3, seed=0)]
    lut = LookupTable.open(path, Fixed())
    assert [lut.estimate(n) for n in nets] == [0.26708, 0.21988, 0.11700000000000002, 0.18052]
    assert [lut.layer_sum(n) for n in nets] == [0.26308000000000004, 0.21588000000000002, 0.11300000000000002, 0.17652]
    assert lut.measurements == 0 and lut.store.count() == 27  # every figure read back, nothing measured again
    assert len(lut.calibration(traced.network).points) == 6  # type: ignore[union-attr]


def _meta(path: Path) -> dict[str, str]:
    with closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())


def test_the_format_version_has_one_key_and_older_tables_gain_it_on_open(tmp_path: Path) -> None:
    new = tmp_path / "new.sqlite"
    LookupTable.open(new, Fixed()).close()
    assert _meta(new)["format_version"] == str(FORMAT_VERSION) and "version" not in _meta(new)
    old = tmp_path / "old.sqlite"
    old.write_bytes((Path(__file__).parent / "data" / "lut_v3.sqlite").read_bytes())
    assert "format_version" not in _meta(old)
    LookupTable.open(old, Fixed()).close()
    assert _meta(old)["format_version"] == _meta(old)["version"] == "3"  # "version" stays: older netopt reads it


def test_a_table_of_another_version_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    path.write_bytes((Path(__file__).parent / "data" / "lut_v3.sqlite").read_bytes())
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE meta SET value = '2' WHERE key = 'version'")
    with pytest.raises(LookupTableError, match=r"holds format 'netopt-lut' version '2', not 'netopt-lut' version 3"):
        LookupTable.open(path, Fixed())
    assert "format_version" not in _meta(path)
