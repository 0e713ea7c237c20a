from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import study_dict, write_study

from sweep import config
from sweep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["quickstart", "seed-comparison", "seed-cnn-activations"])
def test_shipped_studies_validate(name: str) -> None:
    cfg = config.load(ROOT / "studies" / f"{name}.yaml")
    assert cfg.study == name


def test_seed_comparison_is_the_tutorials_four_variants() -> None:
    cfg = config.load(ROOT / "studies" / "seed-comparison.yaml")
    assert [c.params() for c in cfg.search.configs] == [
        {"activation": "relu"},
        {"activation": "leaky_relu", "leaky_alpha": 0.1},
        {"activation": "prelu", "prelu_alpha_init": "zeros", "prelu_shared_axes": "none"},
        {"activation": "prelu", "prelu_alpha_init": 0.25, "prelu_shared_axes": "none"},
    ]
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.training.optimizer) == (25, 250, "adam")
    assert cfg.dataset.name == "mnist" and cfg.dataset.validation_split == 0.2
    assert cfg.search.repeats >= 3


def test_issue_contract_example_keeps_working() -> None:
    cfg = config.load(ROOT / "studies" / "seed-cnn-activations.yaml")
    assert cfg.search.space.activation == ["relu", "leaky_relu", "prelu"]
    assert cfg.search.space.leaky_alpha.log is True
    assert cfg.search.space.prelu_alpha_init == ["zeros", 0.25]
    assert cfg.search.direction == "maximize"


