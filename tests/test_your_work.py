"""A user's own loop, data, recipe and device: FunctionObjective, Accuracy.from_loaders, the Trainer's recipe.

The functions below are module-level, as a user's would be, so that process pools can send them.
"""

from __future__ import annotations

import copy
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import netopt
from netopt.constraints import EnergyConstraint, MACsConstraint, ReductionSchedule
from netopt.data import DataError, Splits, mnist
from netopt.errors import ConfigError, ObjectiveError
from netopt.measure.energy import EnergyModel
from netopt.objectives import Accuracy, FunctionObjective, Trainer
from netopt.strategies import NetAdaptV2, Problem, ProgressiveBarrier, RandomSearch, UniformWidth

DIGITS = mnist(size=16, holdout_per_class=10, test_fraction=0.1)
CALLS: list[tuple[str, int, int, str]] = []
BROKEN: dict[str, object] = {}


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def loader(split: str, shuffle: bool = False, batch_size: int = 32) -> DataLoader:
    x, y = getattr(DIGITS, f"{split}_x"), getattr(DIGITS, f"{split}_y")
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, drop_last=shuffle)


def fine_tune(model: nn.Module, steps: int, seed: int, phase: str) -> int:
    """A user's own loop: AdamW, label smoothing, their DataLoader."""
    CALLS.append(("fine_tune", steps, seed, phase))
    if "fine_tune" in BROKEN:
        raise RuntimeError(str(BROKEN["fine_tune"]))
    generator = torch.Generator().manual_seed(seed)
    data = DataLoader(TensorDataset(DIGITS.train_x, DIGITS.train_y), batch_size=32, shuffle=True,
                      generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    done = 0
    while done < steps:
        for x, y in data:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y, label_smoothing=0.1).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return done


def score(model: nn.Module) -> float:
    CALLS.append(("score", 0, 0, ""))
    if "score" in BROKEN and sum(c[0] == "score" for c in CALLS) > 2:
        return BROKEN["score"]  # type: ignore[return-value]
    with torch.no_grad():
        return float((model(DIGITS.holdout_x).argmax(1) == DIGITS.holdout_y).float().mean())


def score_on_test(model: nn.Module) -> float:
    with torch.no_grad():
        return float((model(DIGITS.test_x).argmax(1) == DIGITS.test_y).float().mean())


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.clear()
    BROKEN.clear()


def problem(objective: object, model: nn.Module | None = None) -> Problem:
    traced = netopt.trace(model if model is not None else cnn(), DIGITS.train_x[:1])
    constraints = [MACsConstraint("55%", schedule=ReductionSchedule("25%")),
                   EnergyConstraint("80%", EnergyModel(), ReductionSchedule("15%"))]
    return Problem(traced, constraints, objective)  # type: ignore[arg-type]


def training_inputs(batches: int, seed: int) -> list[torch.Tensor]:
    rows = torch.randperm(len(DIGITS.train_y), generator=torch.Generator().manual_seed(seed))
    return [DIGITS.train_x[rows[k * 32:(k + 1) * 32]] for k in range(batches)]


def objective() -> FunctionObjective:
    return FunctionObjective(fine_tune, score, test=score_on_test, training_inputs=training_inputs)


STEPS = {"short_term_steps": 2, "long_term_steps": 3, "seed": 1}


def _strategies() -> list:  # type: ignore[type-arg]
    from netopt.strategies.geometric import GeometricProgram
    from netopt.strategies.optuna_search import OptunaSearch

    return [lambda: ProgressiveBarrier(**STEPS), lambda: UniformWidth(**STEPS),
            lambda: RandomSearch(trials=3, **STEPS), lambda: OptunaSearch(sampler="tpe", trials=3, **STEPS),
            lambda: GeometricProgram(**STEPS),
            lambda: NetAdaptV2(supernet_steps=3, samples=3, long_term_steps=3, seed=1)]


@pytest.mark.parametrize("k", range(6), ids=["ProgressiveBarrier", "UniformWidth", "RandomSearch", "OptunaSearch",
                                             "GeometricProgram", "NetAdaptV2"])
def test_every_strategy_runs_the_users_functions_never_on_their_module(k: int) -> None:
    model = cnn()
    before = copy.deepcopy(model.state_dict())
    p = problem(objective(), model)
    result = _strategies()[k]().run(p)
    phases = [c[3] for c in CALLS if c[0] == "fine_tune"]
    assert phases[-1] == "long" and set(phases[:-1]) <= {"short"} if k < 5 else phases == ["long", "long"]
    assert result.final.test_accuracy is not None and 0 <= result.final.test_accuracy <= 1
    for bound in p.bind():
        assert bound.met(bound.estimate(result.final.network))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's module untouched


def test_a_process_pool_gives_the_serial_result(tmp_path: Path) -> None:
    serial = ProgressiveBarrier(**STEPS).run(problem(objective()))
    with ProcessPoolExecutor(2) as pool:
        pooled = ProgressiveBarrier(executor=pool, **STEPS).run(problem(objective()), run_dir=tmp_path / "run")
    assert [h.to_dict() for h in pooled.history] == [h.to_dict() for h in serial.history]
    assert pooled.final.accuracy == serial.final.accuracy


