"""PathMNIST-like H&E pathology images, and the MedMNIST ``.npz`` format that holds them.

A hospital hosts either its real ``pathmnist.npz`` (MedMNIST, from NCT-CRC-HE-100K) or a
synthetic one written by this module; both go through :func:`load_pathmnist_npz`, so the rest
of the platform never knows which it was given.

The generator renders tissue the way a brightfield microscope sees it: two stains absorb light
(Beer-Lambert law, Ruifrok & Johnston 2001), so each class is drawn as a hematoxylin and an
eosin optical-density map and only then turned into RGB by a :class:`Stain`. That separation is
what lets a hospital's lab have its own staining (a colour shift that federated training must
cope with) without changing what the tissue looks like. Textures are built from a few
vectorised components (nuclei as blobs, fibres as oriented band-pass noise, lumens and fat as
thresholded low-frequency fields), all filtered in the Fourier domain over batches of images.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import scipy.fft
from scipy.special import expit, ndtri

from datasites.contract.files import atomic_write
from synthetic.errors import DataFormatError

CLASS_NAMES: tuple[str, ...] = (
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
)

# Shares of the nine tissue classes in NCT-CRC-HE-100K, the source of PathMNIST.
_SOURCE_SHARES_PERCENT = np.array([10.4, 10.6, 11.5, 11.6, 8.9, 13.5, 8.8, 10.4, 14.3])
CLASS_SHARES: np.ndarray = _SOURCE_SHARES_PERCENT / _SOURCE_SHARES_PERCENT.sum()
# A module-level array is shared by every importer; one caller's in-place edit must not
# silently change every other hospital's label distribution.
CLASS_SHARES.setflags(write=False)

SPLITS = ("train", "val", "test")
IMAGE_SHAPE = (28, 28, 3)
_REQUIRED_SPLITS = ("train", "test")

# Images are rendered on a larger periodic canvas and cropped, so FFT-filtered textures do not
# visibly wrap around from one edge of the 28x28 tile to the other.
_CANVAS = 32
_CROP = (_CANVAS - IMAGE_SHAPE[0]) // 2
# Bounds the working memory (about a dozen float32 fields of this many canvases) while keeping
# numpy calls large enough to be fast.
_CHUNK = 2048


# --------------------------------------------------------------------------------------------
# Stain model
# --------------------------------------------------------------------------------------------

Vector3 = tuple[float, float, float]

# Hematoxylin is Ruifrok & Johnston's OD direction over (R, G, B). Their eosin absorbs almost
# only green, which renders magenta; it is tilted toward the blue absorption that stain
# estimates on real colorectal slides find (Macenko et al. 2009), so tissue looks pink.
_RUIFROK_HEMATOXYLIN: Vector3 = (0.650, 0.704, 0.286)
_RUIFROK_EOSIN: Vector3 = (0.17, 0.90, 0.40)


def _unit(vector: np.ndarray) -> Vector3:
    """Normalise an OD direction, since strength is carried separately by the Stain."""
    unit = vector / np.linalg.norm(vector)
    return (float(unit[0]), float(unit[1]), float(unit[2]))


@dataclass(frozen=True)
class Stain:
    """A lab's H&E staining, as the Beer-Lambert model of a brightfield slide sees it.

    ``hematoxylin`` and ``eosin`` are unit optical-density directions over (R, G, B): how much
    of each channel one unit of stain absorbs. The strengths scale how heavily the lab stains,
    and ``illuminant`` is the white point of its scanner (a slight colour cast). Two labs cutting
    the same tissue differ only in these numbers, which is the domain shift between hospitals.
    """

    hematoxylin: Vector3
    eosin: Vector3
    hematoxylin_strength: float = 1.0
    eosin_strength: float = 1.0
    illuminant: Vector3 = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("hematoxylin", "eosin"):
            vector = np.asarray(getattr(self, name), dtype=float)
            if vector.shape != (3,) or np.any(vector < 0) or not vector.any():
                raise ValueError(f"Stain.{name} must be 3 non-negative OD values, not all zero.")
        for name in ("hematoxylin_strength", "eosin_strength"):
            if not 0.0 < getattr(self, name) <= 5.0:
                raise ValueError(f"Stain.{name} must lie in (0, 5], found {getattr(self, name)}.")
        light = np.asarray(self.illuminant, dtype=float)
        if light.shape != (3,) or np.any(light <= 0) or np.any(light > 1):
            raise ValueError("Stain.illuminant must be 3 values in (0, 1], one per RGB channel.")

    @classmethod
    def reference(cls) -> Stain:
        """The neutral stain: Ruifrok's vectors, unit strengths and a white light source."""
        return cls(hematoxylin=_RUIFROK_HEMATOXYLIN, eosin=_RUIFROK_EOSIN)

    @classmethod
    def for_hospital(cls, index: int, seed: int) -> Stain:
        """A plausible, visibly different staining for hospital ``index`` of a federation.

        The same (index, seed) always gives the same stain. Each hospital's vectors are rotated
        a little away from the reference, its strengths set heavier or lighter and its light
        source tinted; every shift has a floor so no hospital happens to match the reference,
        and a ceiling so the colours remain those of an H&E slide.
        """
        if index < 0:
            raise ValueError(f"hospital index must be >= 0, found {index}.")
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 0x57A1])
        return cls(
            hematoxylin=_tilt(np.array(_RUIFROK_HEMATOXYLIN), rng, low=0.06, high=0.16),
            eosin=_tilt(np.array(_RUIFROK_EOSIN), rng, low=0.08, high=0.20),
            hematoxylin_strength=_scale_away_from_one(rng, low=0.10, high=0.30),
            eosin_strength=_scale_away_from_one(rng, low=0.10, high=0.30),
            illuminant=_tint(rng, high=0.06),
        )

    def od_matrix(self) -> np.ndarray:
        """(2, 3) float32 OD per unit of hematoxylin (row 0) and eosin (row 1)."""
        rows = [
            np.asarray(self.hematoxylin) / np.linalg.norm(self.hematoxylin),
            np.asarray(self.eosin) / np.linalg.norm(self.eosin),
        ]
        strengths = np.array([[self.hematoxylin_strength], [self.eosin_strength]])
        return (np.stack(rows) * strengths).astype(np.float32)


