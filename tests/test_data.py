from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sweep.config import CsvDatasetConfig, ImageDatasetConfig
from sweep.data import load, pipelines


def test_npz_is_scaled_capped_and_given_a_channel_axis(mnist_path: Path) -> None:
    d = load(ImageDatasetConfig(name="npz", path=mnist_path, train_samples=1000, test_samples=200))
    assert d.x_train.shape == (1000, 28, 28, 1) and d.x_test.shape == (200, 28, 28, 1)
    assert d.x_train.dtype == np.float32 and 0.0 == d.x_train.min() and d.x_train.max() == 1.0
    assert d.num_classes == 10 and d.input_shape == (28, 28, 1)
    with np.load(mnist_path) as f:
        np.testing.assert_array_equal(d.y_train, f["y_train"][:1000])


def test_split_is_the_last_fraction_like_keras(tiny_npz: Path) -> None:
    d = load(ImageDatasetConfig(name="npz", path=tiny_npz, validation_split=0.2))
    xtr, ytr, xval, yval = d.split()
    assert len(xtr) == 240 and len(xval) == 60
    np.testing.assert_array_equal(xval, d.x_train[240:])


def test_pipelines_batch_and_shuffle_with_the_seed(tiny_npz: Path) -> None:
    d = load(ImageDatasetConfig(name="npz", path=tiny_npz))
    train, val, test = pipelines(d, 64, seed=1)
    sizes = [int(x.shape[0]) for x, _ in train]
    assert sizes == [64, 64, 64, 48] and sum(int(x.shape[0]) for x, _ in val) == 60
    first = lambda seed: next(iter(pipelines(d, 64, seed)[0]))[1].numpy()  # noqa: E731
    np.testing.assert_array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


def test_numpy_pipelines_without_tensorflow_see_every_sample_once_an_epoch(tiny_npz: Path) -> None:
    """The pipelines a Keras backend without TensorFlow gets (JAX on a GPU machine): fit() itself
    drives them here, and each epoch sees every training sample once, in a new seeded order."""
    import keras

    from sweep.data import numpy_pipelines

    d = load(ImageDatasetConfig(name="npz", path=tiny_npz))
    train, val, test = numpy_pipelines(d, 64, seed=1)
    assert len(train) == 4 and len(val) == 1 and len(test) == -(-len(d.x_test) // 64)
    xtr, _, xval, _ = d.split()

    orders = []

    class Seen(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            orders.append(train.order.copy())

    model = keras.Sequential([keras.Input(d.input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(d.num_classes, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(train, validation_data=val, epochs=3, callbacks=[Seen()], verbose=0)
    assert len(hist.history["val_accuracy"]) == 3
    assert len(model.evaluate(test, verbose=0)) == 2
    for order in orders:
        assert sorted(order.tolist()) == list(range(len(xtr)))  # every sample, once
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    batches = [train[i] for i in range(len(train))]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), xtr[orders[-1]])
    assert sum(len(x) for x, _ in (val[i] for i in range(len(val)))) == len(xval)  # unshuffled, whole
    again = numpy_pipelines(d, 64, seed=1)[0]
    again.on_epoch_begin()
    first = numpy_pipelines(d, 64, seed=1)[0]
    first.on_epoch_begin()
    np.testing.assert_array_equal(again.order, first.order)  # the seed decides the order
    other = numpy_pipelines(d, 64, seed=2)[0]
    other.on_epoch_begin()
    assert not np.array_equal(other.order, first.order)


def test_digits_ships_offline_at_mnist_shape() -> None:
    d = load(ImageDatasetConfig(name="digits"))
    assert d.x_train.shape[1:] == (28, 28, 1)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.max() == pytest.approx(1.0) and d.num_classes == 10
    assert set(np.unique(d.y_test)) == set(range(10))  # stratified split


def test_cifar_shaped_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = tmp_path / "c.npz"
    np.savez(p, x_train=rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, (20, 1)),
             x_test=rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, (5, 1)))
    d = load(ImageDatasetConfig(name="npz", path=p))
    assert d.input_shape == (32, 32, 3) and d.y_train.shape == (20,)


def test_failed_download_names_the_two_ways_out(tmp_path: Path) -> None:
    # a proxy on a closed loopback port: the download fails at once, nothing leaves the machine
    code = ("from sweep.config import ImageDatasetConfig\nfrom sweep.data import load\nfrom sweep.errors import SweepError\n"
            "try:\n    load(ImageDatasetConfig(name='fashion_mnist'))\nexcept SweepError as e:\n    print('MSG', e)\n")
    env = {"KERAS_HOME": str(tmp_path), "HTTP_PROXY": "http://127.0.0.1:1", "HTTPS_PROXY": "http://127.0.0.1:1",
           "http_proxy": "http://127.0.0.1:1", "https_proxy": "http://127.0.0.1:1", "PATH": "/usr/bin:/bin",
           "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "MSG could not download the 'fashion_mnist' dataset" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "dataset.path" in r.stdout and "'digits'" in r.stdout


def test_a_dataset_knows_where_it_came_from(tmp_path: Path, tiny_npz: Path) -> None:
    npz = load(ImageDatasetConfig(name="npz", path=tiny_npz))
    assert (npz.title, npz.origin) == ("tiny", str(tiny_npz.resolve()))
    named = load(ImageDatasetConfig(name="mnist", path=tiny_npz))
    assert (named.title, named.origin) == ("mnist", str(tiny_npz.resolve()))  # the study's name for it
    digits = load(ImageDatasetConfig(name="digits"))
    assert digits.title == "digits" and Path(digits.origin).name == "digits.csv.gz" and Path(digits.origin).is_file()
    table = tmp_path / "wine.csv"
    table.write_text("a,b,kind\n" + "".join(f"{i},{i % 3},{'xy'[i % 2]}\n" for i in range(20)))
    wine = load(CsvDatasetConfig(name="csv", path=table, target="kind"))
    assert (wine.title, wine.origin) == ("wine", str(table.resolve()))


def test_parts_and_their_digest(tiny_npz: Path) -> None:
    from sweep.data.images import digest

    d = load(ImageDatasetConfig(name="npz", path=tiny_npz, validation_split=0.2))
    parts = d.parts()
    assert list(parts) == ["training", "validation", "test"]
    assert [len(x) for x, _ in parts.values()] == [240, 60, 100]
    x, y = parts["training"]
    assert digest(x, y) == digest(x.copy(), y.copy()) and len(digest(x, y)) == 8  # the data, not the object
    changed = x.copy()
    changed[-1, -1, -1, 0] += 1  # one value of the last image: hashed too, not only a sample
    assert digest(changed, y) != digest(x, y)
    assert digest(x, y) != digest(x.astype(np.float64), y)
    assert list(load(ImageDatasetConfig(name="npz", path=tiny_npz, validation_split=0.0)).parts()) == ["training", "test"]