def test_a_function_that_cannot_travel_is_refused_before_any_work() -> None:
    lam = FunctionObjective(lambda m, s, seed, phase: None, score)
    with ProcessPoolExecutor(1) as pool, pytest.raises(ConfigError) as info:
        ProgressiveBarrier(executor=pool, **STEPS).run(problem(lam))
    message = str(info.value)
    assert "fine_tune=" in message and "<lambda>" in message and "top level" in message and "\n" not in message
    assert CALLS == []  # nothing was fine-tuned or scored


@pytest.mark.parametrize(("broken", "value", "words"), [
    ("score", float("nan"), "score test_your_work.score returned nan"),
    ("score", "high", "returned 'high' (str), not a number"),
    ("score", torch.tensor([1.0, 2.0]), "not a number"),
    ("fine_tune", "out of data", "fine_tune test_your_work.fine_tune raised RuntimeError: out of data"),
])
def test_a_failing_function_stops_the_run_at_its_proposal_and_the_fixed_run_resumes(
        tmp_path: Path, broken: str, value: object, words: str) -> None:
    reference = ProgressiveBarrier(**STEPS).run(problem(objective()))
    CALLS.clear()
    BROKEN[broken] = value
    with pytest.raises(ObjectiveError) as info:
        ProgressiveBarrier(**STEPS).run(problem(objective()), run_dir=tmp_path / "run")
    message = str(info.value)
    assert message.startswith("proposal ") and words in message and "resume" in message and "\n" not in message
    BROKEN.clear()
    resumed = ProgressiveBarrier(**STEPS).run(problem(objective()), run_dir=tmp_path / "run", resume=True)
    assert [h.to_dict() for h in resumed.history] == [h.to_dict() for h in reference.history]
    assert resumed.final.accuracy == reference.final.accuracy


def test_fine_tune_returning_something_else_than_steps_is_refused() -> None:
    bad = FunctionObjective(_returns_text, score)
    with pytest.raises(ObjectiveError, match="returned 'done': it may return the number of optimizer steps"):
        bad.short_term(cnn(), 2, 0)


def _returns_text(model: nn.Module, steps: int, seed: int, phase: str) -> str:
    return "done"


def test_a_function_that_moves_the_model_to_a_device_gets_it_back_on_the_cpu() -> None:
    moved = FunctionObjective(_to_meta_and_back, score)
    module = cnn()
    moved.short_term(module, 1, 0)
    assert all(p.device.type == "cpu" for p in module.parameters())


def _to_meta_and_back(model: nn.Module, steps: int, seed: int, phase: str) -> None:
    model.to(torch.float64).to(torch.float32)  # a stand-in for .cuda() on a machine without one


# --- Accuracy.from_loaders --------------------------------------------------------------------