def _tilt(vector: np.ndarray, rng: np.random.Generator, *, low: float, high: float) -> Vector3:
    """Rotate an OD direction by an angle in [low, high] radians, staying non-negative."""
    direction = rng.standard_normal(3)
    direction -= direction @ vector / (vector @ vector) * vector
    direction /= np.linalg.norm(direction)
    angle = rng.uniform(low, high)
    tilted = np.cos(angle) * vector / np.linalg.norm(vector) + np.sin(angle) * direction
    return _unit(np.clip(tilted, 0.02, None))


def _scale_away_from_one(rng: np.random.Generator, *, low: float, high: float) -> float:
    """A factor 1 +/- [low, high]: heavier or lighter staining, never the reference's."""
    sign = rng.choice([-1.0, 1.0])
    return float(1.0 + sign * rng.uniform(low, high))


def _tint(rng: np.random.Generator, *, high: float) -> Vector3:
    """A scanner white point: the brightest channel stays 1, others dim by up to ``high``."""
    light = 1.0 - rng.uniform(0.0, high, size=3)
    light /= light.max()
    return (float(light[0]), float(light[1]), float(light[2]))


# --------------------------------------------------------------------------------------------
# Class textures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Texture:
    """What one tissue class looks like, as the parameters of the shared renderer.

    Every class is drawn by the same vectorised code with different numbers, so a batch mixing
    classes renders in one pass, and an image can sit between two classes by interpolating the
    numbers (the overlap that keeps the task from being trivially separable). Optical densities
    are in stain units before the Stain scales them.
    """

    eosin_base: float  # pink of the tissue matrix
    hematoxylin_base: float  # blue-purple tint of the matrix
    patchiness: float  # relative low-frequency variation of the matrix stain
    blotches: float  # purple patches independent of the pink (necrosis, mucin)
    white_scale: float  # correlation length (px) of lumens, fat and glass
    white_fraction: float  # share of the tile left unstained (lumen, fat vacuole, glass)
    white_softness: float  # how gradual the edge of a white region is
    rim: float  # hematoxylin OD of the epithelial rim lining a lumen (glands)
    ring_gain: float  # extra nuclei in that rim
    cell_period: float  # size (px) of fat cells
    membrane: float  # eosin OD of the thin walls between fat cells
    gaps: float  # share of tissue broken away into fragments (necrotic debris)
    gap_scale: float  # size (px) of those fragments
    fibre_eosin: float  # eosin OD of fibres (muscle, collagen) or mucus wisps
    fibre_hematoxylin: float  # hematoxylin OD of fibres; mucus is bluish
    fibre_period: float  # spacing (px) of fibres
    fibre_alignment: float  # 0 for mottled, large for parallel fibres
    nuclei_density: float  # nuclei per pixel
    nuclei_size: float  # nucleus radius scale (px)
    nuclei_elongation: float  # long/short axis ratio; spindle nuclei in muscle and stroma
    nuclei_darkness: float  # hematoxylin OD inside a nucleus
    nuclei_irregularity: float  # ragged nuclear outlines (tumour, karyorrhectic debris)
    glass: float  # neutral grey OD of empty slide glass
    grain: float  # per-pixel OD noise


