"""Data loaders (IDX, MNIST, CIFAR-10 pickle and JPEG ImageFolder, image folders) and the bundled files."""

import gzip
import os
import pickle
import tarfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from fisher_ref import datasets
from fisher_ref.datasets import (CIFAR10_CLASSES, CIFAR10_JPEG_NOTE, load_bundled_mnist, load_cifar10,
                                 load_image_folder, load_mnist, read_idx)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}
needs_shared_mnist = pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no shared MNIST data")


def idx_bytes(arr, dtype=None):
    dtype = np.dtype(dtype or arr.dtype.str.replace("<", ">"))
    header = bytes([0, 0, _CODES[dtype.str.replace("|", "")], arr.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dtype).tobytes()


def write_idx(path, arr, *, gz):
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(folder, n=7, *, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, m in (("train", "train", n + 3), ("test", "t10k", n)):
        x = rng.integers(0, 256, size=(m, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=m).astype(np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", x, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz=gz)
        out[split] = (x, y)
    return out


# -------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (2, 1, 3, 2), (0, 4)])
def test_read_idx_round_trip(tmp_path, gz, dtype, shape, rng):
    arr = (rng.normal(size=shape) * 50).astype(np.dtype(dtype).newbyteorder("="))
    out = read_idx(write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), arr.astype(dtype), gz=gz))
    assert out.shape == shape
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_from_content(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    p = tmp_path / "no-suffix"
    p.write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(p), arr)
    q = tmp_path / "plain.gz"  # a misleading name: plain bytes
    q.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(q), arr)


@pytest.mark.parametrize("raw, match", [
    (b"", "not an IDX file"),
    (b"\x00\x00", "not an IDX file"),
    (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "not an IDX file"),
    (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "not an IDX file"),
    (b"\x00\x00\x08\x03" + (3).to_bytes(4, "big"), "truncated IDX header"),
    (b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + b"abc", "truncated IDX file"),
    (b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"ab", "truncated IDX file"),
    (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "corrupt IDX file"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_corrupt_files(tmp_path, raw, match, gz):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=match) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)))
    p = tmp_path / "cut.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="gzip") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------ MNIST
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("subfolder", [True, False])
def test_load_mnist_synthetic(tmp_path, gz, subfolder):
    ref = write_mnist(tmp_path / "mnist" if subfolder else tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y = load_mnist(tmp_path, split)
        assert x.dtype == np.uint8 and x.shape == (len(ref[split][0]), 28, 28)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, ref[split][0])
        np.testing.assert_array_equal(y, ref[split][1])
    x, y = load_mnist(tmp_path, "test", limit=3)
    assert x.shape == (3, 28, 28) and y.shape == (3,)
    np.testing.assert_array_equal(x, ref["test"][0][:3])
    assert load_mnist(tmp_path, limit=0)[0].shape == (0, 28, 28)


def test_load_mnist_default_dir_from_env(tmp_path, monkeypatch):
    ref = write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("FISHER_REF_DATA", str(tmp_path))
    np.testing.assert_array_equal(load_mnist()[1], ref["test"][1])


