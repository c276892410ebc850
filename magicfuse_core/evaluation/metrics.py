"""Image-fusion quality metrics, segmentation IoU and generated-IR similarity.

Convention (see docs/METRICS.md and /work/shared/metrics/README.md): the fusion
metrics reproduce Linfeng Tang's "Evaluation-for-Image-Fusion" toolbox, the one
the MagicFuse authors report with, including its quirks (MI in bits with grey
levels 254/255 merged in the joint histogram, PSNR 48.13 dB above the standard
value, VIF summed over the two sources). Nabf is Shreyamsha Kumar's modified
N^{AB/F} with the fused image in the fused slot; SSIM is Wang et al. 2004
averaged over the two sources.

All fusion metrics take 8-bit images: (H, W) grey or (H, W, 3) RGB uint8, RGB
converted to grey with MATLAB's rgb2gray weights. Internally every image is a
float64 (H, W) array with values 0..255. A is the visible source, B the infrared
source, F the fused image.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# Reported order of the fusion metrics; `compute_all` returns exactly these keys.
METRIC_NAMES: tuple[str, ...] = (
    "EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "Nabf", "SSIM", "PSNR", "CC", "MSE",
)
# Metrics where a smaller value is better; all others are better when larger.
LOWER_IS_BETTER: frozenset[str] = frozenset({"Nabf", "MSE"})

# MATLAB rgb2gray weights (not ITU-R 601's 0.299/0.587/0.114: these are what the
# reference toolboxes see after Octave/MATLAB's rgb2gray).
RGB2GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])

# SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, L = 255.
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
# Smallest side accepted: the SSIM window must fit once.
MIN_SIDE = SSIM_WINDOW


# --------------------------------------------------------------------------- input


def to_gray(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an 8-bit image and return it as grey float64.

    image: (H, W) or (H, W, 3) uint8 (a trailing channel of size 1 is accepted).
    Returns (H, W) float64 with integer values 0..255; RGB is converted with
    round(0.298936 R + 0.587043 G + 0.114021 B), MATLAB's rgb2gray.
    Raises ValueError for other dtypes (16-bit, float, bool), ranks or empty input.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected 8-bit images (uint8), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        # MATLAB rounds half away from zero; values are positive so floor(x + 0.5).
        grey = np.floor(image.astype(np.float64) @ RGB2GRAY_WEIGHTS + 0.5)
    elif image.ndim == 2:
        grey = image.astype(np.float64)
    else:
        raise ValueError(f"{name}: expected shape (H, W) or (H, W, 3), got {image.shape}")
    if grey.size == 0:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    return grey


def _check_pair_shapes(named: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless all grey images share one (H, W) of at least MIN_SIDE per side."""
    shapes = {name: img.shape for name, img in named.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{n} {s[0]}x{s[1]}" for n, s in shapes.items())
        raise ValueError(f"image sizes differ: {listing}")
    h, w = next(iter(shapes.values()))
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels (SSIM window), got {h}x{w}")


# --------------------------------------------------------------------------- filters


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """1-D factor of MATLAB fspecial('gaussian', size, sigma), normalised to sum 1.

    fspecial's 2-D kernel is the outer product of this vector with itself (its
    eps-truncation never triggers for the sizes used here), so filtering with it
    along both axes is the same as filter2 with the 2-D window.
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(image: np.ndarray, kernel_1d: np.ndarray) -> np.ndarray:
    """MATLAB filter2(k k', image, 'valid') for a symmetric separable kernel.

    image: (H, W) float64. Returns (H - n + 1, W - n + 1), possibly empty when the
    image is smaller than the kernel (MATLAB then returns an empty matrix too).
    """
    n = kernel_1d.size
    h, w = image.shape
    if h < n or w < n:
        return np.zeros((max(h - n + 1, 0), max(w - n + 1, 0)))
    r = n // 2
    out = ndimage.correlate1d(image, kernel_1d, axis=0, mode="constant")[r:h - r]
    out = ndimage.correlate1d(out, kernel_1d, axis=1, mode="constant")[:, r:w - r]
    return out


# --------------------------------------------------------------------------- single-image metrics


def entropy(f: np.ndarray) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram. f: (H, W) float64, integer values 0..255."""
    counts = np.bincount(f.astype(np.intp).ravel(), minlength=256)
    p = counts[counts > 0] / f.size
    return float(-(p * np.log2(p)).sum())


def standard_deviation(f: np.ndarray) -> float:
    """SD: population standard deviation sqrt(sum((F - mean)^2) / N). f: (H, W) float64 0..255."""
    return float(np.sqrt(np.mean((f - f.mean()) ** 2)))


def spatial_frequency(f: np.ndarray) -> float:
    """SF = sqrt(RF^2 + CF^2); each squared frequency is the mean of its squared differences.

    RF^2 averages the H*(W-1) horizontal differences, CF^2 the (H-1)*W vertical ones.
    """
    rf2 = np.mean(np.diff(f, axis=1) ** 2)
    cf2 = np.mean(np.diff(f, axis=0) ** 2)
    return float(np.sqrt(rf2 + cf2))


def average_gradient(f: np.ndarray) -> float:
    """AG = sum(sqrt((gx^2 + gy^2) / 2)) / ((H - 1)(W - 1)).

    gx, gy follow MATLAB `gradient`: central differences inside, one-sided at the
    border (np.gradient with edge_order=1 is the same). The divisor is Tang's,
    although the sum runs over all H*W pixels.
    """
    gy, gx = np.gradient(f)
    s = np.sqrt((gx * gx + gy * gy) / 2.0)
    h, w = f.shape
    return float(s.sum() / ((h - 1) * (w - 1)))


# --------------------------------------------------------------------------- two-image helpers


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB corr2: Pearson correlation over all pixels; NaN when either image is constant."""
    xd, yd = x - x.mean(), y - y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((xd * yd).sum() / np.sqrt((xd * xd).sum() * (yd * yd).sum()))


def _mutual_information(x: np.ndarray, f: np.ndarray, h_x: float, h_f: float) -> float:
    """MI(X, F) = H(X) + H(F) - H(X, F) in bits, Tang's way.

    The marginals are plain 256-bin entropies (passed in). The joint histogram
    reproduces Tang's Hab.m, which indexes a 256x256 table with uint8 `x + 1`:
    that addition saturates at 255, so grey levels 254 and 255 share a bin in the
    joint histogram (but not in the marginals).
    """
    xi = np.minimum(x.astype(np.intp), 254)
    fi = np.minimum(f.astype(np.intp), 254)
    joint = np.bincount((xi * 256 + fi).ravel(), minlength=256 * 256)
    p = joint[joint > 0] / x.size
    h_xf = -(p * np.log2(p)).sum()
    return float(h_x + h_f - h_xf)


def _ssim_stats(img: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and E[x^2] under the SSIM window ('valid'). img: (H, W) float64."""
    return _filter_valid(img, win), _filter_valid(img * img, win)


def _ssim_from_stats(x, f, x_stats, f_stats, win) -> float:
    """Mean of Wang's SSIM map between x and f given their precomputed local stats."""
    mu_x, exx = x_stats
    mu_f, eff = f_stats
    exf = _filter_valid(x * f, win)
    mu_xx, mu_ff, mu_xf = mu_x * mu_x, mu_f * mu_f, mu_x * mu_f
    sigma_x, sigma_f, sigma_xf = exx - mu_xx, eff - mu_ff, exf - mu_xf
    ssim_map = ((2 * mu_xf + SSIM_C1) * (2 * sigma_xf + SSIM_C2)) / (
        (mu_xx + mu_ff + SSIM_C1) * (sigma_x + sigma_f + SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(x: np.ndarray, f: np.ndarray) -> float:
    """Wang et al. 2004 SSIM: 11x11 Gaussian (sigma 1.5), K = (0.01, 0.03), L = 255, mean of the 'valid' map.

    x, f: (H, W) float64 grey 0..255 of one shape, each side >= 11. Symmetric in x, f.
    """
    win = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA)
    return _ssim_from_stats(x, f, _ssim_stats(x, win), _ssim_stats(f, win), win)


# --------------------------------------------------------------------------- VIF


def _vif_pyramid(img: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per scale s = 1..4: (image at that scale, its window, local mean, local E[x^2]).

    Scale s uses a Gaussian window of size n = 2^(5-s) + 1 (17, 9, 5, 3) and
    sigma n/5; for s > 1 the previous scale's image is low-passed with the new
    window ('valid') and decimated by 2, as in Sheikh & Bovik's vifp_mscale.
    """
    levels = []
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        win = _gaussian_1d(n, n / 5.0)
        if scale > 1:
            img = _filter_valid(img, win)[::2, ::2]
        levels.append((img, win, _filter_valid(img, win), _filter_valid(img * img, win)))
    return levels


def _vifp(ref_levels, dist_levels) -> float:
    """Pixel-domain multiscale VIF of a distorted image against a reference, sigma_n^2 = 2.

    ref_levels, dist_levels: outputs of `_vif_pyramid`. Reproduces the clamps of
    the reference code in their order (they overwrite each other).
    """
    sigma_nsq = 2.0
    num = den = 0.0
    for (ref, win, mu1, e11), (dist, _, mu2, e22) in zip(ref_levels, dist_levels):
        if mu1.size == 0:  # image smaller than the window: MATLAB sums an empty matrix
            continue
        sigma1_sq = np.maximum(e11 - mu1 * mu1, 0.0)
        sigma2_sq = np.maximum(e22 - mu2 * mu2, 0.0)
        sigma12 = _filter_valid(ref * dist, win) - mu1 * mu2

        g = sigma12 / (sigma1_sq + 1e-10)
        sv_sq = sigma2_sq - g * sigma12

        flat_ref = sigma1_sq < 1e-10  # no reference signal: all of F is "noise"
        g[flat_ref] = 0.0
        sv_sq[flat_ref] = sigma2_sq[flat_ref]
        sigma1_sq[flat_ref] = 0.0

        flat_dist = sigma2_sq < 1e-10  # flat fused patch: nothing transmitted, no noise
        g[flat_dist] = 0.0
        sv_sq[flat_dist] = 0.0

        negative = g < 0  # anti-correlated: treat as no gain
        sv_sq[negative] = sigma2_sq[negative]
        g[negative] = 0.0
        sv_sq[sv_sq <= 1e-10] = 1e-10

        num += np.log10(1.0 + g * g * sigma1_sq / (sv_sq + sigma_nsq)).sum()
        den += np.log10(1.0 + sigma1_sq / sigma_nsq).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(num) / np.float64(den))


# --------------------------------------------------------------------------- Qabf


def _qabf_edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel strength g and orientation alpha as in Xydeas-Petrovic Qabf (Tang/VIFB code).

    conv2(img, h, 'same') with zero padding (true convolution); alpha = atan(Sy/Sx)
    (atan, not atan2) and pi/2 where Sx == 0. img: (H, W) float64. Returns two (H, W).
    """
    h_y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
    h_x = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    sx = ndimage.convolve(img, h_x, mode="constant", cval=0.0)
    sy = ndimage.convolve(img, h_y, mode="constant", cval=0.0)
    g = np.sqrt(sx * sx + sy * sy)
    zero = sx == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = np.where(zero, np.pi / 2, np.arctan(sy / np.where(zero, 1.0, sx)))
    return g, alpha


def _qabf_preservation(g_x, a_x, g_f, a_f) -> np.ndarray:
    """Q^{XF}: edge-strength and orientation preservation, (H, W) in [0, 1).

    G^{XF} is the smaller strength over the larger, except when they are equal:
    the reference then uses g_F itself (not 1). Kept on purpose to match it.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(g_x > g_f, g_f / g_x, g_x / g_f)
    g_rel = np.where(g_x == g_f, g_f, ratio)
    a_rel = 1.0 - np.abs(a_x - a_f) / (np.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (g_rel - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (a_rel - 0.8)))
    return q_g * q_a


def _qabf(edges_a, edges_b, edges_f) -> float:
    """Qabf = sum(Q^{AF} gA + Q^{BF} gB) / sum(gA + gB); NaN when neither source has an edge."""
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = edges_a, edges_b, edges_f
    q_af = _qabf_preservation(g_a, a_a, g_f, a_f)
    q_bf = _qabf_preservation(g_b, a_b, g_f, a_f)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64((q_af * g_a + q_bf * g_b).sum()) / np.float64((g_a + g_b).sum()))


# --------------------------------------------------------------------------- Nabf


def _nabf_edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel/8 strength and orientation as in Shreyamsha Kumar's objective_fusion_perform_fn.

    The image is mirror-extended by one pixel without repeating the edge
    (numpy 'reflect'); gv, gh come from the Sobel masks divided by 8. alpha =
    atan(gv/gh), 0 where both are 0 (+-pi/2 where only gh is 0). Returns (g, alpha), (H, W).
    The mask sign convention (correlation vs convolution) flips gv and gh together,
    which leaves g and alpha unchanged.
    """
    ext = np.pad(img, 1, mode="reflect")
    k_v = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    k_h = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]) / 8.0
    gv = ndimage.correlate(ext, k_v, mode="constant")[1:-1, 1:-1]
    gh = ndimage.correlate(ext, k_h, mode="constant")[1:-1, 1:-1]
    g = np.sqrt(gv * gv + gh * gh)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = np.arctan(gv / gh)
    alpha[(gv == 0) & (gh == 0)] = 0.0
    return g, alpha


def _nabf_loss(g_x, a_x, g_f, a_f) -> np.ndarray:
    """1 - Q^{XF} with Kumar's sigmoids and sqrt combination, (H, W) in (0, 1]."""
    big, small = np.maximum(g_x, g_f), np.minimum(g_x, g_f)
    with np.errstate(invalid="ignore", divide="ignore"):
        g_rel = np.where((g_x == 0) | (g_f == 0), 0.0, small / big)
    a_rel = np.abs(np.abs(a_x - a_f) - np.pi / 2) * 2.0 / np.pi
    q_g = 0.9999 / (1.0 + np.exp(-19.0 * (g_rel - 0.5)))
    q_a = 0.9995 / (1.0 + np.exp(-22.0 * (a_rel - 0.5)))
    return 1.0 - np.sqrt(q_g * q_a)


def _nabf(edges_a, edges_b, edges_f) -> float:
    """Kumar's modified fusion-artefact measure N^{AB/F} in [0, 1], 0 = no artefacts.

    Only pixels where F has a stronger edge than both sources count; each source
    loss is weighted by g^1.5 where g >= 2 and by 0.001 elsewhere.
    """
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = edges_a, edges_b, edges_f
    w_a = np.where(g_a >= 2.0, g_a ** 1.5, 0.001)
    w_b = np.where(g_b >= 2.0, g_b ** 1.5, 0.001)
    artefact = (g_f > g_a) & (g_f > g_b)
    loss = _nabf_loss(g_a, a_a, g_f, a_f) * w_a + _nabf_loss(g_b, a_b, g_f, a_f) * w_b
    return float(loss[artefact].sum() / (w_a + w_b).sum())


# --------------------------------------------------------------------------- public API


class FusionScorer:
    """Scores fused images against one fixed (visible, infrared) source pair.

    Everything that depends on the sources only (entropies, VIF pyramids, edge
    maps, SSIM statistics) is computed once in the constructor, so scoring several
    methods on one frame costs about half as much as calling `compute_all` for each.

    vis, ir: uint8 (H, W) or (H, W, 3) of one size, each side >= 11.
    """

    def __init__(self, vis: np.ndarray, ir: np.ndarray):
        a, b = to_gray(vis, "visible"), to_gray(ir, "infrared")
        _check_pair_shapes({"visible": a, "infrared": b})
        self.a, self.b = a, b
        self._entropy = (entropy(a), entropy(b))
        self._vif = (_vif_pyramid(a), _vif_pyramid(b))
        self._qabf = (_qabf_edges(a), _qabf_edges(b))
        self._nabf = (_nabf_edges(a), _nabf_edges(b))
        self._win = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA)
        self._ssim = (_ssim_stats(a, self._win), _ssim_stats(b, self._win))

    def score(self, fused: np.ndarray) -> dict[str, float]:
        """All fusion metrics of one fused image; see `compute_all` for the contract."""
        f = to_gray(fused, "fused")
        _check_pair_shapes({"fused": f, "visible": self.a})
        a, b = self.a, self.b
        out: dict[str, float] = {}

        h_f = entropy(f)
        out["EN"] = h_f
        out["SD"] = standard_deviation(f)
        out["SF"] = spatial_frequency(f)
        out["AG"] = average_gradient(f)
        out["MI"] = _mutual_information(a, f, self._entropy[0], h_f) + _mutual_information(b, f, self._entropy[1], h_f)
        out["SCD"] = _pearson(f - b, a) + _pearson(f - a, b)

        pyr_f = _vif_pyramid(f)
        out["VIF"] = _vifp(self._vif[0], pyr_f) + _vifp(self._vif[1], pyr_f)

        out["Qabf"] = _qabf(self._qabf[0], self._qabf[1], _qabf_edges(f))
        out["Nabf"] = _nabf(self._nabf[0], self._nabf[1], _nabf_edges(f))

        stats_f = _ssim_stats(f, self._win)
        out["SSIM"] = 0.5 * (
            _ssim_from_stats(a, f, self._ssim[0], stats_f, self._win)
            + _ssim_from_stats(b, f, self._ssim[1], stats_f, self._win)
        )

        # Tang computes the MSE on images divided by 255 but keeps peak 255 in the
        # PSNR: the result is the standard PSNR + 20 log10(255) = +48.13 dB.
        mse_255 = 0.5 * (np.mean((f - a) ** 2) + np.mean((f - b) ** 2))
        out["MSE"] = float(mse_255 / 255.0 ** 2)
        with np.errstate(divide="ignore"):
            out["PSNR"] = float(20.0 * np.log10(255.0 / np.sqrt(out["MSE"])))
        out["CC"] = 0.5 * (_pearson(a, f) + _pearson(b, f))
        return {name: out[name] for name in METRIC_NAMES}


def compute_all(fused: np.ndarray, vis: np.ndarray, ir: np.ndarray) -> dict[str, float]:
    """All fusion metrics of a fused image against its visible and infrared sources.

    fused, vis, ir: uint8 (H, W) or (H, W, 3) of one size (each side >= 11).
    Returns {name: float} for METRIC_NAMES, in that order. Values that the
    reference toolboxes leave undefined are NaN (SCD when F == A, CC and VIF
    on constant images, Qabf on all-black ones); PSNR is +inf when F equals both sources.
    Raises ValueError for non-uint8, wrongly shaped, empty or mismatched input.
    """
    fused = np.asarray(fused)
    # Check the fused image first so that its errors name it, not the sources.
    to_gray(fused, "fused")
    return FusionScorer(vis, ir).score(fused)


def ir_similarity(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """How close a generated infrared image is to the real one.

    generated, real: uint8 (H, W) or (H, W, 3) of one size (each side >= 11).
    Returns {"PSNR": dB, "SSIM": [-1, 1], "CC": [-1, 1]}. PSNR here is the
    standard 10 log10(255^2 / MSE) on 0..255 data (no +48.13 dB), +inf when equal;
    SSIM is Wang 2004 (same window as `compute_all`); CC is Pearson's r.
    """
    g, r = to_gray(generated, "generated"), to_gray(real, "real")
    _check_pair_shapes({"generated": g, "real": r})
    mse = float(np.mean((g - r) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)
    return {"PSNR": psnr, "SSIM": ssim(r, g), "CC": _pearson(g, r)}


# --------------------------------------------------------------------------- segmentation


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Pixel confusion matrix cm[true, predicted] (rows: label, columns: prediction).

    pred, label: integer arrays of one shape (any rank), values in [0, num_classes);
    label pixels equal to ignore_index are left out. Returns (num_classes,
    num_classes) int64. Raises ValueError on shape mismatch or out-of-range ids.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(label.dtype, np.integer)):
        raise ValueError(f"class maps must be integer arrays, got {pred.dtype} and {label.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    keep = np.ones(label.shape, bool) if ignore_index is None else label != ignore_index
    p, t = pred[keep].astype(np.int64), label[keep].astype(np.int64)
    for what, ids in (("prediction", p), ("label", t)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(
                f"{what} ids must be in [0, {num_classes - 1}]"
                f"{'' if ignore_index is None else f' or {ignore_index} (ignored)' if what == 'label' else ''}, "
                f"got {ids.min()}..{ids.max()}"
            )
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class IoU = TP / (TP + FP + FN) and their mean.

    cm: (C, C) counts, rows true, columns predicted (summed over a whole data set
    for the usual data-set-level mIoU). Returns (per_class (C,) float64 with NaN
    for classes absent from both label and prediction, mIoU = mean over the
    other classes, NaN if there are none).
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
    valid = ~np.isnan(per_class)
    miou = float(per_class[valid].mean()) if valid.any() else math.nan
    return per_class, miou