# Columns follow _Texture's fields in order.
_TEXTURES: tuple[_Texture, ...] = (
    # adipose: large white fat cells with thin pink membranes
    _Texture(
        0.03,
        0.02,
        0.3,
        0.0,
        4.0,
        0.97,
        0.3,
        0.0,
        0.0,
        13.0,
        0.55,
        0.0,
        1.5,
        0.0,
        0.0,
        4.0,
        0.1,
        0.002,
        0.8,
        1.5,
        0.8,
        0.2,
        0.02,
        0.02,
    ),
    # background: near-white or grey glass
    _Texture(
        0.02,
        0.02,
        0.6,
        0.02,
        6.0,
        0.97,
        0.5,
        0.0,
        0.0,
        8.0,
        0.0,
        0.0,
        1.5,
        0.0,
        0.0,
        4.0,
        0.1,
        0.0005,
        0.8,
        1.2,
        0.6,
        0.2,
        0.12,
        0.015,
    ),
    # debris: broken pink-purple fragments and nuclear dust
    _Texture(
        0.40,
        0.15,
        0.5,
        0.35,
        4.0,
        0.10,
        0.4,
        0.0,
        0.0,
        8.0,
        0.0,
        0.35,
        1.3,
        0.15,
        0.05,
        3.0,
        0.2,
        0.06,
        0.55,
        1.2,
        1.0,
        0.6,
        0.05,
        0.03,
    ),
    # lymphocytes: dense small dark round nuclei
    _Texture(
        0.25,
        0.50,
        0.2,
        0.0,
        4.0,
        0.03,
        0.3,
        0.0,
        0.0,
        8.0,
        0.0,
        0.0,
        1.5,
        0.0,
        0.0,
        4.0,
        0.1,
        0.15,
        0.62,
        1.05,
        1.7,
        0.1,
        0.02,
        0.03,
    ),
    # mucus: pale bluish-pink wisps, few cells
    _Texture(
        0.12,
        0.15,
        0.5,
        0.05,
        6.0,
        0.30,
        0.6,
        0.0,
        0.0,
        8.0,
        0.0,
        0.0,
        1.5,
        0.12,
        0.18,
        8.0,
        1.0,
        0.004,
        0.8,
        1.2,
        0.8,
        0.2,
        0.02,
        0.02,
    ),
    # smooth muscle: pink parallel fibres with cigar-shaped nuclei
    _Texture(
        0.55,
        0.08,
        0.2,
        0.0,
        4.0,
        0.03,
        0.3,
        0.0,
        0.0,
        8.0,
        0.0,
        0.0,
        1.5,
        0.35,
        0.03,
        3.5,
        4.0,
        0.015,
        0.7,
        3.0,
        1.0,
        0.1,
        0.02,
        0.02,
    ),
    # normal colon mucosa: glands, a purple rim of nuclei around each pale lumen
    _Texture(
        0.30,
        0.15,
        0.3,
        0.0,
        3.5,
        0.25,
        0.25,
        0.55,
        10.0,
        8.0,
        0.0,
        0.0,
        1.5,
        0.1,
        0.05,
        4.0,
        0.5,
        0.012,
        0.8,
        1.6,
        1.2,
        0.2,
        0.02,
        0.02,
    ),
    # cancer-associated stroma: loose wavy pink fibres, sparse spindle nuclei
    _Texture(
        0.40,
        0.06,
        0.4,
        0.0,
        4.0,
        0.12,
        0.5,
        0.0,
        0.0,
        8.0,
        0.0,
        0.0,
        1.5,
        0.35,
        0.03,
        5.0,
        1.5,
        0.006,
        0.7,
        2.5,
        0.9,
        0.1,
        0.02,
        0.02,
    ),
    # adenocarcinoma epithelium: crowded large irregular purple nuclei
    _Texture(
        0.30,
        0.35,
        0.3,
        0.1,
        4.0,
        0.06,
        0.3,
        0.2,
        1.0,
        8.0,
        0.0,
        0.0,
        1.5,
        0.1,
        0.05,
        4.0,
        0.5,
        0.08,
        1.2,
        1.4,
        1.3,
        0.5,
        0.02,
        0.02,
    ),
)

