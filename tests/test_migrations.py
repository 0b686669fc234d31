"""Files netopt wrote before their version moved to `format_version` still read, and a file newer
than this netopt is refused in one line. The files under tests/data/formats_v1 were written by
netopt before the change (the run directories of the first format are in tests/data/runs_v1)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from standins import fixed_net, problem_for

from netopt.errors import ConfigError, FormatError
from netopt.ir import FORMAT_VERSION, Builder, Network
from netopt.ir.versions import VERSION_KEY

V1 = Path(__file__).parent / "data" / "formats_v1"


def old(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((V1 / name).read_text())  # type: ignore[no-any-return]


def written_from() -> Network:
    """The network tests/data/formats_v1/network.json was written from."""
    b = Builder((3, 16, 16))
    stem = b.relu(b.bn(b.conv(b.input, 16, 3)))
    y = b.relu(b.bn(b.conv(stem, 24, 3)))
    y = b.bn(b.conv(y, 16, 3))
    d = b.relu(b.bn(b.conv(b.add_(y, stem), 16, 3, groups=16)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(d)), 10)).with_widths({"conv2d1": 16})


# --- IR network documents: version 1 said "version", version 2 says "format_version" -----------

def test_a_network_document_of_version_1_reads_as_the_network_it_was_written_from() -> None:
    doc = old("network.json")
    assert doc["version"] == 1 and VERSION_KEY not in doc
    net = Network.from_dict(doc)
    net.lint()
    assert net == written_from()
    again = net.to_dict()
    assert again[VERSION_KEY] == FORMAT_VERSION == 2 and "version" not in again
    assert Network.from_json(net.to_json()) == net


def test_identity_hashes_are_those_taken_before_the_format_changed() -> None:
    """Lookup tables key calibrations and measurements by these hashes: the tables written
    before the change must find their entries."""
    keys, net = old("network_keys.json"), Network.from_dict(old("network.json"))
    assert hashlib.sha256(net.at_full_width().canonical_json().encode()).hexdigest()[:24] == keys["structure_key"]
    assert "network:" + hashlib.sha256(net.canonical_json().encode()).hexdigest()[:24] == keys["network_signature"]


@pytest.mark.parametrize("key", ["format_version", "version"])
def test_a_network_document_newer_than_this_netopt_is_one_line(key: str) -> None:
    doc = {k: v for k, v in old("network.json").items() if k != "version"}
    doc[key] = FORMAT_VERSION + 1  # under "version" alone: a document in version 1's spelling that says 3
    with pytest.raises(FormatError, match=r"format version \d+ is not supported by this netopt, which reads up to "
                                          rf"{FORMAT_VERSION}; upgrade netopt") as info:
        Network.from_dict(doc)
    assert "\n" not in str(info.value)


# --- row.json and comparison.json: no key before, version 1 ----------------------------------

def resumed_comparison(out: Path):  # type: ignore[no-untyped-def]
    from netopt.compare import compare
    from netopt.strategies import UniformWidth

    said: list[str] = []
    made = {"UniformWidth": lambda n: UniformWidth(short_term_steps=2, long_term_steps=2, progress=False)}
    result = compare(problem_for(fixed_net(), "45%", "90%"), ["60%"], made, out, long_term_steps=2, resume=True,
                     progress=said.append)
    return result, said


def test_a_row_written_before_the_version_key_is_resumed_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "macs-60pct" / "UniformWidth"
    folder.mkdir(parents=True)
    shutil.copy(V1 / "row.json", folder / "row.json")
    result, said = resumed_comparison(tmp_path)
    assert said == []  # nothing ran again
    (row,) = result.rows
    assert vars(row) == old("row.json")
    assert json.loads((tmp_path / "comparison.json").read_text())[VERSION_KEY] == 1
    assert json.loads((folder / "row.json").read_text()) == old("row.json")  # read, not rewritten


def test_a_row_of_a_newer_format_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "macs-60pct" / "UniformWidth"
    folder.mkdir(parents=True)
    (folder / "row.json").write_text(json.dumps({**old("row.json"), VERSION_KEY: 2}))
    with pytest.raises(FormatError, match=r"row\.json: format version 2 is not supported .* reads up to 1; "
                                          r"upgrade netopt, or delete .* to run that strategy again") as info:
        resumed_comparison(tmp_path)
    assert "\n" not in str(info.value)


def test_every_json_file_a_comparison_writes_carries_the_version_key(tmp_path: Path) -> None:
    from netopt.compare import compare
    from netopt.strategies import UniformWidth

    made = {"UniformWidth": lambda n: UniformWidth(short_term_steps=2, long_term_steps=2, progress=False)}
    compare(problem_for(fixed_net(), "45%", "90%"), ["60%"], made, tmp_path, long_term_steps=2)
    files = sorted(tmp_path.rglob("*.json"))
    assert {p.name for p in files} >= {"row.json", "comparison.json", "config.json", "summary.json", "network.json"}
    assert [p for p in files if not isinstance(json.loads(p.read_text()).get(VERSION_KEY), int)] == []


# --- app.json: no key before, version 1 ----------------------------------------------------------

def test_an_app_config_written_before_the_version_key_resumes(tmp_path: Path) -> None:
    from netopt.app.config import AdaptConfig
    from netopt.app.jobs import APP_CONFIG, same_config

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(V1 / "app.json", run / APP_CONFIG)
    (run / "config.json").write_text("{}")  # the run has started
    same_config(AdaptConfig(run_dir=str(run)), resume=True)
    lr = AdaptConfig.model_validate({**AdaptConfig(run_dir=str(run)).model_dump(), "training": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"training\.lr = 0\.01, not 0\.1"):
        same_config(lr, resume=True)


def test_a_new_app_config_carries_the_version_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    from netopt.app.config import AdaptConfig
    from netopt.app.jobs import APP_CONFIG, same_config

    config = AdaptConfig(run_dir=str(tmp_path / "run"))
    same_config(config, resume=False)
    recorded = json.loads((tmp_path / "run" / APP_CONFIG).read_text())
    assert recorded[VERSION_KEY] == 1
    (tmp_path / "run" / "config.json").write_text("{}")
    same_config(config, resume=True)
    (tmp_path / "run" / APP_CONFIG).write_text(json.dumps({**recorded, VERSION_KEY: 2}))
    with pytest.raises(ConfigError, match=r"app\.json: format version 2 is not supported .* reads up to 1") as info:
        same_config(config, resume=True)
    assert "\n" not in str(info.value)


# --- the pretrained cache: version 1 keyed its files by fields with "format": 1 ------------------

def v1_cache(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A cache file as version 1 wrote it: {key, state_dict} under the key of its fields."""
    from netopt.zoo.mobilenet import MobileNetV1

    meta = old("pretrained.json")
    assert meta["fields"]["torch"] == torch.__version__, "the recorded key holds another torch version"
    torch.manual_seed(7)
    module = MobileNetV1(width=0.25, resolution=16, num_classes=10, in_channels=1)
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in module.state_dict().items()}
    torch.save({"key": meta["key"], "state_dict": state}, tmp_path / meta["file"])
    return tmp_path / meta["file"], state