def test_load_mnist_errors(tmp_path):
    ref = write_mnist(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")
    with pytest.raises(ValueError, match="limit"):
        load_mnist(tmp_path, limit=-1)
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_mnist(tmp_path / "elsewhere", "train")
    # labels where the images should be: wrong magic number
    lab = tmp_path / "t10k-labels-idx1-ubyte.gz"
    img = tmp_path / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(lab.read_bytes())
    with pytest.raises(ValueError, match="2051") as e:
        load_mnist(tmp_path)
    assert str(img) in str(e.value)
    # count mismatch between images and labels
    write_idx(img, ref["test"][0][:-1], gz=True)
    with pytest.raises(ValueError, match="labels"):
        load_mnist(tmp_path)
    # truncated image file
    raw = idx_bytes(ref["test"][0])
    img.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(ValueError, match="truncated") as e:
        load_mnist(tmp_path)
    assert str(img) in str(e.value)


@needs_shared_mnist
def test_real_mnist_label_counts():
    x, y = load_mnist(SHARED, "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert 0 < x.mean() < 255
    y_train = read_idx(SHARED / "mnist" / "train-labels-idx1-ubyte.gz")
    assert np.bincount(y_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS


# ---------------------------------------------------------------------------------------- bundled
def test_bundled_mnist_sample():
    x, y, idx = load_bundled_mnist(return_indices=True)
    assert x.shape == (500, 1, 28, 28) and x.dtype == np.float64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    assert y.dtype == np.int64 and np.bincount(y, minlength=10).tolist() == [50] * 10
    assert np.all(np.diff(idx) > 0)  # test-set order, no repeats
    x2, y2 = load_bundled_mnist()
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


@needs_shared_mnist
def test_bundled_mnist_sample_is_the_first_50_per_class():
    xt, yt = load_mnist(SHARED, "test")
    x, y, idx = load_bundled_mnist(return_indices=True)
    expected = np.sort(np.concatenate([np.flatnonzero(yt == c)[:50] for c in range(10)]))
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(y, yt[idx])
    np.testing.assert_array_equal(np.rint(x[:, 0] * 255).astype(np.uint8), xt[idx])


def _bundled(name):
    return resources.files("fisher_ref") / "data" / name


def _mlp_logits(f, x):
    h = np.tanh(x.reshape(len(x), -1) @ f["W0"].astype(np.float64).T + f["b0"])
    return h @ f["W1"].astype(np.float64).T + f["b1"]


def test_bundled_mlp_weights():
    with resources.as_file(_bundled("mnist_mlp_tanh.npz")) as p, np.load(p, allow_pickle=False) as f:
        assert f["W0"].shape == (100, 784) and f["W1"].shape == (10, 100)
        assert f["b0"].shape == (100,) and f["b1"].shape == (10,)
        assert all(f[k].dtype == np.float32 for k in ("W0", "b0", "W1", "b1"))
        assert str(f["activation"]) == "tanh"
        assert f["input_shape"].tolist() == [1, 28, 28]
        assert float(f["test_accuracy"]) >= 0.97
        assert "train_bundled_model.py" in str(f["command"])
        x, y = load_bundled_mnist()
        assert np.mean(_mlp_logits(f, x).argmax(1) == y) >= 0.95


def test_bundled_onnx_models_match():
    ort = pytest.importorskip("onnxruntime")
    x, y = load_bundled_mnist()
    x32 = x.astype(np.float32)
    with resources.as_file(_bundled("mnist_mlp_tanh.npz")) as p, np.load(p, allow_pickle=False) as f:
        ref = _mlp_logits(f, x)
    for name in ("mnist_mlp_tanh.onnx", "mnist_lenet.onnx"):
        with resources.as_file(_bundled(name)) as p:
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
        assert (inp.name, out.name) == ("input", "logits")
        assert inp.shape[1:] == [1, 28, 28] and not isinstance(inp.shape[0], int)
        logits = np.concatenate([sess.run(None, {"input": x32[:7]})[0], sess.run(None, {"input": x32[7:]})[0]])
        assert logits.shape == (500, 10)
        assert np.mean(logits.argmax(1) == y) >= 0.97
        if name == "mnist_mlp_tanh.onnx":
            np.testing.assert_allclose(logits, ref, atol=1e-4)


def test_bundled_lenet_state_dict_matches_onnx():
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                          nn.ReLU(), nn.Dropout(0.5), nn.Linear(84, 10))
    with resources.as_file(_bundled("mnist_lenet.pt")) as p:
        model.load_state_dict(torch.load(p, weights_only=True))
    model.eval()
    x = load_bundled_mnist()[0][:50].astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    with resources.as_file(_bundled("mnist_lenet.onnx")) as p:
        got = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)


# --------------------------------------------------------------------------------- CIFAR (pickle)
def _cifar_batch(rng, n, *, bytes_keys=True):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    d = {"batch_label": "synthetic", "labels": labels, "data": data, "filenames": [f"{i}.png" for i in range(n)]}
    if bytes_keys:  # as the original batches, pickled by Python 2, read with encoding="bytes"
        d = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}
    return d, data, np.array(labels)