_PARAMETERS: tuple[str, ...] = tuple(field.name for field in fields(_Texture))
_TABLE = np.array([[getattr(t, name) for name in _PARAMETERS] for t in _TEXTURES], np.float32)

# Each class's look-alike (fat vs glass, debris vs mucus, muscle vs stroma, gland vs tumour);
# a share of images drifts toward its partner so a classifier faces genuinely ambiguous tiles,
# as pathologists and CNNs do on the real data.
_PARTNER = np.array([1, 0, 4, 2, 2, 7, 8, 5, 6])
_OVERLAP_SHARE = 0.25  # share of images pulled toward their partner
_OVERLAP_PULL = (0.3, 0.65)  # how far, as a fraction of the way to the partner
_JITTER = 0.2  # per-image log-normal spread of every texture parameter


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


def generate_pathmnist(
    n: int,
    seed: int,
    *,
    stain: Stain | None = None,
    class_shares: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` PathMNIST-like tiles: uint8 images (n, 28, 28, 3), uint8 labels (n, 1).

    Class counts follow ``class_shares`` (default :data:`CLASS_SHARES`) exactly, up to
    rounding, rather than by sampling, so a hospital's label skew is what its configuration
    says. ``stain`` (default :meth:`Stain.reference`) colours the tissue as one lab would.
    The same arguments always give the same arrays.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, found {n!r}.")
    shares = _validate_shares(CLASS_SHARES if class_shares is None else class_shares)
    stain = Stain.reference() if stain is None else stain
    label_seed, *chunk_seeds = np.random.SeedSequence(seed).spawn(1 + -(-n // _CHUNK))
    labels = _draw_labels(int(n), shares, np.random.default_rng(label_seed))
    images = np.empty((int(n), *IMAGE_SHAPE), dtype=np.uint8)
    for start, chunk_seed in zip(range(0, n, _CHUNK), chunk_seeds, strict=True):
        stop = min(start + _CHUNK, n)
        rng = np.random.default_rng(chunk_seed)
        images[start:stop] = _render(labels[start:stop], stain, rng)
    return images, labels.reshape(-1, 1)


def _validate_shares(class_shares: np.ndarray) -> np.ndarray:
    """Normalised float shares, since callers pass percentages, counts or fractions alike."""
    shares = np.asarray(class_shares, dtype=float)
    if shares.shape != (len(CLASS_NAMES),) or not np.all(np.isfinite(shares)):
        raise ValueError(f"class_shares must be {len(CLASS_NAMES)} finite numbers, one per class.")
    if np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError("class_shares must be non-negative with a positive sum.")
    return shares / shares.sum()


def _draw_labels(n: int, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact per-class counts by largest remainder, in random order."""
    quota = n * shares
    counts = np.floor(quota).astype(int)
    remainder_order = np.argsort(-(quota - counts), kind="stable")
    counts[remainder_order[: n - counts.sum()]] += 1
    labels = np.repeat(np.arange(len(shares), dtype=np.uint8), counts)
    return rng.permutation(labels)


def _texture_batch(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image texture parameters (each (n, 1, 1)): class values, overlap, then jitter."""
    n = len(labels)
    params = _TABLE[labels]
    pulled = rng.random(n) < _OVERLAP_SHARE
    pull = np.where(pulled, rng.uniform(*_OVERLAP_PULL, size=n), 0.0).astype(np.float32)
    params = (1 - pull[:, None]) * params + pull[:, None] * _TABLE[_PARTNER[labels]]
    params = params * np.exp(_JITTER * rng.standard_normal(params.shape)).astype(np.float32)
    return {name: params[:, i, None, None] for i, name in enumerate(_PARAMETERS)}


def _frequencies() -> tuple[np.ndarray, np.ndarray]:
    """Row and column frequencies (cycles/px) of the canvas's real FFT."""
    fy = np.fft.fftfreq(_CANVAS).astype(np.float32)[None, :, None]
    fx = np.fft.rfftfreq(_CANVAS).astype(np.float32)[None, None, :]
    return fy, fx


_FY, _FX = _frequencies()
_RADIUS = np.sqrt(_FY**2 + _FX**2)
_ANGLE = np.arctan2(_FY, _FX)


def _filter(field: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Filter a batch of canvases in the Fourier domain; one thread leaves the other core free."""
    spectrum = scipy.fft.rfft2(field, workers=1) * transfer
    return scipy.fft.irfft2(spectrum, s=(_CANVAS, _CANVAS), workers=1)


def _standardise(field: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread per image, so thresholds mean the same share of area."""
    field = field - field.mean(axis=(1, 2), keepdims=True)
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-6)


def _noise(rng: np.random.Generator, n: int, transfer: np.ndarray) -> np.ndarray:
    """Standardised Gaussian noise with the given per-image spectrum."""
    white = rng.standard_normal((n, _CANVAS, _CANVAS), dtype=np.float32)
    return _standardise(_filter(white, transfer))


def _lowpass(scale: np.ndarray) -> np.ndarray:
    """Gaussian low-pass transfer with spatial correlation length ``scale`` (px)."""
    return np.exp(-2 * np.pi**2 * scale**2 * _RADIUS**2)


def _band(period: np.ndarray, alignment: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Band-pass around 1/period, concentrated on waves across ``angle`` (stripes along it)."""
    peak = 1.0 / period
    ring = np.exp(-0.5 * ((_RADIUS - peak) / (0.35 * peak)) ** 2)
    across = np.cos(2 * (_ANGLE - angle - np.pi / 2))
    return ring * np.exp(alignment * (across - 1))


def _blob_kernel(size: np.ndarray, elongation: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Spectrum of an elliptical Gaussian of peak 1, the shape of one nucleus."""
    long_axis = size * np.sqrt(elongation)
    short_axis = size / np.sqrt(elongation)
    along = _FX * np.cos(angle) + _FY * np.sin(angle)
    across = -_FX * np.sin(angle) + _FY * np.cos(angle)
    decay = np.exp(-2 * np.pi**2 * ((long_axis * along) ** 2 + (short_axis * across) ** 2))
    return 2 * np.pi * long_axis * short_axis * decay


def _threshold(fraction: np.ndarray) -> np.ndarray:
    """Level a standard-normal field exceeds on ``fraction`` of its area."""
    return ndtri(1 - np.clip(fraction, 1e-4, 1 - 1e-4)).astype(np.float32)


def _render(labels: np.ndarray, stain: Stain, rng: np.random.Generator) -> np.ndarray:
    """Render one chunk of tiles as uint8 RGB."""
    n = len(labels)
    p = _texture_batch(labels, rng)
    angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
    tile = (slice(None), slice(_CROP, _CROP + IMAGE_SHAPE[0]), slice(_CROP, _CROP + IMAGE_SHAPE[1]))
    hematoxylin, eosin, glass = (od[tile] for od in _optical_density(p, angle, rng))
    # Each slide in a lab takes up stain a little differently.
    hematoxylin = hematoxylin * rng.uniform(0.9, 1.1, size=(n, 1, 1)).astype(np.float32)
    eosin = eosin * rng.uniform(0.9, 1.1, size=(n, 1, 1)).astype(np.float32)
    od_h, od_e = stain.od_matrix()
    od = hematoxylin[..., None] * od_h + eosin[..., None] * od_e + glass[..., None]
    od += p["grain"][..., None] * rng.standard_normal(od.shape, dtype=np.float32)
    rgb = 255.0 * np.asarray(stain.illuminant, np.float32) * np.exp(-np.maximum(od, 0))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _optical_density(
    p: dict[str, np.ndarray], angle: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hematoxylin, eosin and neutral-grey OD maps of a chunk, each (n, canvas, canvas)."""
    n = len(angle)
    low = _noise(rng, n, _lowpass(p["white_scale"]))
    level = _threshold(p["white_fraction"])
    white = expit((low - level) / p["white_softness"])
    rim = np.exp(-(((low - level + 0.5) / 0.4) ** 2))
    mottle = _noise(rng, n, _lowpass(np.float32(5.0)))
    blotch = expit(2 * _noise(rng, n, _lowpass(np.float32(2.5))))
    cells = _noise(rng, n, _band(p["cell_period"], np.float32(0.0), angle))
    membrane = np.exp(-((cells / 0.25) ** 2))
    shards = _noise(rng, n, _lowpass(p["gap_scale"]))
    kept = 1 - expit((shards - _threshold(p["gaps"])) / 0.3) * (p["gaps"] > 0.01)
    fibres = expit(1.5 * _noise(rng, n, _band(p["fibre_period"], p["fibre_alignment"], angle)))
    tissue = (1 - white) * kept
    matrix = 1 + p["patchiness"] * np.tanh(mottle)
    nuclei = _nuclei(p, angle, tissue * (1 + p["ring_gain"] * rim), rng)
    hematoxylin = (p["hematoxylin_base"] * matrix + p["fibre_hematoxylin"] * fibres) * tissue
    hematoxylin += (p["blotches"] * blotch + p["rim"] * rim) * tissue
    hematoxylin += p["nuclei_darkness"] * nuclei
    eosin = (p["eosin_base"] * matrix + p["fibre_eosin"] * fibres) * tissue
    eosin += p["membrane"] * membrane + 0.15 * nuclei
    glass = p["glass"] * (1 + 0.5 * np.tanh(mottle))
    return hematoxylin, eosin, glass


def _nuclei(
    p: dict[str, np.ndarray], angle: np.ndarray, where: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Nucleus coverage in [0, 1]: random centres convolved with a per-image blob shape.

    Scattering impulses and filtering them once per batch is far cheaper than drawing each
    nucleus, and still lets density, size and elongation vary per image.
    """
    n = len(angle)
    density = p["nuclei_density"] * where
    centres = rng.random(density.shape, dtype=np.float32) < density
    heights = centres * rng.uniform(0.75, 1.25, size=density.shape).astype(np.float32)
    blobs = _filter(heights, _blob_kernel(p["nuclei_size"], p["nuclei_elongation"], angle))
    ragged = _noise(rng, n, _lowpass(np.float32(0.7)))
    blobs = blobs * (1 + p["nuclei_irregularity"] * ragged)
    return expit(4 * (blobs - 0.5))


# --------------------------------------------------------------------------------------------
# MedMNIST .npz format
# --------------------------------------------------------------------------------------------


def save_pathmnist_npz(
    path: str | Path, splits: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Write splits in MedMNIST's layout, atomically, so a reader never sees half a file.

    ``splits`` maps "train", "test" and optionally "val" to (images, labels). The file is
    written beside ``path`` and renamed over it, so a crash leaves the old file intact.
    """
    path = Path(path)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split names {unknown}; use {', '.join(SPLITS)}.")
    missing = [split for split in _REQUIRED_SPLITS if split not in splits]
    if missing:
        raise DataFormatError(f"splits lack {', '.join(missing)}; PathMNIST needs train and test.")
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        if split in splits:
            images, labels = splits[split]
            images, labels = _validated_split(split, np.asarray(images), np.asarray(labels))
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays), mode=0o644)


def load_pathmnist_npz(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST PathMNIST file (real or synthetic) into {split: (images, labels)}.

    Images come back as uint8 (N, 28, 28, 3) and labels as uint8 (N, 1) with their values
    unchanged. "val" is present only if the file has it. Anything else raises
    DataFormatError with one sentence saying what is wrong; pixel values are never quoted,
    since the file may hold patient tissue.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the path of a pathmnist.npz file.")
    arrays = _read_npz(path)
    present = [s for s in SPLITS if s in _REQUIRED_SPLITS or _has_any(arrays, s)]
    missing = [
        f"{split}_{part}"
        for split in present
        for part in ("images", "labels")
        if f"{split}_{part}" not in arrays
    ]
    if missing:
        raise DataFormatError(
            f"{path.name} is missing {', '.join(missing)}; "
            "a PathMNIST npz needs train_images, train_labels, test_images and test_labels."
        )
    return {
        split: _validated_split(split, arrays[f"{split}_images"], arrays[f"{split}_labels"])
        for split in present
    }


def _has_any(arrays: Mapping[str, np.ndarray], split: str) -> bool:
    return f"{split}_images" in arrays or f"{split}_labels" in arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz file, refusing pickles since the file may come from elsewhere."""
    not_npz = f"{path.name} is not a readable npz archive; pass the MedMNIST pathmnist.npz."
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy file
            raise DataFormatError(not_npz)
        with loaded as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, DataFormatError):
            raise
        raise DataFormatError(not_npz) from error


def _validated_split(
    split: str, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Check one split's arrays and return labels as uint8 (N, 1) with values unchanged."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataFormatError(
            f"{split}_images must be uint8 of shape (N, 28, 28, 3), found {images.dtype} "
            f"{tuple(images.shape)}; convert the images to 28x28 RGB uint8."
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"{split}_labels must be integers of shape (N, 1) or (N,), found {labels.dtype} "
            f"{tuple(labels.shape)}; store one class index per image."
        )
    if len(labels) != len(images):
        raise DataFormatError(
            f"{split} has {len(images)} images but {len(labels)} labels; "
            "store exactly one label per image."
        )
    outside = int(np.count_nonzero((labels < 0) | (labels >= len(CLASS_NAMES))))
    if outside:
        raise DataFormatError(
            f"{outside} of {len(labels)} {split}_labels lie outside 0-8; "
            "use the PathMNIST class indices 0 (adipose) to 8 (adenocarcinoma epithelium)."
        )
    return images, labels.astype(np.uint8).reshape(-1, 1)