TINY = {"width": 0.25, "size": 16, "steps": 3, "seed": 0}


def test_a_cached_file_of_version_1_is_used_and_moved_to_its_version_2_name(tmp_path: Path) -> None:
    from netopt.zoo.pretrained import pretrained_mnist

    path, state = v1_cache(tmp_path)
    module, _ = pretrained_mnist(**TINY, cache_dir=tmp_path, train_if_missing=False)  # type: ignore[arg-type]
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    (moved,) = tmp_path.glob("*.pt")
    assert moved != path and not path.exists()
    saved = torch.load(moved, weights_only=True)
    assert saved[VERSION_KEY] == 2 and saved["fields"][VERSION_KEY] == 2 and "format" not in saved["fields"]
    again, _ = pretrained_mnist(**TINY, cache_dir=tmp_path, train_if_missing=False)  # type: ignore[arg-type]
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())


def test_a_cached_file_of_a_newer_version_is_a_one_line_warning(tmp_path: Path) -> None:
    from netopt.zoo.pretrained import CacheWarning, MissingWeightsError, pretrained_mnist

    v1_cache(tmp_path)
    pretrained_mnist(**TINY, cache_dir=tmp_path, train_if_missing=False)  # type: ignore[arg-type]
    (path,) = tmp_path.glob("*.pt")
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, VERSION_KEY: 3}, path)
    with pytest.warns(CacheWarning, match="format version 3 is not supported by this netopt, which reads up to 2"), \
            pytest.raises(MissingWeightsError):
        pretrained_mnist(**TINY, cache_dir=tmp_path, train_if_missing=False)  # type: ignore[arg-type]