def _write_cifar_pickles(folder, rng, *, bytes_keys=True):
    folder.mkdir(parents=True)
    ref = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d, data, labels = _cifar_batch(rng, 4 if name == "test_batch" else 3, bytes_keys=bytes_keys)
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        ref[name] = (data, labels)
    return ref


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_pickle_format(tmp_path, rng, bytes_keys):
    ref = _write_cifar_pickles(tmp_path / "cifar-10-batches-py", rng, bytes_keys=bytes_keys)
    x, y, src = load_cifar10(tmp_path, "test", return_source=True)
    assert src == "CIFAR-10"
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    data, labels = ref["test_batch"]
    np.testing.assert_array_equal(y, labels)
    # row layout: 1024 red values, then green, then blue, each row-major 32 x 32
    np.testing.assert_array_equal(x[:, :, :, 0], data[:, :1024].reshape(-1, 32, 32))
    np.testing.assert_array_equal(x[:, :, :, 2], data[:, 2048:].reshape(-1, 32, 32))
    np.testing.assert_array_equal(x[1, 5, 7], data[1, [5 * 32 + 7, 1024 + 5 * 32 + 7, 2048 + 5 * 32 + 7]])
    xt, yt = load_cifar10(tmp_path, "train")
    assert xt.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(yt, np.concatenate([ref[f"data_batch_{i}"][1] for i in range(1, 6)]))
    xl, yl = load_cifar10(tmp_path, "train", limit=4)
    np.testing.assert_array_equal(xl, xt[:4])
    # the batches directly in data_dir
    np.testing.assert_array_equal(load_cifar10(tmp_path / "cifar-10-batches-py")[1], labels)


def test_cifar_original_tarball_read_in_place(tmp_path, rng):
    ref = _write_cifar_pickles(tmp_path / "src" / "cifar-10-batches-py", rng)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    x, y = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(y, ref["test_batch"][1])
    assert load_cifar10(tmp_path, "train")[0].shape == (15, 32, 32, 3)


def test_cifar_pickle_rejects_code_and_garbage(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": [1]}))
    with pytest.raises(ValueError, match="data"):
        load_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path, "val")


