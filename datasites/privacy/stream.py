"""A cryptographic random stream: the only source of DP-SGD's sampling and noise.

Whoever can replay a generator subtracts its noise: torch's CPU generator keeps 32 bits of its
seed, and a Mersenne Twister is predictable from its output at any seed size (issue 26: an
audit regenerated a round's noise and recovered the exact clipped-gradient sum). So every
draw here is the ChaCha20 keystream [RFC 8439] under a 256-bit key taken from os.urandom
when the stream is made, one stream per training call; the key never leaves the object.

Uniforms take 52 bits of a uint64 word and lie on a grid of 2^-52 offset by half a step, in
the open interval (0, 1), so a logarithm never sees 0; normals come from them by Box-Muller,
whose tails reach 8.5 standard deviations. Everything is vectorised in numpy: the noise of a
52k-parameter step (four draws a value) costs about a millisecond (benchmarks/README.md,
"dp_throughput").
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms

__all__ = ["KEY_BYTES", "RandomStream", "chacha20"]

KEY_BYTES = 32
_TEST_ENV = "PYTEST_CURRENT_TEST"
_ONE = np.uint64(0x3FF0000000000000)  # the bits of the float 1.0


def chacha20(key: bytes, *, counter: int = 0, nonce: bytes = bytes(12)) -> CipherContext:
    """RFC 8439's ChaCha20 from `counter` (32-bit block counter) under a 96-bit `nonce`.

    cryptography takes one 16-byte value: the counter, little-endian, then the nonce. A
    stream's key is fresh for every stream, so counter 0 and a zero nonce are safe."""
    start = counter.to_bytes(4, "little") + nonce
    return Cipher(algorithms.ChaCha20(key, start), mode=None).encryptor()


class RandomStream:
    """Uniform words, uniforms, normals, coin flips and subsets from one ChaCha20 keystream.

    `test_key` (32 bytes) makes the stream reproducible, and is refused outside pytest: a
    key that anyone can know makes the noise subtractable.
    """

    def __init__(self, test_key: bytes | None = None) -> None:
        key = os.urandom(KEY_BYTES) if test_key is None else _checked_test_key(test_key)
        self._cipher = chacha20(key)
        self._zeros = b""

    def keystream(self, size: int) -> bytes:
        """The next `size` bytes of the keystream itself (for known-answer tests)."""
        return self._words(size, np.uint8).tobytes()

    def words32(self, count: int) -> np.ndarray:
        """`count` uniform uint32 words (little-endian keystream words)."""
        return self._words(count, np.dtype("<u4"))

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 uniforms on (0, 1): (52-bit integer + 1/2) / 2^52, never 0 or 1."""
        # The bits as the mantissa of a float in [1, 2), in place: ten times faster than
        # numpy's integer-to-float conversion. The subtraction is exact (Sterbenz).
        words = self._words(count, np.dtype("<u8"))
        words >>= np.uint64(12)
        words |= _ONE
        uniforms = words.view(np.float64)
        uniforms -= 1.0 - 2.0**-53
        return uniforms

    def normal(self, count: int) -> torch.Tensor:
        """`count` float64 draws of N(0, 1) by Box-Muller, as a torch tensor."""
        pairs = -(-count // 2)
        out = self.uniform(2 * pairs)
        # In place (fresh large arrays cost more in page faults than the maths):
        # out = [r cos(angle), r sin(angle)] with r = sqrt(-2 ln u1), angle = 2 pi u2.
        radius, angle = out[:pairs], out[pairs:]
        np.log(radius, out=radius)
        radius *= -2.0
        np.sqrt(radius, out=radius)
        angle *= 2.0 * math.pi
        cosine = np.cos(angle)
        np.sin(angle, out=angle)
        angle *= radius
        np.multiply(cosine, radius, out=radius)
        return torch.from_numpy(out[:count])

    def bernoulli(self, count: int, probability: float) -> np.ndarray:
        """`count` independent coins, each True with probability floor(p 2^32) / 2^32 <= p.

        Never above p, so a Poisson sampler built on it samples at most at its accounted rate.
        """
        threshold = math.floor(probability * 2.0**32)
        if threshold >= 2**32:
            return np.ones(count, dtype=bool)
        return self.words32(count) < np.uint32(max(threshold, 0))

    def subset(self, count: int, size: int) -> np.ndarray:
        """A uniformly random `size`-subset of range(count), in increasing order."""
        keys = self._words(count, np.dtype("<u8"))
        return np.sort(np.argsort(keys, kind="stable")[:size])

    def _words(self, count: int, dtype: np.dtype | type) -> np.ndarray:
        """The next `count` keystream words of `dtype`, written straight into a new array."""
        out = np.empty(count, dtype=dtype)
        size = out.nbytes
        if len(self._zeros) < size:
            self._zeros = bytes(size)
        self._cipher.update_into(memoryview(self._zeros)[:size], memoryview(out).cast("B"))
        return out


def _checked_test_key(test_key: object) -> bytes:
    if not os.environ.get(_TEST_ENV):
        raise ValueError(
            "test_key is for tests only: outside pytest the key comes from os.urandom."
        )
    if not isinstance(test_key, bytes) or len(test_key) != KEY_BYTES:
        raise ValueError(f"test_key must be {KEY_BYTES} bytes.")
    return test_key