def _problems(tmp_path: Path, data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config.load(write_study(tmp_path, data))
    return e.value.problems


def test_all_problems_reported_at_once_with_field_paths(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz, configs=None, sampler="tpe", n_trials=3,
                   space={"activation": ["relu", "Leaky-ReLU"], "leaky_alpha": {"low": -0.1, "high": 0.5}})
    d["training"]["epochs"] = 0
    probs = _problems(tmp_path, d)
    text = "\n".join(probs)
    assert "search.space.activation.1: unknown activation 'Leaky-ReLU'; did you mean 'leaky_relu'?" in text
    assert "search.space.leaky_alpha" in text and "must be >= 0, got -0.1" in text
    assert "training.epochs: Input should be greater than 0, got 0" in text


def test_low_above_high(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz, configs=None, n_trials=2,
                   space={"activation": ["leaky_relu"], "leaky_alpha": {"low": 0.5, "high": 0.1}})
    assert _problems(tmp_path, d) == ["search.space.leaky_alpha: low must be <= high, got low=0.5, high=0.1"]


def test_unknown_key_and_missing_field(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz)
    d["trainin"] = d.pop("training")
    del d["study"]
    probs = _problems(tmp_path, d)
    assert "study: required field is missing" in probs
    assert any(p.startswith("trainin: unknown key 'trainin'") for p in probs)


def test_param_for_wrong_activation_in_configs(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz, configs=[{"activation": "relu", "leaky_alpha": 0.1}])
    assert _problems(tmp_path, d) == ["search.configs.0: leaky_alpha applies only to activation 'leaky_relu', not 'relu'"]


def test_space_and_configs_are_exclusive(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz, space={"activation": ["relu"]})
    assert "exactly one of `space`" in _problems(tmp_path, d)[0]


def test_grid_needs_step_for_ranges(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz, configs=None, sampler="grid",
                   space={"activation": ["leaky_relu"], "leaky_alpha": {"low": 0.1, "high": 0.3}})
    assert "grid sampler needs a list of values or a `step`" in _problems(tmp_path, d)[0]


def test_val_metric_needs_validation_split(tmp_path: Path, tiny_npz: Path) -> None:
    d = study_dict(tiny_npz)
    d["dataset"]["validation_split"] = 0
    assert "needs dataset.validation_split > 0" in _problems(tmp_path, d)[0]


def test_stored_config_roundtrip(tiny_npz: Path) -> None:
    cfg = config.parse(study_dict(tiny_npz), "x")
    again = config.from_json(cfg.to_json(), "stored")
    assert again.model_dump() == cfg.model_dump()
    assert again.source == "stored" and cfg.source == "x"


# --- search.pruner: each pruner takes exactly its Optuna arguments, and gets every one given ---

def _cfg(tiny_npz: Path, **search: object) -> config.StudyConfig:
    return config.parse(study_dict(tiny_npz, **search), "x")


@pytest.mark.parametrize(("pruner", "cls", "attrs"), [
    ({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 3, "interval_steps": 2, "n_min_trials": 4},
     "MedianPruner", {"_n_startup_trials": 2, "_n_warmup_steps": 3, "_interval_steps": 2, "_n_min_trials": 4}),
    ({"name": "hyperband", "min_resource": 2, "max_resource": 9, "reduction_factor": 2},
     "HyperbandPruner", {"_min_resource": 2, "_max_resource": 9, "_reduction_factor": 2}),
    ({"name": "threshold", "lower": 0.2, "upper": 0.9, "n_warmup_steps": 1, "interval_steps": 3},
     "ThresholdPruner", {"_lower": 0.2, "_upper": 0.9, "_n_warmup_steps": 1, "_interval_steps": 3}),
    ({"name": "none"}, "NopPruner", {}),
])
def test_every_pruner_field_reaches_optuna(tiny_npz: Path, pruner: dict, cls: str, attrs: dict) -> None:
    import optuna

    from sweep.search import make_pruner

    cfg = _cfg(tiny_npz, pruner=pruner)
    built = make_pruner(cfg.search)
    assert type(built) is getattr(optuna.pruners, cls)
    assert {k: getattr(built, k) for k in attrs} == attrs
    assert cfg.model_dump()["search"]["pruner"] == pruner  # stored: exactly what Optuna got


def test_pruner_defaults_are_optunas_and_hyperband_runs_to_the_last_epoch(tiny_npz: Path) -> None:
    dumps = {n: _cfg(tiny_npz, pruner=n).model_dump()["search"]["pruner"] for n in ("median", "hyperband")}
    assert dumps == {
        "median": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
        "hyperband": {"name": "hyperband", "min_resource": 1, "max_resource": 2, "reduction_factor": 3},  # epochs: 2
    }
    auto = _cfg(tiny_npz, pruner={"name": "hyperband", "max_resource": "auto"})
    assert auto.search.pruner.max_resource == "auto"


@pytest.mark.parametrize(("pruner", "field", "takes"), [
    ("median", "lower", "n_startup_trials, n_warmup_steps, interval_steps, n_min_trials"),
    ("median", "min_resource", "n_startup_trials, n_warmup_steps, interval_steps, n_min_trials"),
    ("hyperband", "n_startup_trials", "min_resource, max_resource, reduction_factor"),
    ("hyperband", "n_warmup_steps", "min_resource, max_resource, reduction_factor"),
    ("threshold", "n_startup_trials", "lower, upper, n_warmup_steps, interval_steps"),
    ("none", "n_warmup_steps", "no other fields (give `name` only)"),
])
def test_pruner_field_it_does_not_use_is_refused(tmp_path: Path, tiny_npz: Path, pruner: str, field: str,
                                                 takes: str) -> None:
    given = {"name": pruner, field: 1}
    if pruner == "threshold":
        given["lower"] = 0.1
    assert _problems(tmp_path, study_dict(tiny_npz, pruner=given)) == [
        f"search.pruner.{field}: the {pruner} pruner does not use `{field}`; it takes {takes}"]


@pytest.mark.parametrize(("pruner", "problem"), [
    ({"name": "threshold"}, "search.pruner: the threshold pruner needs `lower` or `upper`"),
    ({"name": "threshold", "lower": 0.9, "upper": 0.1}, "search.pruner: lower must be <= upper, got lower=0.9, upper=0.1"),
    ({"name": "hyperband", "min_resource": 3}, "search.pruner: min_resource must be <= max_resource (training.epochs "
     "unless given), got min_resource=3, max_resource=2"),
    ({"name": "hyperband", "max_resource": "all"}, "search.pruner.max_resource: expected a number of epochs >= 1 or "
     "'auto', got 'all'"),
    ({"name": "hyperband", "reduction_factor": 1}, "search.pruner.reduction_factor: Input should be greater than or "
     "equal to 2, got 1"),
])
def test_pruner_values_optuna_would_reject_or_ignore(tmp_path: Path, tiny_npz: Path, pruner: dict, problem: str) -> None:
    assert _problems(tmp_path, study_dict(tiny_npz, pruner=pruner)) == [problem]


# sweep before 2026-11 stored these five fields for every pruner and ignored those it did not use
OLD_PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 0, "lower": None, "upper": None}