# --------------------------------------------------------------------------------- image folders
def _save(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_rgb_and_order(tmp_path, rng):
    pytest.importorskip("PIL")
    ref = {}
    for c in ("zebra", "ant", "cat"):
        for name in ("10.png", "2.png", "1.png"):
            a = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            _save(tmp_path / c / name, a)
            ref[c, name] = a
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    x, y, names = load_image_folder(tmp_path)
    assert names == ["ant", "cat", "zebra"]
    assert x.shape == (9, 6, 5, 3) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    order = [(c, n) for c in names for n in ("1.png", "2.png", "10.png")]  # natural order
    np.testing.assert_array_equal(x, np.stack([ref[k] for k in order]))
    # explicit class order, limit, interleave
    x2, y2, names2 = load_image_folder(tmp_path, class_names=["zebra", "ant"], limit=4)
    assert names2 == ["zebra", "ant"] and y2.tolist() == [0, 0, 0, 1]
    np.testing.assert_array_equal(x2[0], ref["zebra", "1.png"])
    x3, y3, _ = load_image_folder(tmp_path, interleave=True)
    assert y3.tolist() == [0, 1, 2] * 3
    np.testing.assert_array_equal(x3[1], ref["cat", "1.png"])
    np.testing.assert_array_equal(x3[5], ref["zebra", "2.png"])
    # a second run gives the same arrays
    np.testing.assert_array_equal(load_image_folder(tmp_path)[0], x)


def test_image_folder_grayscale_sizes(tmp_path, rng):
    pytest.importorskip("PIL")
    _save(tmp_path / "a" / "0.png", rng.integers(0, 256, size=(8, 8), dtype=np.uint8))
    _save(tmp_path / "b" / "0.png", rng.integers(0, 256, size=(8, 8), dtype=np.uint8))
    x, y, _ = load_image_folder(tmp_path)
    assert x.shape == (2, 8, 8) and x.dtype == np.uint8
    _save(tmp_path / "b" / "1.png", rng.integers(0, 256, size=(9, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="different sizes"):
        load_image_folder(tmp_path)
    x, _, _ = load_image_folder(tmp_path, size=(4, 6))
    assert x.shape == (3, 4, 6)
    assert load_image_folder(tmp_path, size=5)[0].shape == (3, 5, 5)
    # a colour image among grayscale ones: everything comes back RGB
    _save(tmp_path / "c" / "0.png", rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    x, _, _ = load_image_folder(tmp_path, class_names=["a", "c"])
    assert x.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(x[0, :, :, 0], x[0, :, :, 2])


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class"):
        load_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="b"):
        load_image_folder(tmp_path, class_names=["a", "b"])
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path)


# ---------------------------------------------------------------------------------- CIFAR (JPEG)
def _write_jpeg_tarball(tmp_path, rng, per_class=2):
    from PIL import Image

    src = tmp_path / "src" / "cifar10-jpeg"
    for split, n in (("train", per_class + 1), ("test", per_class)):
        for c in CIFAR10_CLASSES:
            (src / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(
                    src / split / c / f"{i:04d}.jpg", quality=75)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar10-jpeg")
    return data, src


def test_cifar_jpeg_tarball_read_in_place_and_cached_as_arrays(tmp_path, rng, monkeypatch, capsys):
    pytest.importorskip("PIL")
    data, src = _write_jpeg_tarball(tmp_path, rng)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FISHER_REF_CACHE", str(cache))
    x, y, src_note = load_cifar10(data, "test", return_source=True)
    assert src_note == CIFAR10_JPEG_NOTE and src_note.startswith("CIFAR-10 (JPEG)")
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert y.tolist() == list(range(10)) * 2  # class-interleaved
    ref, _, _ = load_image_folder(src / "test", class_names=CIFAR10_CLASSES, interleave=True)
    np.testing.assert_array_equal(x, ref)  # the same images, in the same order, as the unpacked folder
    # nothing unpacked: the cache holds only the decoded arrays, and says where they went
    (folder,) = list(cache.iterdir())
    assert folder.name.startswith("cifar10-jpeg-") and sorted(p.name for p in folder.iterdir()) == ["arrays-test-v1.npz"]
    assert "cached the decoded CIFAR-10 (JPEG) test images in" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["cifar10-jpeg.tar.gz"]
    # second load: neither read from the tarball nor decoded again
    monkeypatch.setattr(datasets.tarfile, "open", lambda *a, **k: pytest.fail("read twice"))
    monkeypatch.setattr(datasets, "_decode_images", lambda *a, **k: pytest.fail("decoded twice"))
    x2, y2 = load_cifar10(data, "test", limit=5)
    np.testing.assert_array_equal(x2, x[:5])
    np.testing.assert_array_equal(y2, y[:5])


def test_cifar_jpeg_tarball_without_cache_writes_nothing(tmp_path, rng, monkeypatch):
    pytest.importorskip("PIL")
    data, src = _write_jpeg_tarball(tmp_path, rng, per_class=1)
    monkeypatch.setenv("FISHER_REF_CACHE", str(tmp_path / "cache"))
    x, y = load_cifar10(data, "train", limit=7, use_cache=False)
    ref, lab, _ = load_image_folder(src / "train", class_names=CIFAR10_CLASSES, interleave=True, limit=7)
    np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(y, lab)
    assert not (tmp_path / "cache").exists()


def test_a_corrupt_cifar_tarball_is_refused(tmp_path, monkeypatch):
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    monkeypatch.setenv("FISHER_REF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="cannot read the tarball"):
        load_cifar10(tmp_path, "test")


def test_cifar_jpeg_unpacked_folder(tmp_path, rng, monkeypatch):
    pytest.importorskip("PIL")
    _, src = _write_jpeg_tarball(tmp_path, rng, per_class=1)
    monkeypatch.setenv("FISHER_REF_CACHE", str(tmp_path / "cache"))
    x, y = load_cifar10(src.parent, "train")
    assert x.shape == (20, 32, 32, 3) and y.tolist() == list(range(10)) * 2
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(), reason="no shared CIFAR-10 tarball")
def test_real_cifar10_jpeg(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.setenv("FISHER_REF_CACHE", str(tmp_path))
    x, y, src = load_cifar10(SHARED, "test", return_source=True)
    assert src.startswith("CIFAR-10 (JPEG)")
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    assert y[:10].tolist() == list(range(10))
    assert 100 < x.mean() < 140
    t0 = time.perf_counter()
    x2, y2 = load_cifar10(SHARED, "test", limit=100)
    assert time.perf_counter() - t0 < 5
    np.testing.assert_array_equal(x2, x[:100])
