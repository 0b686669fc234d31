"""Data splits, the Trainer, the Accuracy objective and the pretrained-weights cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from netopt.data import DataError, Splits, mnist
from netopt.errors import ConfigError
from netopt.objectives import Accuracy, Evaluation, Objective, Trainer, TrainerSettings
from netopt.zoo.pretrained import CacheWarning, MissingWeightsError, pretrained_mnist


@pytest.fixture(scope="module")
def digits() -> Splits:
    return mnist(size=16, holdout_per_class=20, test_fraction=0.2, seed=0)


def synthetic(per_class: tuple[int, ...] = (30, 40, 50), features: int = 6, seed: int = 0) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """Rows that are all distinct (so overlaps show up by hash), classes of the given sizes."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    X = rng.normal(size=(len(y), features)) * 3.0 + 5.0
    return X, rng.permutation(y)


def row_hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x}


def tiny_cnn(size: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * (size // 2) ** 2, 10))


# --- data -------------------------------------------------------------------------------------


def test_splits_are_stratified_disjoint_and_cover_the_data() -> None:
    X, y = synthetic()
    s = Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.2, seed=3, normalize=False)
    assert s.num_classes == 3
    assert np.bincount(s.holdout_y.numpy()).tolist() == [5, 5, 5]
    assert np.bincount(s.test_y.numpy()).tolist() == [6, 8, 10]  # 20% of 30, 40, 50
    assert np.bincount(s.train_y.numpy()).tolist() == [19, 27, 35]
    train, holdout, test = row_hashes(s.train_x), row_hashes(s.holdout_x), row_hashes(s.test_x)
    assert not (train & holdout or train & test or holdout & test)
    assert train | holdout | test == row_hashes(torch.from_numpy(X.astype(np.float32)))
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64


def test_splits_are_deterministic_for_a_seed() -> None:
    X, y = synthetic()
    a, b = (Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.2, seed=1) for _ in range(2))
    c = Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.2, seed=2)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.holdout_y, b.holdout_y)
    assert not torch.equal(a.test_x, c.test_x)


def test_normalization_uses_training_statistics_only() -> None:
    X, y = synthetic()
    kw = {"holdout_per_class": 5, "test_fraction": 0.2, "seed": 0}
    raw, norm = Splits.from_arrays(X, y, **kw), Splits.from_arrays(X, y, normalize=True, **kw)
    mean, std = raw.train_x.double().mean(), raw.train_x.double().std()
    assert abs(float(norm.train_x.mean())) < 1e-5 and abs(float(norm.train_x.std()) - 1) < 1e-5
    for r, n in ((raw.test_x, norm.test_x), (raw.holdout_x, norm.holdout_x)):
        torch.testing.assert_close(n, ((r.double() - mean) / std).float())


def test_images_are_reshaped_and_normalized_per_channel() -> None:
    X, y = synthetic(features=2 * 3 * 3)
    X[:, 9:] += 100.0  # channel 1 far from channel 0
    s = Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.2, image_shape=(2, 3, 3), normalize=True)
    assert s.train_x.shape[1:] == (2, 3, 3)
    per_channel = s.train_x.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(per_channel.mean(dim=1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(dim=1), torch.ones(2), atol=1e-5, rtol=0)


def test_inputs_are_kept_as_given_by_default() -> None:
    """No hidden preprocessing: values unchanged, and image-shaped arrays stay images."""
    X, y = synthetic(features=2 * 3 * 3)
    images = X.reshape(len(X), 2, 3, 3)
    s = Splits.from_arrays(images, y, holdout_per_class=5, test_fraction=0.2)
    assert s.train_x.shape[1:] == (2, 3, 3)
    assert row_hashes(torch.cat([s.train_x, s.holdout_x, s.test_x]).reshape(len(X), -1)) == \
        row_hashes(torch.from_numpy(X.astype(np.float32)))


def test_no_test_split_for_users_who_keep_their_own() -> None:
    X, y = synthetic()
    s = Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.0)
    assert len(s.test_y) == 0 and len(s.holdout_y) == 15 and len(s.train_y) == len(y) - 15
    assert Accuracy(s).test(nn.Sequential(nn.Linear(6, 3))) is None