@pytest.mark.parametrize("name", ["none", "median", "hyperband", "threshold"])
def test_pruner_stored_by_an_older_sweep_still_parses(tmp_path: Path, tiny_npz: Path, name: str) -> None:
    extra = {"lower": 0.5} if name == "threshold" else {}
    stored = study_dict(tiny_npz, pruner={"name": name, **OLD_PRUNER, **extra})
    cfg = config.parse(stored, "stored", stored=True)
    # what a current file naming the same pruner gives: a resume is not refused as a change
    current = {"name": name, **extra} if extra else name
    # and, stored before `tracking` existed, it keeps every model (a file's default is 3)
    assert cfg.tracking.keep_models == "all"
    assert cfg.model_dump(exclude={"tracking"}) == _cfg(tiny_npz, pruner=current).model_dump(exclude={"tracking"})
    assert config.from_json(cfg.to_json(), "again").model_dump() == cfg.model_dump()  # stable
    with pytest.raises(ConfigError, match=rf"search.pruner.\w+: the {name} pruner does not use"):
        config.parse(stored, "a user's file")  # never dropped from what a user wrote


def test_repeats_are_refused_where_nothing_repeats(tmp_path: Path, tiny_npz: Path) -> None:
    sampled = study_dict(tiny_npz, configs=None, sampler="random", n_trials=4, repeats=3,
                         space={"activation": ["relu", "elu"]})
    assert _problems(tmp_path, sampled) == [
        "search.repeats: the random sampler draws every trial anew, so `repeats` (3) would be ignored; remove it, "
        "or list the configurations under `configs` (or use the grid sampler) to run each with seeds seed, seed+1, ..."]
    # a study stored by an older sweep ran each sampled trial once: that is what its config says now
    assert config.parse(sampled, "stored", stored=True).search.repeats == 1
    grid = study_dict(tiny_npz, configs=None, sampler="grid", repeats=3, space={"activation": ["relu", "elu"]})
    assert config.parse(grid, "x").search.repeats == 3


# --- the CLI: every bad input gives one clear message, exit 2, no traceback, nothing written ---

def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _bad_npz(folder: Path) -> Path:
    p = folder / "wrong.npz"
    np.savez(p, images=np.zeros((3, 28, 28)), labels=np.zeros(3))
    return p


