"""Data loaders: MNIST (IDX), CIFAR-10 (pickle batches or a JPEG ImageFolder tarball), image folders.

Nothing is downloaded: the loaders read files that are already on disk. Where no ``data_dir`` is
given they look in ``$FISHER_REF_DATA``, else in ``../shared/data`` next to the repository's root.

* :func:`load_mnist` - the four standard IDX files (gzip-compressed or plain), in ``data_dir`` or
  ``data_dir/mnist``; magic numbers and counts are checked.
* :func:`read_idx` - a generic IDX reader (any element type, any rank).
* :func:`load_cifar10` - the standard ``cifar-10-batches-py`` pickle batches (a folder, or the
  original ``cifar-10-python.tar.gz`` read in place), or ``cifar10-jpeg.tar.gz``: the ImageFolder
  tarball of the shared data, unpacked once into a cache folder outside the repository. That copy is
  **JPEG re-encoded** (quality about 75): against the original images the mean absolute pixel error
  is 4.5-8.1 /255 per image, so results on it are "CIFAR-10 (JPEG)", not CIFAR-10 (see
  :data:`CIFAR10_JPEG_NOTE`; ``return_source=True`` returns the description of what was read).
* :func:`load_image_folder` - the ``root/<class>/<file>`` layout (Pillow imported lazily).
* :func:`load_bundled_mnist` - the 500 MNIST test images shipped with the package.

Only NumPy (and the standard library) is imported at module import time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import re
import sys
import tarfile
import tempfile
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_JPEG_NOTE",
    "CIFAR10_JPEG_SOURCE",
    "CIFAR10_PICKLE_SOURCE",
    "MNIST_LICENSE",
    "MNIST_SOURCE",
    "cache_dir",
    "default_data_dir",
    "load_bundled_mnist",
    "load_cifar10",
    "load_image_folder",
    "load_mnist",
    "read_idx",
]

MNIST_SOURCE = "MNIST"
MNIST_LICENSE = "MNIST: CC BY-SA 3.0, Y. LeCun and C. Cortes"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_PICKLE_SOURCE = "CIFAR-10"
CIFAR10_JPEG_SOURCE = "CIFAR-10 (JPEG)"
CIFAR10_JPEG_NOTE = (
    "CIFAR-10 (JPEG): the images were re-encoded as JPEG (quality ~75) by a public mirror; against the "
    "original CIFAR-10 images the mean absolute pixel error is 4.5-8.1 /255 per image, so this is not "
    "bit-exact CIFAR-10 (train and test on it consistently). The original test-set order is lost; "
    "images are returned class-interleaved (order within a class is kept)."
)

BUNDLED_MNIST = "mnist_sample.npz"

_SPLITS = ("train", "test")
_MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
_CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------- locations
def default_data_dir() -> Path:
    """``$FISHER_REF_DATA`` if set, else ``../shared/data`` next to the repository's root.

    Raises FileNotFoundError when neither exists.
    """
    env = os.environ.get("FISHER_REF_DATA")
    if env:
        return Path(env).expanduser()
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if shared.is_dir():
        return shared
    raise FileNotFoundError(
        "no data directory: pass data_dir=..., or set FISHER_REF_DATA to the folder holding the data "
        f"(looked for {shared}); nothing is downloaded")


def cache_dir() -> Path:
    """The cache folder for unpacked archives and decoded arrays: ``$FISHER_REF_CACHE`` or ``~/.cache/fisher_ref``."""
    env = os.environ.get("FISHER_REF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fisher_ref"


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _check_limit(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or int(limit) != limit or limit < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    return int(limit)


# --------------------------------------------------------------------------------------------- IDX
def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:  # truncated or corrupt gzip stream
            raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    return raw


def _parse_idx(raw: bytes, path) -> tuple[int, np.ndarray]:
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic number {magic:#010x}; expected 0x0000TTNN with type "
                         f"code TT in {sorted(f'{c:#04x}' for c in _IDX_DTYPES)})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {header} needed for rank {ndim})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    need = math.prod(dims) * dtype.itemsize
    have = len(raw) - header
    if have < need:
        raise ValueError(f"{path}: truncated IDX file: shape {dims} of {dtype.name} needs {need} data bytes, "
                         f"the file has {have}")
    if have > need:
        raise ValueError(f"{path}: corrupt IDX file: {have - need} bytes after the {need} data bytes that "
                         f"shape {dims} of {dtype.name} needs")
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    return magic, arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or plain, detected from the content) into a NumPy array.

    Any element type of the format (uint8, int8, int16, int32, float32, float64; stored big-endian,
    returned in native byte order) and any rank. Raises ValueError, naming the file, when the header
    is not IDX or the data is shorter or longer than the header says.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)[1]


# ------------------------------------------------------------------------------------------- MNIST
def _find_mnist_file(data_dir: Path, stem: str) -> Path:
    alt = stem.replace("-idx", ".idx")  # the other common spelling, e.g. t10k-images.idx3-ubyte
    folders = [data_dir / "mnist", data_dir]
    for folder in folders:
        for name in (stem, alt):
            for suffix in (".gz", ""):
                p = folder / (name + suffix)
                if p.is_file():
                    return p
    raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {' or '.join(str(f) for f in folders)}")


def load_mnist(data_dir: str | os.PathLike | None = None, split: str = "test", *,
               limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (or any data set in MNIST's four-file IDX layout, e.g. Fashion-MNIST) from IDX files.

    Parameters
    ----------
    data_dir : path, optional
        Folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, directly or in a
        ``mnist/`` subfolder. Default :func:`default_data_dir`.
    split : {"test", "train"}
    limit : int, optional
        Return only the first ``limit`` examples.

    Returns
    -------
    images : uint8 array (n, rows, cols) - (n, 28, 28) for MNIST
    labels : int64 array (n,)
    """
    _check_split(split)
    limit = _check_limit(limit)
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    img_path, lab_path = (_find_mnist_file(data_dir, s) for s in _MNIST_STEMS[split])
    magic, images = _parse_idx(_read_bytes(img_path), img_path)
    if magic != 2051:
        raise ValueError(f"{img_path}: magic number {magic} is not 2051 (uint8 images, rank 3)")
    magic, labels = _parse_idx(_read_bytes(lab_path), lab_path)
    if magic != 2049:
        raise ValueError(f"{lab_path}: magic number {magic} is not 2049 (uint8 labels, rank 1)")
    if len(images) != len(labels):
        raise ValueError(f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return np.ascontiguousarray(images), labels.astype(np.int64)


def load_bundled_mnist(*, return_indices: bool = False):
    """The 500 MNIST test images shipped with the package (the first 50 of each class, test-set order).

    Returns ``(images, labels)``: float64 images in [0, 1] of shape (500, 1, 28, 28) and int64
    labels; with ``return_indices=True`` also the images' indices in the MNIST test set.
    """
    with resources.as_file(resources.files("fisher_ref") / "data" / BUNDLED_MNIST) as path:
        with np.load(path, allow_pickle=False) as f:
            images, labels, indices = f["images"], f["labels"], f["indices"]
    x = (images.astype(np.float64) / 255.0)[:, None, :, :]
    y = labels.astype(np.int64)
    return (x, y, indices.astype(np.int64)) if return_indices else (x, y)


# ---------------------------------------------------------------------------------------- CIFAR-10
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays only: the content of CIFAR's pickle batches."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a CIFAR batch")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # NumPy 2 name, without the deprecation warning
        return super().find_class(module, name)


def _read_cifar_batch(fileobj, name) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _ArrayUnpickler(fileobj, encoding="bytes").load()
    except Exception as exc:
        raise ValueError(f"{name}: not a readable CIFAR-10 pickle batch ({exc})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{name}: not a CIFAR-10 pickle batch (a {type(d).__name__}, not a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{name}: a CIFAR-10 batch needs keys 'data' and 'labels', found {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{name}: 'data' should be uint8 (n, 3072) with n labels; got {data.dtype} "
                         f"{data.shape} and {labels.shape} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{name}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _batch_names(split: str) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def _load_cifar_pickle_dir(folder: Path, split: str, limit) -> tuple[np.ndarray, np.ndarray]:
    xs, ys, n = [], [], 0
    for name in _batch_names(split):
        if limit is not None and n >= limit:
            break
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10 batch {path} is missing")
        with open(path, "rb") as f:
            x, y = _read_cifar_batch(f, path)
        xs.append(x), ys.append(y)
        n += len(y)
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]


def _load_cifar_pickle_tar(tar_path: Path, split: str, limit) -> tuple[np.ndarray, np.ndarray]:
    xs, ys, n = [], [], 0
    with tarfile.open(tar_path, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name in _batch_names(split):
            if limit is not None and n >= limit:
                break
            if name not in members:
                raise FileNotFoundError(f"{tar_path} holds no CIFAR-10 batch {name}")
            x, y = _read_cifar_batch(tar.extractfile(members[name]), f"{tar_path}:{members[name].name}")
            xs.append(x), ys.append(y)
            n += len(y)
    return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _tar_cache_folder(tar_path: Path) -> Path:
    """``cache_dir()/<name>-<sha256 prefix>/``: where the decoded arrays of a tarball are kept."""
    return cache_dir() / f"{tar_path.name.split('.')[0]}-{_file_digest(tar_path)}"


def _tar_image_folder(tar_path: Path, split: str, class_names: Sequence[str]) -> list[list[tuple[str, bytes]]]:
    """The image files of ``<top>/<split>/<class>/`` in a tarball, per class in natural name order,
    as ``(member name, bytes)``: one streaming pass, nothing written to disk."""
    index = {c: i for i, c in enumerate(class_names)}
    per_class: list[list[tuple[str, bytes]]] = [[] for _ in class_names]
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for m in tar:
                parts = Path(m.name).parts
                if not m.isfile() or len(parts) < 3 or parts[-3] != split or parts[-2] not in index:
                    continue
                name = parts[-1]
                if name.startswith(".") or Path(name).suffix.lower() not in _IMAGE_EXTENSIONS:
                    continue
                per_class[index[parts[-2]]].append((m.name, tar.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{tar_path}: cannot read the tarball ({exc})") from None
    return [sorted(files, key=lambda f: _natural_key(Path(f[0]).name)) for files in per_class]


def _save_npz_atomic(path: Path, **arrays) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cifar_jpeg(source: Path, split: str, limit, cached: Path | None):
    """CIFAR-10 (JPEG) from an ImageFolder ``source`` or a tarball of one, through the array cache."""
    if cached is not None and cached.is_file():
        with np.load(cached, allow_pickle=False) as f:
            return f["images"][:limit], f["labels"][:limit]
    full = limit is None or cached is not None
    if source.is_dir():
        if not (source / split).is_dir():
            raise FileNotFoundError(f"no '{split}' folder in {source}")
        x, y, _ = load_image_folder(source / split, class_names=CIFAR10_CLASSES, interleave=True,
                                    limit=None if full else limit)
    else:
        per_class = _tar_image_folder(source, split, CIFAR10_CLASSES)
        order = _interleaved(per_class, True, None if full else limit)
        if not order:
            raise FileNotFoundError(f"no '{split}' images in {source}")
        x = _decode_images([(name, io.BytesIO(data)) for _, (name, data) in order], None)
        y = np.array([lab for lab, _ in order], dtype=np.int64)
    if x.shape[1:] != (32, 32, 3):
        raise ValueError(f"{source}: CIFAR-10 images should be 32 x 32 RGB, got shape {x.shape[1:]}")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _save_npz_atomic(cached, images=x, labels=y)
        announce_cache(cached, f"the decoded CIFAR-10 (JPEG) {split} images")
    return x[:limit], y[:limit]


def load_cifar10(data_dir: str | os.PathLike | None = None, split: str = "test", *, limit: int | None = None,
                 return_source: bool = False, use_cache: bool = True):
    """CIFAR-10 from the standard pickle batches or from the shared JPEG ImageFolder tarball.

    Looks in ``data_dir`` (default :func:`default_data_dir`), in this order, for

    1. ``cifar-10-batches-py/`` (or ``data_dir`` itself holding ``test_batch``, ``data_batch_1..5``):
       the original CIFAR-10 in Python pickle format; read with an unpickler that accepts only
       arrays, lists and dicts;
    2. ``cifar-10-python.tar.gz``, the original archive, read in place;
    3. ``cifar10-jpeg/`` (an unpacked ImageFolder: ``{train,test}/<class>/*.jpg``), or
       ``cifar10-jpeg.tar.gz``, read in place in one streaming pass (nothing is unpacked). The
       decoded arrays of the tarball are cached as ``.npz`` in :func:`cache_dir`
       (``$FISHER_REF_CACHE`` or ``~/.cache/fisher_ref``; 31 MB for the test split, 154 MB for the
       training split, written atomically, said on stderr when first written) so later loads take
       a fraction of a second (``use_cache=False`` decodes the JPEGs again and writes nothing).

    The JPEG copy is **not** bit-exact CIFAR-10 (see :data:`CIFAR10_JPEG_NOTE`): re-encoded at
    quality ~75, mean absolute error 4.5-8.1 /255 against the originals; report results on it as
    "CIFAR-10 (JPEG)". Its original test-set order is lost: images come class-interleaved (image 0
    of each class in label order, then image 1, ...), so any prefix (``limit``) is class-balanced.

    Returns
    -------
    images : uint8 array (n, 32, 32, 3)
    labels : int64 array (n,), in CIFAR-10's label order (:data:`CIFAR10_CLASSES`)
    source : str, only with ``return_source=True``
        ``"CIFAR-10"`` for the pickle format, :data:`CIFAR10_JPEG_NOTE` (which starts with
        ``"CIFAR-10 (JPEG)"``) for the JPEG copy.
    """
    _check_split(split)
    limit = _check_limit(limit)
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist")

    for folder in (data_dir / "cifar-10-batches-py", data_dir):
        if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():
            x, y = _load_cifar_pickle_dir(folder, split, limit)
            return (x, y, CIFAR10_PICKLE_SOURCE) if return_source else (x, y)
    if (data_dir / "cifar-10-python.tar.gz").is_file():
        x, y = _load_cifar_pickle_tar(data_dir / "cifar-10-python.tar.gz", split, limit)
        return (x, y, CIFAR10_PICKLE_SOURCE) if return_source else (x, y)

    if (data_dir / "cifar10-jpeg" / split).is_dir():
        x, y = _load_cifar_jpeg(data_dir / "cifar10-jpeg", split, limit, None)
    elif (data_dir / "cifar10-jpeg.tar.gz").is_file():
        tar_path = data_dir / "cifar10-jpeg.tar.gz"
        cached = _tar_cache_folder(tar_path) / f"arrays-{split}-v{_CACHE_VERSION}.npz" if use_cache else None
        x, y = _load_cifar_jpeg(tar_path, split, limit, cached)
    else:
        raise FileNotFoundError(
            f"no CIFAR-10 in {data_dir}: expected cifar-10-batches-py/, cifar-10-python.tar.gz, cifar10-jpeg/ "
            "or cifar10-jpeg.tar.gz (nothing is downloaded)")
    return (x, y, CIFAR10_JPEG_NOTE) if return_source else (x, y)


# ----------------------------------------------------------------------------------- image folders
def _natural_key(name: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def load_image_folder(root: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                      limit: int | None = None, size: int | Sequence[int] | None = None,
                      interleave: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images in the ``root/<class name>/<image file>`` (ImageFolder) layout, decoded with Pillow.

    Parameters
    ----------
    root : path
    class_names : sequence of str, optional
        The class folders to read, in label order (label i is ``class_names[i]``). Default: every
        non-hidden subfolder of ``root``, sorted by name.
    limit : int, optional
        Read only the first ``limit`` images of the order below.
    size : int or (height, width), optional
        Resize every image to this size (bilinear). Without it all images must have the same size,
        else ValueError.
    interleave : bool
        Order: False (default) - class by class, files in natural name order within a class
        (``2.png`` before ``10.png``); True - round robin over the classes (file 0 of each class,
        then file 1, ...; a class that runs out is skipped), so every prefix is class-balanced.

    Returns
    -------
    images : uint8 array (n, H, W, 3) for colour images, (n, H, W) when every image is grayscale
    labels : int64 array (n,)
    class_names : list of str
    """
    root = Path(root)
    limit = _check_limit(limit)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if class_names is None:
        class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_names:
            raise ValueError(f"{root} has no class subfolders (expected root/<class>/<image>)")
    class_names = [str(c) for c in class_names]
    per_class = []
    for c in class_names:
        folder = root / c
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {folder} does not exist")
        files = [p for p in folder.iterdir()
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_EXTENSIONS]
        per_class.append(sorted(files, key=lambda p: _natural_key(p.name)))
    order = _interleaved(per_class, interleave, limit)
    if not order:
        raise ValueError(f"no images found in {root} (classes {class_names})")

    images = _decode_images([(path, path) for _, path in order], size)
    labels = np.array([lab for lab, _ in order], dtype=np.int64)
    return images, labels, class_names


def _interleaved(per_class: list[list], interleave: bool, limit: int | None) -> list[tuple[int, object]]:
    """``(label, item)`` class by class, or round robin over the classes (every prefix balanced)."""
    if interleave:
        order = [(lab, items[j]) for j in range(max(map(len, per_class), default=0))
                 for lab, items in enumerate(per_class) if j < len(items)]
    else:
        order = [(lab, f) for lab, items in enumerate(per_class) for f in items]
    return order if limit is None else order[:limit]


def _decode_images(sources: list[tuple[object, object]], size) -> np.ndarray:
    """Decode ``(name, file or path)`` pairs with Pillow into one uint8 array (all the same size, or
    resized to ``size``); grayscale images become RGB when colour ones are present."""
    if size is not None:
        hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
        if len(hw) != 2 or min(hw) < 1:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading image files needs Pillow: pip install pillow") from exc

    arrays, shape0, first = [], None, None
    for name, src in sources:
        try:
            with Image.open(src) as im:
                im = im.convert("L" if im.mode in ("1", "L", "LA", "I;16", "I") else "RGB")
                if size is not None and im.size != (hw[1], hw[0]):
                    im = im.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except OSError as exc:
            raise ValueError(f"{name}: cannot decode image ({exc})") from None
        if shape0 is None:
            shape0, first = a.shape[:2], name
        elif a.shape[:2] != shape0:
            raise ValueError(f"images have different sizes: {first} is {shape0[0]} x {shape0[1]}, {name} is "
                             f"{a.shape[0]} x {a.shape[1]} (height x width); pass size=(height, width) to resize")
        arrays.append(a)
    if any(a.ndim == 3 for a in arrays) and any(a.ndim == 2 for a in arrays):
        arrays = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return np.stack(arrays)


_ANNOUNCED: set = set()


def announce_cache(path: Path, what: str) -> None:
    """Say on stderr, once per process and file, that ``what`` was written to the cache ``path``."""
    if Path(path) in _ANNOUNCED:
        return
    _ANNOUNCED.add(Path(path))
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0
    print(f"fisher_ref: cached {what} in {path} ({size / 2**20:.0f} MB); the cache folder is "
          f"$FISHER_REF_CACHE (now {cache_dir()}), safe to delete", file=sys.stderr)