@pytest.mark.parametrize(("change", "words"), [
    (lambda X, y: (X[:-1], y), "rows but y"),
    (lambda X, y: (X, y + 0.5), "not a non-negative integer"),
    (lambda X, y: (X, y.astype(str)), "not a non-negative integer"),
    (lambda X, y: (X, y - 1), "not a non-negative integer"),
    (lambda X, y: (X, np.where(y == 1, 3, y)), "class 1 has 0 example(s)"),
])
def test_bad_arrays_are_refused_with_the_rule_and_the_fix(change, words: str) -> None:  # type: ignore[no-untyped-def]
    X, y = change(*synthetic())
    with pytest.raises(DataError) as info:
        Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.2)
    assert words in str(info.value) and ";" in str(info.value)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"test_fraction": -0.1}, "test_fraction=-0.1 is outside [0, 1)"),
    ({"test_fraction": 1.5}, "test_fraction=1.5 is outside [0, 1)"),
    ({"holdout_per_class": 25}, "class 0 has 30 example(s)"),
    ({"holdout_per_class": 0}, "holdout_per_class=0"),
    ({"image_shape": (1, 2, 2)}, "image_shape=(1, 2, 2) holds 4 values but each row of X has 6"),
])
def test_bad_requests_are_refused_with_the_rule_and_the_fix(kwargs: dict, words: str) -> None:
    X, y = synthetic()
    settings = {"holdout_per_class": 5, "test_fraction": 0.2, **kwargs}
    with pytest.raises(DataError) as info:
        Splits.from_arrays(X, y, **settings)
    message = str(info.value)
    assert words in message and ("pass" in message or "lower" in message)


def test_mnist_digits_at_a_chosen_size(digits: Splits) -> None:
    assert digits.train_x.shape == (3800, 1, 16, 16) and digits.num_classes == 10
    assert len(digits.holdout_y) == 200 and len(digits.test_y) == 1000
    assert np.bincount(digits.holdout_y.numpy()).tolist() == [20] * 10
    assert np.bincount(digits.test_y.numpy()).tolist() == [100] * 10
    assert not row_hashes(digits.test_x) & row_hashes(digits.train_x)


# --- trainer ----------------------------------------------------------------------------------


def test_trainer_settings_refuse_typos_and_bad_values_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="lrr"):
        Trainer(lrr=0.1)
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(batch_size=0)
    with pytest.raises(ConfigError, match="momentum"):
        Trainer(momentum=1.0)
    assert Trainer(lr=0.5).settings == TrainerSettings(lr=0.5)
    with pytest.raises(Exception, match="frozen"):
        Trainer().settings.lr = 1.0  # type: ignore[misc]


def test_training_is_reproducible_for_a_seed_and_leaves_global_rng_alone(digits: Splits) -> None:
    x, y = digits.train_x[:512], digits.train_y[:512]
    start = tiny_cnn().state_dict()

    def trained(seed: int) -> dict[str, torch.Tensor]:
        model = tiny_cnn()
        model.load_state_dict(start)
        assert Trainer(batch_size=32).train(model, x, y, steps=20, seed=seed) == 20
        assert not model.training
        return model.state_dict()

    before = torch.get_rng_state()
    a, b, c = trained(7), trained(7), trained(8)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_tiny_model_learns_the_digits(digits: Splits) -> None:
    model, trainer = tiny_cnn(), Trainer(lr=0.05)
    loss = nn.CrossEntropyLoss()
    model.eval()
    with torch.no_grad():
        before = float(loss(model(digits.holdout_x), digits.holdout_y))
    trainer.train(model, digits.train_x, digits.train_y, steps=150, seed=0)
    with torch.no_grad():
        after = float(loss(model(digits.holdout_x), digits.holdout_y))
    assert after < before / 3
    assert trainer.accuracy(model, digits.holdout_x, digits.holdout_y) > 0.8


def test_cosine_schedule_and_zero_steps(digits: Splits) -> None:
    model = tiny_cnn()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert Trainer().train(model, digits.train_x, digits.train_y, steps=0, seed=0) == 0
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert Trainer().train(model, digits.train_x, digits.train_y, steps=5, seed=0, schedule="cosine") == 5
    with pytest.raises(ConfigError, match="steps=-1"):
        Trainer().train(model, digits.train_x, digits.train_y, steps=-1, seed=0)
    with pytest.raises(ConfigError, match="int64"):
        Trainer().accuracy(model, digits.test_x, digits.test_y.float())


