"""The cryptographic stream behind DP-SGD's sampling and noise: RFC 8439's known answers, the
uniforms' and normals' distributions, and a scan that finds any other generator in the code
that touches private rows.

Statistical bounds are set from the sample size so that a correct stream fails each of them
by chance at most about once in a million runs (5 standard errors, or p < 1e-6).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from datasites.privacy.noise import secure_gaussian
from datasites.privacy.stream import RandomStream, chacha20

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("datasites/privacy", "datasites/runtime")
SAMPLES = 1 << 20
Z = 5.0  # standard errors: two-sided 5.7e-7 for a normal statistic

# RFC 8439, appendix A.1: (key, block counter, nonce, keystream block).
A1 = {
    1: (
        bytes(32),
        0,
        bytes(12),
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
    ),
    2: (
        bytes(32),
        1,
        bytes(12),
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
        "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f",
    ),
    3: (
        bytes(31) + b"\x01",
        1,
        bytes(12),
        "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a"
        "8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0",
    ),
    4: (
        b"\x00\xff" + bytes(30),
        2,
        bytes(12),
        "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca"
        "13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096",
    ),
    5: (
        bytes(32),
        0,
        bytes(11) + b"\x02",
        "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7"
        "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d",
    ),
}
# RFC 8439, section 2.4.2: the sunscreen plaintext under key 00..1f, nonce ...4a..., counter 1.
SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
SUNSCREEN_CIPHERTEXT = (
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b357"
    "1639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)


# --- known answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("vector", sorted(A1))
def test_chacha20_matches_the_rfc_8439_keystream_vectors(vector: int) -> None:
    key, counter, nonce, block = A1[vector]
    assert chacha20(key, counter=counter, nonce=nonce).update(bytes(64)).hex() == block


def test_chacha20_encrypts_the_rfc_8439_section_2_4_2_example() -> None:
    nonce = bytes.fromhex("000000000000004a00000000")
    cipher = chacha20(bytes(range(32)), counter=1, nonce=nonce)
    assert cipher.update(SUNSCREEN).hex() == SUNSCREEN_CIPHERTEXT


@pytest.mark.parametrize("vector", [1, 2, 3, 4])
def test_a_keyed_stream_is_the_keystream_from_block_0_with_a_zero_nonce(vector: int) -> None:
    # Vectors 1-4 use the zero nonce at blocks 0, 1, 1 and 2: the stream's blocks in order.
    key, counter, _, block = A1[vector]
    stream = RandomStream(key)
    stream.keystream(64 * counter)
    assert stream.keystream(64).hex() == block


def test_words_are_the_keystream_read_little_endian() -> None:
    words = RandomStream(bytes(32)).words32(2)
    assert words.tolist() == [0xADE0B876, 0x903DF1A0]


def test_a_test_key_is_refused_outside_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="test_key must be 32 bytes"):
        RandomStream(bytes(16))
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    with pytest.raises(ValueError, match="test_key is for tests only"):
        RandomStream(bytes(32))
    assert RandomStream().keystream(32) != RandomStream().keystream(32)


# --- distributions ----------------------------------------------------------------------------


def test_uniforms_are_uniform_on_the_open_unit_interval() -> None:
    draws = RandomStream().uniform(SAMPLES)
    assert draws.dtype == np.float64
    assert draws.min() > 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < Z * math.sqrt(1 / 12 / SAMPLES)
    assert stats.kstest(draws, "uniform").pvalue > 1e-6


def test_normals_have_mean_0_variance_1_and_the_normal_distribution() -> None:
    draws = RandomStream().normal(SAMPLES).numpy()
    assert np.isfinite(draws).all()
    assert abs(draws.mean()) < Z / math.sqrt(SAMPLES)
    # The sample variance of N(0, 1) has standard error sqrt(2 / N).
    assert abs(draws.var() - 1.0) < Z * math.sqrt(2 / SAMPLES)
    assert stats.kstest(draws, "norm").pvalue > 1e-6


def test_an_odd_count_of_normals() -> None:
    assert RandomStream().normal(7).shape == (7,)


@pytest.mark.parametrize("probability", [0.0, 0.0064, 0.5, 1.0])
def test_coins_are_true_with_at_most_the_requested_probability(probability: float) -> None:
    coins = RandomStream().bernoulli(SAMPLES, probability)
    exact = math.floor(probability * 2**32) / 2**32  # never above the accounted rate
    spread = Z * math.sqrt(SAMPLES * exact * (1 - exact))
    assert exact <= probability
    assert abs(int(coins.sum()) - SAMPLES * exact) <= spread


def test_subsets_are_uniform() -> None:
    stream, draws = RandomStream(), 20_000
    counts = np.zeros(10)
    for _ in range(draws):
        chosen = stream.subset(10, 3)
        assert len(set(chosen.tolist())) == 3 and np.all(np.diff(chosen) > 0)
        counts[chosen] += 1
    # Each index is in a subset with probability 0.3.
    assert np.all(np.abs(counts - 0.3 * draws) < Z * math.sqrt(draws * 0.3 * 0.7))


def test_secure_gaussian_has_the_stated_std_and_follows_its_key() -> None:
    draws = secure_gaussian(200_000, 1.7, RandomStream(bytes(32)))
    again = secure_gaussian(200_000, 1.7, RandomStream(bytes(32)))
    assert draws.dtype == torch.float32
    assert torch.equal(draws, again)
    assert abs(float(draws.std()) / 1.7 - 1) < Z * math.sqrt(0.5 / draws.numel())
    assert stats.kstest(draws.double().numpy() / 1.7, "norm").pvalue > 1e-6


# --- no other generator where private rows are read -------------------------------------------

# torch's draws from a global or explicit generator (the global one starts from a fixed seed).
TORCH_DRAWS = {
    "rand",
    "randn",
    "randint",
    "randperm",
    "rand_like",
    "randn_like",
    "randint_like",
    "normal",
    "bernoulli",
    "multinomial",
    "poisson",
    "manual_seed",
    "seed",
    "Generator",
}
IN_PLACE_DRAWS = {
    "uniform_",
    "normal_",
    "bernoulli_",
    "random_",
    "exponential_",
    "geometric_",
    "log_normal_",
    "cauchy_",
}
SEEDING = {
    "manual_seed",
    "seed",
    "default_rng",
    "RandomState",
    "Random",
    "Generator",
    "SeedSequence",
    "PCG64",
    "MT19937",
    "Philox",
    "SFC64",
}


def _root(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _seeded_generators(source: str) -> list[str]:
    """Every use of a seedable torch, numpy or `random` generator in `source`, by line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import) and any(a.name == "random" for a in node.names):
            found.append(f"{line}: import random")
        elif isinstance(node, ast.ImportFrom) and node.module in ("random", "numpy.random"):
            found.append(f"{line}: from {node.module} import")
        elif isinstance(node, ast.Attribute):
            root = _root(node)
            if node.attr == "random" and root in ("np", "numpy"):
                found.append(f"{line}: numpy.random")
            elif root == "torch" and node.attr in TORCH_DRAWS:
                found.append(f"{line}: torch.{node.attr}")
            elif node.attr in IN_PLACE_DRAWS or node.attr in SEEDING - {"seed", "Random"}:
                found.append(f"{line}: .{node.attr}")
            elif node.attr in ("seed", "Random") and root in ("random", "np", "numpy"):
                found.append(f"{line}: {root}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in SEEDING - {"seed", "Random"}:
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.keyword) and node.arg == "generator":
            found.append(f"{line}: generator=")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ng = torch.Generator().manual_seed(secret)",
        "import torch\ntorch.manual_seed(7)\nx = torch.rand(3)",
        "import torch\nx = torch.randn(3, generator=g)",
        "import numpy as np\nrng = np.random.default_rng(secret)",
        "import numpy as np\nnp.random.seed(3)",
        "from numpy.random import RandomState\nr = RandomState(3)",
        "import random\nr = random.Random(secret)",
        "from random import random",
        "x = t.normal_(0, 1)",
    ],
)
def test_the_scan_finds_a_seeded_generator(snippet: str) -> None:
    assert _seeded_generators(snippet)


def test_the_scan_passes_the_cryptographic_stream() -> None:
    snippet = "stream = RandomStream()\nx = stream.normal(4)\ny = secure_gaussian(3, 1.0, stream)"
    assert _seeded_generators(snippet) == []


def test_no_generator_is_seeded_where_private_rows_are_read() -> None:
    files = sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py"))
    found = {
        str(p.relative_to(REPO)): hits
        for p in files
        if (hits := _seeded_generators(p.read_text(encoding="utf-8")))
    }
    assert len(files) >= 10
    assert found == {}