BAD = {
    "missing file": (None, ["nope.yaml: file not found"]),
    "broken yaml": ("study: x\ndataset: [unclosed\n", ["line ", "invalid YAML"]),
    "unknown key": ({"colour": "red"}, ["colour: unknown key 'colour'"]),
    "unknown activation": ({"search": {"configs": [{"activation": "Leaky-ReLU"}]}},
                           ["search.configs.0.activation: unknown activation 'Leaky-ReLU'; did you mean 'leaky_relu'?"]),
    "negative slope": ({"search": {"configs": None, "n_trials": 2, "space": {
        "activation": ["leaky_relu"], "leaky_alpha": {"low": -0.1, "high": 0.5}}}},
        ["search.space.leaky_alpha", "must be >= 0, got -0.1"]),
    "low above high": ({"search": {"configs": None, "n_trials": 2, "space": {
        "activation": ["leaky_relu"], "leaky_alpha": {"low": 0.5, "high": 0.1}}}},
        ["search.space.leaky_alpha: low must be <= high, got low=0.5, high=0.1"]),
    "unknown dataset": ({"dataset": {"name": "imagenet"}},
                        ["dataset.name: Input should be 'mnist', 'fashion_mnist', 'cifar10', 'digits', 'npz' or 'csv', got 'imagenet'"]),
    "missing path": ({"dataset": {"name": "mnist", "path": "no/such.npz"}},
                     ["dataset.path: file not found: 'no/such.npz'"]),
    "pruner field it does not use": ({"search": {"pruner": {"name": "hyperband", "n_warmup_steps": 2}}},
                                     ["search.pruner.n_warmup_steps: the hyperband pruner does not use `n_warmup_steps`; "
                                      "it takes min_resource, max_resource, reduction_factor"]),
    "wrong arrays": ("WRONG_NPZ", ["dataset.path: ", "wrong.npz: expected arrays x_train, y_train, x_test, y_test; missing x_train",
                                  "(found: images, labels)"]),
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_bad_input(case: str, tmp_path: Path, tiny_npz: Path) -> None:
    content, expected = BAD[case]
    if content is None:
        target = "nope.yaml"
    else:
        if content == "WRONG_NPZ":
            content = {"dataset": {"name": "npz", "path": str(_bad_npz(tmp_path))}}
        text = content if isinstance(content, str) else yaml.safe_dump(
            {k: v for k, v in _merge(study_dict(tiny_npz), content).items()})
        (tmp_path / "bad.yaml").write_text(text)
        target = "bad.yaml"
    r = _run_cli("run", target, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    for piece in expected:
        assert piece in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {target}"), r.stderr
    written = {p.name for p in tmp_path.iterdir()} - {"bad.yaml", "tiny.npz", "wrong.npz"}
    assert written == set(), f"stores written on bad input: {written}"


@pytest.mark.parametrize("args", [["best", "nosuch"], ["run", "nosuch"], ["compare", "nosuch"]])
def test_unknown_study_name_writes_nothing(args: list[str], tmp_path: Path) -> None:
    r = _run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no Optuna storage at" in r.stderr and "--storage" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_default_pruner_by_kind_of_search(tiny_npz: Path) -> None:
    """Median for a sampled search; none for an explicit plan or a grid, which are comparisons."""
    def pruner(**search: object) -> str:
        d = study_dict(tiny_npz, **search)
        d["search"].pop("pruner")
        return config.parse(d, "x").search.pruner.name

    space = {"activation": ["relu", "leaky_relu"], "leaky_alpha": [0.1, 0.2]}
    assert pruner(configs=None, sampler="tpe", n_trials=4, space=space) == "median"
    assert pruner(configs=None, sampler="random", n_trials=4, space=space) == "median"
    assert pruner(configs=None, sampler="grid", space=space) == "none"
    assert pruner() == "none"  # study_dict's explicit configs
    assert pruner(repeats=3) == "none"


@pytest.mark.parametrize("search", [{"repeats": 3}, {"configs": None, "sampler": "grid", "repeats": 2,
                                                     "space": {"activation": ["relu", "elu"]}}])
def test_a_pruned_repeated_comparison_is_refused(tiny_npz: Path, search: dict) -> None:
    d = study_dict(tiny_npz, pruner="median", **search)
    with pytest.raises(ConfigError, match=r"search\.repeats: a configuration repeated over seeds \(\d repeats\) is a "
                                          r"comparison, and the median pruner would bias it"):
        config.parse(d, "x.yaml")
    # a study stored that way by an earlier sweep still loads, as it ran
    assert config.parse(d, "stored", stored=True).search.pruner.name == "median"


# --- dataset and model families: each takes its own fields; dumps are what they were -----------

DIABETES = ROOT / "examples" / "data" / "diabetes_types.csv"
IMAGE = '"name":"{}","path":null,"train_samples":null,"test_samples":null,"validation_split":0.2'


def _family(dataset: dict, model: object = None) -> config.StudyConfig:
    d = {"study": "x", "dataset": dataset, "search": {"configs": [{"activation": "relu"}]}}
    return config.parse(d if model is None else {**d, "model": model}, "s.yaml")


# the exact JSON stored with a study and logged to MLflow: a resumed study compares it key by key
@pytest.mark.parametrize(("dataset", "model", "stored"), [
    ({"name": "mnist"}, None, '"dataset":{' + IMAGE.format("mnist") + '},"model":{"name":"seed_cnn","placement":"layer"}'),
    ({"name": "digits"}, "seed_cnn", '"dataset":{' + IMAGE.format("digits") + '},"model":{"name":"seed_cnn","placement":"layer"}'),
    ({"name": "cifar10"}, {"placement": "inline"},
     '"dataset":{' + IMAGE.format("cifar10") + '},"model":{"name":"seed_cnn","placement":"inline"}'),
    ({"name": "fashion_mnist"}, "mlp", '"dataset":{' + IMAGE.format("fashion_mnist") + '},'
     '"model":{"name":"mlp","hidden":[64],"output":"auto","output_units":null,"placement":"layer"}'),
    ({"name": "csv", "path": str(DIABETES), "target": "Type"},
     {"name": "mlp", "hidden": [8, 4], "output": "softmax", "output_units": 3, "placement": "inline"},
     f'"dataset":{{"name":"csv","path":{json.dumps(str(DIABETES))},"train_samples":null,"test_samples":null,'
     '"validation_split":0.2,"target":"Type","drop":[],"test_split":0.2,"seed":0},'
     '"model":{"name":"mlp","hidden":[8,4],"output":"softmax","output_units":3,"placement":"inline"}'),
], ids=["mnist", "digits-shorthand", "model-without-name", "mlp-defaults", "csv-mlp"])
def test_each_family_dumps_its_own_fields_in_their_order(dataset: dict, model: object, stored: str) -> None:
    cfg = _family(dataset, model)
    assert stored in cfg.to_json()
    assert config.from_json(cfg.to_json(), "stored").to_json() == cfg.to_json()
    assert cfg.model.spec() == cfg.model_dump(mode="json")["model"]


def test_defaults_belong_to_their_family() -> None:
    csv = _family({"name": "csv", "path": str(DIABETES), "target": "Type"}, "mlp")
    assert isinstance(csv.dataset, config.CsvDatasetConfig) and isinstance(csv.model, config.MlpConfig)
    assert (csv.dataset.drop, csv.dataset.test_split, csv.dataset.seed) == ([], 0.2, 0)
    assert (csv.model.hidden, csv.model.output, csv.model.output_units) == ([64], "auto", None)
    image = _family({"name": "npz", "path": str(DIABETES)})  # any existing file: only its presence is checked
    assert isinstance(image.dataset, config.ImageDatasetConfig) and isinstance(image.model, config.SeedCnnConfig)
    assert not any(hasattr(image.dataset, f) for f in ("target", "drop", "test_split", "seed"))
    assert not any(hasattr(image.model, f) for f in ("hidden", "output", "output_units"))
    # a null for another family's field was taken as not given before the families were split
    nulls = _family({"name": "mnist", "target": None, "seed": None}, {"name": "seed_cnn", "hidden": None})
    assert nulls.to_json() == _family({"name": "mnist"}).to_json()
    # ... and a null for the family's own field stays what it was
    assert _family({"name": "csv", "path": str(DIABETES), "target": "Type", "drop": None}).dataset.drop is None


@pytest.mark.parametrize(("dataset", "model", "problems"), [
    ({"name": "npz", "drop": ["a"], "train_samples": 0, "seed": 3}, None, [
        "dataset.train_samples: Input should be greater than 0, got 0",
        "dataset.drop: applies to dataset 'csv' only, not 'npz'; remove it",
        "dataset.seed: applies to dataset 'csv' only, not 'npz'; remove it"]),
    ({"name": "mnist", "colour": 1, "hidden": [2]}, {"output": "sigmoid", "seed": 1, "placement": "x"}, [
        "dataset.colour: unknown key 'colour'; check the spelling against the documented study keys",
        "dataset.hidden: unknown key 'hidden'; check the spelling against the documented study keys",
        "model.placement: Input should be 'layer' or 'inline', got 'x'",
        "model.output: applies to model 'mlp' only, not 'seed_cnn'; remove it",
        "model.seed: unknown key 'seed'; check the spelling against the documented study keys"]),
    ({"name": "csv", "path": str(DIABETES), "target": "Type", "test_split": 1.5, "drop": "Type"},
     {"name": "mlp", "hidden": [0]}, [
        "dataset.drop: Input should be a valid list, got 'Type'",
        "dataset.test_split: Input should be less than 1, got 1.5",
        "model.hidden.0: Input should be greater than 0, got 0"]),
    ({"name": "imagenet"}, {"name": "resnet"}, [
        "dataset.name: Input should be 'mnist', 'fashion_mnist', 'cifar10', 'digits', 'npz' or 'csv', got 'imagenet'",
        "model.name: Input should be 'seed_cnn' or 'mlp', got 'resnet'"]),
    ({"path": "x.npz"}, 3, ["dataset.name: required field is missing",
                            "model: Input should be a valid dictionary, got 3"]),
], ids=["csv-fields-on-npz", "typos-and-mlp-fields-on-seed_cnn", "own-fields", "unknown-names", "no-name-not-a-mapping"])
def test_family_problems_name_the_field_as_written(dataset: dict, model: object, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        _family(dataset, model)
    assert e.value.problems == problems