# --- objective --------------------------------------------------------------------------------


def test_accuracy_objective_fine_tunes_and_scores_on_holdout(digits: Splits) -> None:
    objective = Accuracy(digits, Trainer(lr=0.05))
    assert isinstance(objective, Objective)
    model = tiny_cnn()
    short = objective.short_term(model, steps=30, seed=0)
    assert isinstance(short, Evaluation) and short.steps == 30 and 0.0 <= short.score <= 1.0
    assert short.score == objective.holdout(model)
    long = objective.long_term(model, steps=20, seed=1)
    assert long.steps == 20 and 0.0 <= long.score <= 1.0
    assert 0.0 <= objective.test(model) <= 1.0
    assert objective.example_input().shape == (1, 1, 16, 16)


def test_the_same_proposal_and_seed_score_the_same(digits: Splits) -> None:
    objective = Accuracy(digits, Trainer(lr=0.05))
    scores = [objective.short_term(tiny_cnn(), steps=10, seed=4) for _ in range(2)]
    assert scores[0] == scores[1]


# --- pretrained cache -------------------------------------------------------------------------

TINY = {"width": 0.25, "size": 16, "steps": 3, "seed": 0}


def test_pretrained_weights_are_cached_and_loaded_without_training(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="train_if_missing=True"):
        pretrained_mnist(**TINY, cache_dir=tmp_path, train_if_missing=False)
    first, data = pretrained_mnist(**TINY, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    assert not list(tmp_path.glob("*.tmp"))
    stamp = path.stat().st_mtime_ns
    again, _ = pretrained_mnist(**TINY, cache_dir=tmp_path, train_if_missing=False)
    assert path.stat().st_mtime_ns == stamp
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert not again.training and data.train_x.shape[1:] == (1, 16, 16)
    pretrained_mnist(**{**TINY, "seed": 1}, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # every argument is part of the key


def test_a_corrupted_cache_file_is_retrained_with_a_warning(tmp_path: Path) -> None:
    reference, _ = pretrained_mnist(**TINY, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(CacheWarning, match="unusable"):
        retrained, _ = pretrained_mnist(**TINY, cache_dir=tmp_path)
    assert all(torch.equal(v, retrained.state_dict()[k]) for k, v in reference.state_dict().items())
    torch.save({"key": "another", "state_dict": {}}, path)
    with pytest.warns(CacheWarning), pytest.raises(MissingWeightsError):
        pretrained_mnist(**TINY, cache_dir=tmp_path, train_if_missing=False)


def test_cache_dir_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from netopt.zoo.pretrained import cache_root

    monkeypatch.setenv("NETOPT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and cache_root("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("NETOPT_CACHE")
    assert cache_root() == Path(os.path.expanduser("~")) / ".cache" / "netopt"


def test_training_inputs_under_their_old_name_still_work_and_say_they_are_deprecated() -> None:
    """`calibration_inputs` and `FunctionObjective(calibration=...)` were the names before
    "calibration" came to mean the lookup table's fit only."""
    from netopt.objectives import FunctionObjective

    batch = [torch.zeros(2, 3)]

    def inputs(batches: int, seed: int) -> list[torch.Tensor]:
        return batch * batches

    with pytest.warns(DeprecationWarning, match=r"calibration=\.\.\.\) is deprecated: pass training_inputs"):
        objective = FunctionObjective(lambda m, s, seed, phase: None, lambda m: 0.0, calibration=inputs)
    assert objective.training_inputs(2, 0) == batch * 2

    class Old(Objective):
        def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
            return Evaluation(0.0, steps)

        def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
            return Evaluation(0.0, steps)

        def test(self, module: nn.Module) -> float | None:
            return None

        def calibration_inputs(self, batches: int, seed: int) -> list[torch.Tensor]:
            return batch

    with pytest.warns(DeprecationWarning, match="Old.calibration_inputs is deprecated: rename it training_inputs"):
        assert Old().training_inputs(1, 0) == batch