class Counted(Dataset):  # type: ignore[type-arg]
    """A map-style dataset that counts what is read, one example at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return self.x[i], int(self.y[i])


def test_from_loaders_is_seeded_streamed_and_cycles() -> None:
    data = Counted(DIGITS.train_x[:100], DIGITS.train_y[:100])
    objective = Accuracy.from_loaders(DataLoader(data, batch_size=16, shuffle=True, drop_last=True),
                                      loader("holdout"), loader("test"), trainer=Trainer(lr=0.05))
    state = torch.random.get_rng_state()
    runs = []
    for seed in (3, 3, 4):
        module = cnn()
        evaluation = objective.short_term(module, 15, seed)  # 15 steps of 6 a pass: cycles 3 times
        runs.append((evaluation, [v.clone() for v in module.state_dict().values()]))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG left as it was
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[2][1], strict=True))
    assert runs[0][0].steps == 15 and data.reads == 3 * 15 * 16 + 16  # streamed: only the batches used (+ example)
    assert objective.test(cnn()) is not None and objective.example_input().shape == (1, 1, 16, 16)


def test_from_loaders_on_the_same_examples_scores_like_the_in_memory_splits() -> None:
    in_memory = Accuracy(DIGITS)
    streamed = Accuracy.from_loaders(loader("train"), loader("holdout"), loader("test"))
    module = cnn()
    assert streamed.holdout(module) == in_memory.holdout(module)
    assert streamed.test(module) == in_memory.test(module)


class Stream(IterableDataset):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(64):
            yield DIGITS.train_x[i], DIGITS.train_y[i]


def test_from_loaders_takes_an_iterable_dataset_and_the_search_runs_on_it() -> None:
    objective = Accuracy.from_loaders(DataLoader(Stream(), batch_size=16), loader("holdout"))
    result = ProgressiveBarrier(**STEPS).run(problem(objective))
    assert result.final.test_accuracy is None and 0 <= result.final.accuracy <= 1


@pytest.mark.parametrize(("batches", "words"), [
    ([(torch.rand(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)), (torch.rand(4, 1, 8, 8), torch.zeros(4))],
     "train loader batch 1 has inputs of shape (4, 1, 8, 8) but the model takes (1, 16, 16)"),
    ([(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.zeros(4))], "inputs of dtype torch.uint8"),
    ([(torch.rand(4, 1, 16, 16), torch.rand(4))], "labels of shape (4,) and dtype torch.float32"),
    ([{"image": torch.rand(4, 1, 16, 16)}], "train loader batch 0 is dict"),
])
def test_a_loader_of_the_wrong_shape_or_dtype_is_one_line(batches: list, words: str) -> None:  # type: ignore[type-arg]
    objective = Accuracy.from_loaders(batches, loader("holdout"))
    with pytest.raises(DataError) as info:
        objective.short_term(cnn(), 3, 0)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_data_of_a_problem_must_fit_the_model() -> None:
    objective = Accuracy.from_loaders([(torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))], loader("holdout"))
    with pytest.raises(ConfigError, match=r"shaped \(3, 16, 16\) but the model was traced on \(1, 16, 16\)"):
        problem(objective)


# --- the Trainer's recipe -------------------------------------------------------------------


def adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3)


def test_a_recipe_of_ones_own_optimizer_loss_schedule_and_clipping() -> None:
    seen: dict[str, object] = {}

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen["loss"] = True
        return nn.functional.cross_entropy(output, target, label_smoothing=0.1)

    def schedule(optimizer: torch.optim.Optimizer, steps: int, phase: str) -> object:
        seen["optimizer"], seen["phase"] = type(optimizer).__name__, phase
        return torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=steps)

    trainer = Trainer(optimizer=adamw, loss=loss, lr_schedule=schedule, clip_grad_norm=1e-6)
    module = cnn()
    before = [p.detach().clone() for p in module.parameters()]
    trainer.train(module, DIGITS.train_x, DIGITS.train_y, 3, 0, phase="long")
    assert seen == {"loss": True, "optimizer": "AdamW", "phase": "long"}
    moved = max(float((p.detach() - q).abs().max()) for p, q in zip(module.parameters(), before, strict=True))
    assert 0 < moved <= 3 * 1e-3 * 1.01  # AdamW's steps are lr-sized whatever the (clipped) gradient


def test_named_schedules_per_phase() -> None:
    lrs: list[float] = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    trainer = Trainer(optimizer=lambda p: Spy(p, lr=0.1), short_schedule="linear", long_schedule="constant")
    trainer.train(cnn(), DIGITS.train_x, DIGITS.train_y, 4, 0)
    trainer.train(cnn(), DIGITS.train_x, DIGITS.train_y, 2, 0, phase="long")
    assert lrs == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.1, 0.1])


def test_auto_is_cuda_where_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Trainer().device == torch.device("cuda") and Trainer(device="cuda:1").device == torch.device("cuda:1")
    assert Trainer(device="cpu").device.type == "cpu"


def test_devices() -> None:
    assert Trainer().device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert Trainer(device="cpu").device.type == "cpu"
    for bad, words in (("tpu", "not a torch device"), ("mps", "trains on \"cpu\" or \"cuda\"")):
        with pytest.raises(ConfigError, match=words):
            Trainer(device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            Trainer(device="cuda")


def test_what_is_not_a_function_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"optimizer=.*is not callable"):
        Trainer(optimizer="adamw")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="score=3 is not callable"):
        FunctionObjective(fine_tune, 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="example_input is a list"):
        FunctionObjective(fine_tune, score, example_input=[1, 2])  # type: ignore[arg-type]


def test_objectives_pickle_for_workers() -> None:
    for made in (objective(), Accuracy.from_loaders(loader("train"), loader("holdout")), Accuracy(DIGITS)):
        pickle.loads(pickle.dumps(made))


def test_splits_kept_as_given_are_what_the_model_takes() -> None:
    raw = (DIGITS.train_x * 0.5 + 0.5).numpy()
    s = Splits.from_arrays(raw, DIGITS.train_y.numpy(), holdout_per_class=5, test_fraction=0.0)
    assert s.train_x.shape[1:] == (1, 16, 16) and float(s.train_x.max()) == float(raw.max())


def test_a_timm_model_adapts_on_the_users_dataloaders() -> None:
    """The coverage issue's real models, with a user's loaders and recipe: timm's ResNet-18 as timm builds it."""
    from netopt.testing.peers import import_timm

    torch.manual_seed(0)
    model = import_timm().create_model("resnet18", pretrained=False, num_classes=10, in_chans=1).eval()
    objective = Accuracy.from_loaders(loader("train", shuffle=True), loader("holdout"), loader("test"),
                                      trainer=Trainer(optimizer=adamw, label_smoothing=0.1, clip_grad_norm=1.0))
    traced = netopt.trace(model, DIGITS.train_x[:1])
    p = Problem(traced, [MACsConstraint("85%", schedule=ReductionSchedule("15%"))], objective)
    result = ProgressiveBarrier(short_term_steps=1, long_term_steps=2).run(p)
    assert p.bind()[0].met(result.final.resources["macs"]) and result.final.test_accuracy is not None
    x = DIGITS.test_x[:4]
    assert result.final.module(x).shape == (4, 10)
