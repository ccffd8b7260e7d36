"""Secure aggregation maths: the scientist learns the sum of the hospitals' vectors, not one.

This is the cryptographic core of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS 2017): double masking, with secret-shared keys so
that the sum survives parties dropping out. Both sides import it: a hospital (client) masks
its update and holds shares of its peers' secrets, the scientist relays messages and
aggregates. Everything here is pure (no networking, no syft, no torch); `simulate_round`
runs the whole protocol in memory for the tests and `benchmarks/secure_sum.py`.

The ring. Updates are fixed-point numbers in Z_{2^64} (`Quantizer`): numpy's uint64
arithmetic wraps modulo 2^64 for free, and `check_capacity` keeps the true sum of all parties
inside (-2^62, 2^62), so reading the ring sum back as a signed int64 is exact.

One round, for parties with ids 1..n, threshold t with n/2 < t <= n:

1. Advertise. Each party draws two fresh X25519 key pairs for this round, c (to agree keys
   that encrypt shares) and s (to agree pairwise mask seeds), and signs them with its
   long-term Ed25519 key over `advert_message` (`make_advert`). The relay broadcasts the
   adverts; every party checks them against the registered verify keys (`verify_adverts`).
2. Share keys. Each party u draws a self-mask seed b_u, Shamir-shares b_u and its s private
   key t-of-n among the advertised ids, and seals each peer's pair of shares under a key
   agreed from the c keys, bound to (study, round, sender, recipient) (`seal_shares`). The
   relay routes the ciphertexts; who sent shares is the set U2.
3. Mask. Each party opens its inbox (`open_shares`) and sends
   y_u = x_u + PRG(b_u) + sum_{v in U2, v > u} PRG(s_uv) - sum_{v in U2, v < u} PRG(s_uv)
   (`mask_update`, built on `masked_input`). Those whose y arrive are the survivors U3.
4. Unmask. The relay announces U3 and the dropped set U2 \\ U3. Each survivor reveals its
   share of b_v for every survivor v and of s_v for every dropped v, never both for one
   party (`unmasking_reply`). The aggregator reconstructs them and removes the masks
   (`recover_sum`, built on `unmask`).

Why n/2 < t is not enough on its own: each party revealing one kind of share per peer, a
relay that tells each party a different survivor story still collects both b_v and s_v
from different parties (found by attack: at n = 5, t = 3, through every local rule). Only
the consistency round below makes every revealing party follow one story.

Keys are per round. A dropped party's s private key is revealed to the aggregator; were it
reused in a later round where the party survives (and its b is revealed), that round's input
would be exposed. `advert_message` binds both public keys to the study and the round, and
every derived key binds the study, round and both party ids (`pair_context`).

Against a relay that lies (tells each party a different survivor story), the consistency
round of the paper sits between 3 and 4: each survivor signs the story it was told, (U3, the
set U2 whose shares it holds) (`confirmation_message`), and reveals nothing until it holds t
valid signatures over the identical story (`check_confirmations`). The caller must answer
each phase of a round once (a second story or a second masked vector gives both secrets
away) and must then keep t > 2n/3 (`default_threshold`, `tolerated_colluders`).
Secrets live in Python ints and bytes, which are neither constant-time nor wiped.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "CAPACITY_BITS",
    "DEFAULT_QUANTIZER",
    "KEY_BYTES",
    "MAX_EXPAND",
    "MAX_PARTY_ID",
    "PHASES",
    "SEAL_OVERHEAD",
    "SHAMIR_PRIME",
    "SHARE_BYTES",
    "SIGNATURE_BYTES",
    "Advert",
    "Quantizer",
    "RoundKeys",
    "RoundResult",
    "UnmaskingReply",
    "advert_message",
    "agree",
    "check_confirmations",
    "check_story",
    "check_threshold",
    "confirmation_message",
    "default_threshold",
    "expand",
    "generate_keypair",
    "generate_signing_key",
    "make_advert",
    "mask_update",
    "masked_input",
    "new_round_keys",
    "open_sealed",
    "open_shares",
    "pair_context",
    "reconstruct",
    "recover_sum",
    "run_round",
    "seal",
    "seal_shares",
    "share",
    "sign",
    "simulate_round",
    "tolerated_colluders",
    "unmask",
    "unmasking_reply",
    "verify",
    "verify_adverts",
]

KEY_BYTES = 32  # X25519 and Ed25519 raw keys, seeds, symmetric keys, shared secrets
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
CAPACITY_BITS = 62  # |sum of all parties| < 2^62 leaves the int64 reading of the ring exact
MAX_PARTY_ID = 2**32 - 1  # ids travel as 4-byte big-endian fields
MAX_CONTEXT_BYTES = 1024
# ChaCha20 in `cryptography` (OpenSSL) has a 32-bit block counter: 2^32 blocks of 64 bytes.
# 2^32 uint64 entries (32 GiB) stay far below it.
MAX_EXPAND = 2**32
# Shamir works in GF(p) for the Mersenne prime p = 2^521 - 1 (proven prime, Lucas-Lehmer).
# Any 32-byte secret is an element below p, and a share is one element, 66 bytes big-endian.
SHAMIR_PRIME = 2**521 - 1
SHARE_BYTES = 66
SECRET_BYTES = 32

_DOMAIN = b"hospital-federation/secure-sum/v1"
_PURPOSES = ("mask", "share")


# -- small validators; their messages name the argument, never its value ---------------------


def _bytes(value: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"{what} must be bytes.")
    if length is not None and len(value) != length:
        raise ValueError(f"{what} must be exactly {length} bytes.")
    return bytes(value)


def _int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be an integer.")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}.")
    return value


def _party(value: object, what: str = "party id") -> int:
    return _int(value, what, 1, MAX_PARTY_ID)


def _text(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string.")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode text.") from None


def _ring(value: object, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.uint64:
        raise ValueError(f"{what} must be a numpy array of dtype uint64.")
    return value


def _fields(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: distinct field tuples always give distinct bytes."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def default_threshold(parties: int) -> int:
    """The least t with t > 2n/3: Bonawitz et al.'s bound against a relay that lies, which with
    the consistency round (`confirmation_message`) also holds against colluding partners
    (`tolerated_colluders`)."""
    parties = _int(parties, "the number of parties", 1, MAX_PARTY_ID)
    return 2 * parties // 3 + 1


def tolerated_colluders(threshold: int, parties: int) -> int:
    """How many partner hospitals may collude with the relay while no honest update opens.

    With the consistency round, every honest party reveals shares for the one story (U3, U2)
    it signed, and only after t signatures over that same story. Two different stories
    each reaching t signatures need 2t <= n + c (c colluders sign both), so c < 2t - n keeps
    one story; colluders hold c shares of each secret, so c < t keeps each unreconstructable;
    and a sum over U3 (at least t parties) must hold at least two honest updates, c <= t - 2.
    `-1`: not even the relay alone is covered.
    """
    threshold = check_threshold(threshold, parties)
    return min(2 * threshold - parties - 1, threshold - 2)


def check_threshold(threshold: int, parties: int) -> int:
    """Return `threshold` if n/2 < t <= n for `parties` = n, else raise ValueError."""
    parties = _int(parties, "the number of parties", 1, MAX_PARTY_ID)
    threshold = _int(threshold, "threshold", 1, MAX_PARTY_ID)
    if not parties // 2 < threshold <= parties:
        raise ValueError(
            f"threshold must be more than half of the {parties} parties and at most all of them."
        )
    return threshold


# -- 1. fixed-point quantization into Z_{2^64} ------------------------------------------------


@dataclass(frozen=True)
class Quantizer:
    """Fixed point in Z_{2^64}: an entry is clipped to [-clip, clip], times scale, rounded.

    Rounding is np.rint (half to even), so every party encodes the same value identically.
    NaN encodes as 0 and +-inf as +-clip: a hospital's broken update must not crash the round
    (nor reveal itself by an error); screening updates is the caller's job.
    """

    scale: float
    clip: float

    def __post_init__(self) -> None:
        for name in ("scale", "clip"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"Quantizer {name} must be a finite positive number.")
        if self.max_entry >= 2**CAPACITY_BITS:
            raise ValueError("Quantizer clip times scale must stay below 2**62.")

    @property
    def max_entry(self) -> int:
        """The largest magnitude one encoded entry can take."""
        return int(np.rint(float(self.clip) * float(self.scale)))

    @property
    def max_parties(self) -> int:
        """How many parties' entries can be summed without leaving (-2^62, 2^62)."""
        return (2**CAPACITY_BITS - 1) // max(self.max_entry, 1)

    def check_capacity(self, parties: int) -> None:
        """Raise ValueError if `parties` encoded entries could overflow the signed reading."""
        parties = _int(parties, "the number of parties", 1, MAX_PARTY_ID)
        if max(self.max_entry, 1) * parties >= 2**CAPACITY_BITS:
            raise ValueError(
                f"a sum over {parties} parties could overflow 2**62: lower clip or scale."
            )

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Float entries -> uint64 ring elements (two's complement for negatives)."""
        if not isinstance(values, np.ndarray) or values.dtype.kind not in "iuf":
            raise ValueError("values must be a numpy array of integers or floats.")
        clip = float(self.clip)
        out = values.astype(np.float64)  # always a fresh contiguous copy
        np.nan_to_num(out, copy=False, nan=0.0, posinf=clip, neginf=-clip)
        np.clip(out, -clip, clip, out=out)
        out *= float(self.scale)
        np.rint(out, out=out)
        return out.astype(np.int64).view(np.uint64)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """A ring sum -> float64: read as a signed int64, divided by scale."""
        total = _ring(total, "total")
        return total.view(np.int64).astype(np.float64) / float(self.scale)


# Resolution 2^-24 (about 6e-8) on entries clipped to +-65536; room for 2^22 parties.
DEFAULT_QUANTIZER = Quantizer(scale=2.0**24, clip=2.0**16)


# -- 2. key agreement and the mask generator --------------------------------------------------


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair: (private raw 32 bytes, public raw 32 bytes)."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def _x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def pair_context(purpose: str, study_id: str, round_: int, a: int, b: int) -> bytes:
    """The HKDF info for the key between parties a and b: the same whichever side derives it.

    `purpose` is "mask" (seed of the pairwise mask, from the s keys) or "share" (key that
    seals shares, from the c keys).
    """
    if purpose not in _PURPOSES:
        raise ValueError("purpose must be 'mask' or 'share'.")
    study = _text(study_id, "study id")
    round_ = _int(round_, "round", 0, 2**63 - 1)
    a, b = _party(a), _party(b)
    if a == b:
        raise ValueError("a pair context needs two different party ids.")
    low, high = sorted((a, b))
    return _fields(_DOMAIN, purpose.encode(), study, _u64(round_), _u32(low), _u32(high))


def agree(private: bytes, peer_public: bytes, context: bytes) -> bytes:
    """X25519 then HKDF-SHA256 to 32 bytes with info=context; symmetric in the two parties."""
    private = _bytes(private, "private key", KEY_BYTES)
    peer_public = _bytes(peer_public, "peer public key", KEY_BYTES)
    context = _bytes(context, "context")
    if not 0 < len(context) <= MAX_CONTEXT_BYTES:
        raise ValueError(f"context must be 1 to {MAX_CONTEXT_BYTES} bytes.")
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError:
        # OpenSSL refuses low-order points (an all-zero shared secret).
        raise ValueError("key agreement failed: the peer public key is not usable.") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context).derive(shared)


# The all-zero nonce: ChaCha20 is safe as long as no (key, nonce) pair encrypts two different
# things. Each seed here is either a fresh random self-mask seed or an HKDF output bound to one
# (study, round, pair), and it is only ever expanded into that one mask, so the keystream is
# never reused for anything else. The two parties of a pair expanding the same seed to the same
# keystream is the point: their masks must cancel. The 16 bytes are OpenSSL's layout, a 4-byte
# little-endian block counter followed by the 12-byte nonce.
_ZERO_NONCE = bytes(16)


def expand(seed: bytes, length: int) -> np.ndarray:
    """`length` uniform uint64 values: the ChaCha20 keystream of the 32-byte seed."""
    seed = _bytes(seed, "seed", KEY_BYTES)
    length = _int(length, "length", 0, MAX_EXPAND)
    encryptor = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


# -- 3. Shamir secret sharing of 32-byte secrets ---------------------------------------------


def _share_ids(ids: object) -> list[int]:
    if not isinstance(ids, list | tuple) or not ids:
        raise ValueError("ids must be a non-empty list of party ids.")
    checked = [_party(i) for i in ids]
    if len(set(checked)) != len(checked):
        raise ValueError("ids must be distinct.")
    return checked


def _lagrange_at(points: list[tuple[int, int]], x: int) -> int:
    """The value at x of the polynomial of degree < len(points) through `points`, mod p."""
    p = SHAMIR_PRIME
    numerator, denominators = 1, []
    for j, (xj, _) in enumerate(points):
        numerator = numerator * (x - xj) % p
        denominator = 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                denominator = denominator * (xj - xm) % p
        denominators.append(denominator)
    total = 0
    for (xj, yj), denominator in zip(points, denominators, strict=True):
        if x == xj:
            return yj
        # l_j(x) = prod_{m != j} (x - x_m) / (x_j - x_m) = numerator / ((x - x_j) * den_j)
        total += yj * pow((x - xj) * denominator % p, -1, p)
    return total * numerator % p


def share(secret: bytes, threshold: int, ids: list[int]) -> dict[int, bytes]:
    """Split a 32-byte secret so that any `threshold` of the shares (party id -> share)
    reconstruct it and fewer reveal nothing about it.

    f(x) = secret + a_1 x + ... + a_{t-1} x^{t-1} over GF(2^521 - 1), with each a_i uniform
    from `secrets`; party i's share is f(i), 66 bytes big-endian.
    """
    value = int.from_bytes(_bytes(secret, "secret", SECRET_BYTES), "big")
    checked = _share_ids(ids)
    threshold = _int(threshold, "threshold", 1, len(checked))
    coefficients = [value] + [secrets.randbelow(SHAMIR_PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in checked:
        y = 0
        for coefficient in reversed(coefficients):
            y = (y * x + coefficient) % SHAMIR_PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def reconstruct(shares: dict[int, bytes], threshold: int) -> bytes:
    """The 32-byte secret from at least `threshold` shares (party id -> share).

    The `threshold` lowest ids interpolate the secret; any further shares must lie on the
    same polynomial, so a corrupted share among more than t is detected, not silently used.
    """
    if not isinstance(shares, Mapping):
        raise ValueError("shares must be a mapping of party id to share.")
    threshold = _int(threshold, "threshold", 1, MAX_PARTY_ID)
    if len(shares) < threshold:
        raise ValueError(f"need at least {threshold} shares to reconstruct, got {len(shares)}.")
    points = []
    for x in sorted(_share_ids(list(shares))):
        y = int.from_bytes(_bytes(shares[x], "a share", SHARE_BYTES), "big")
        if y >= SHAMIR_PRIME:
            raise ValueError("a share is not an element of the field.")
        points.append((x, y))
    basis, extra = points[:threshold], points[threshold:]
    for x, y in extra:
        if _lagrange_at(basis, x) != y:
            raise ValueError("the shares are inconsistent: at least one is corrupted.")
    value = _lagrange_at(basis, 0)
    if value >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares do not encode a 32-byte secret.")
    return value.to_bytes(SECRET_BYTES, "big")


# -- 4. signatures and the advert -------------------------------------------------------------


def generate_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair: (private raw 32 bytes, public raw 32 bytes)."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def sign(signing_key: bytes, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of `message`."""
    signing_key = _bytes(signing_key, "signing key", KEY_BYTES)
    message = _bytes(message, "message")
    return Ed25519PrivateKey.from_private_bytes(signing_key).sign(message)


def verify(verify_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid Ed25519 signature of `message` under `verify_key`."""
    verify_key = _bytes(verify_key, "verify key", KEY_BYTES)
    message = _bytes(message, "message")
    signature = _bytes(signature, "signature")
    try:
        public = Ed25519PublicKey.from_public_bytes(verify_key)
    except ValueError:
        raise ValueError("verify key is not a valid Ed25519 public key.") from None
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def advert_message(
    study_id: str, round_: int, party: str, c_public: bytes, s_public: bytes
) -> bytes:
    """What a party signs to advertise its round's public keys: length-prefixed fields."""
    return _fields(
        _DOMAIN,
        b"advert",
        _text(study_id, "study id"),
        _u64(_int(round_, "round", 0, 2**63 - 1)),
        _text(party, "party"),
        _bytes(c_public, "c public key", KEY_BYTES),
        _bytes(s_public, "s public key", KEY_BYTES),
    )


# -- 5. authenticated encryption of shares through the relay ---------------------------------


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 under `key`, bound to `associated`: random 12-byte nonce || ciphertext.

    Random nonces are safe here: each key is agreed for one (study, round, pair) and seals
    two messages at most, far from the 2^32 messages a 96-bit random nonce allows.
    """
    key = _bytes(key, "key", KEY_BYTES)
    plaintext = _bytes(plaintext, "plaintext")
    associated = _bytes(associated, "associated data")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """The plaintext of `seal`; raises ValueError if tampered with or opened in another context."""
    key = _bytes(key, "key", KEY_BYTES)
    ciphertext = _bytes(ciphertext, "ciphertext")
    associated = _bytes(associated, "associated data")
    if len(ciphertext) < SEAL_OVERHEAD:
        raise ValueError("ciphertext is too short to be sealed.")
    nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, associated)
    except InvalidTag:
        raise ValueError("sealed message failed authentication.") from None


# -- 6. the masking arithmetic ----------------------------------------------------------------


def _seed_map(seeds: object, what: str) -> dict[int, bytes]:
    if not isinstance(seeds, Mapping):
        raise ValueError(f"{what} must be a mapping of party id to seed.")
    return {_party(k): _bytes(v, f"a seed in {what}", KEY_BYTES) for k, v in seeds.items()}


def masked_input(
    x: np.ndarray, own_id: int, self_seed: bytes, pair_seeds: dict[int, bytes]
) -> np.ndarray:
    """y = x + PRG(b) + sum_{v > own} PRG(s_uv) - sum_{v < own} PRG(s_uv), mod 2^64."""
    x = _ring(x, "x")
    own_id = _party(own_id, "own id")
    self_seed = _bytes(self_seed, "self seed", KEY_BYTES)
    pair_seeds = _seed_map(pair_seeds, "pair seeds")
    if own_id in pair_seeds:
        raise ValueError("pair seeds must not include the party's own id.")
    y = x.flatten()  # a copy
    y += expand(self_seed, y.size)
    for peer, seed in pair_seeds.items():
        if peer > own_id:
            y += expand(seed, y.size)
        else:
            y -= expand(seed, y.size)
    return y.reshape(x.shape)


def unmask(
    masked: dict[int, np.ndarray],
    self_seeds: dict[int, bytes],
    dropped_pair_seeds: dict[int, dict[int, bytes]],
) -> np.ndarray:
    """The ring sum of the survivors' x from their masked y.

    `masked` and `self_seeds` are keyed by the survivors; `dropped_pair_seeds[d][u]` is the
    seed between dropped party d and survivor u, for every survivor u.
    """
    if not isinstance(masked, Mapping) or not masked:
        raise ValueError("masked must be a non-empty mapping of party id to masked vector.")
    vectors = {_party(k): _ring(v, "a masked vector") for k, v in masked.items()}
    shape = next(iter(vectors.values())).shape
    if any(v.shape != shape for v in vectors.values()):
        raise ValueError("masked vectors must all have the same shape.")
    self_seeds = _seed_map(self_seeds, "self seeds")
    if set(self_seeds) != set(vectors):
        raise ValueError("self seeds must be given for exactly the survivors.")
    if not isinstance(dropped_pair_seeds, Mapping):
        raise ValueError("dropped pair seeds must be a mapping of dropped id to seeds.")
    dropped = {}
    for d, seeds in dropped_pair_seeds.items():
        d = _party(d, "dropped party id")
        if d in vectors:
            raise ValueError(f"party {d} cannot be both a survivor and dropped.")
        seeds = _seed_map(seeds, "dropped pair seeds")
        if set(seeds) != set(vectors):
            raise ValueError(f"dropped party {d} needs a pair seed with every survivor.")
        dropped[d] = seeds
    size = math.prod(shape)
    total = np.zeros(size, dtype=np.uint64)
    for vector in vectors.values():
        total += vector.reshape(-1)
    for seed in self_seeds.values():
        total -= expand(seed, size)
    for d, seeds in dropped.items():
        for u, seed in seeds.items():
            # Survivor u added PRG(s_ud) if d > u and subtracted it if d < u.
            if d > u:
                total -= expand(seed, size)
            else:
                total += expand(seed, size)
    return total.reshape(shape)


# -- the protocol's steps, one function per message -------------------------------------------


@dataclass(frozen=True)
class RoundKeys:
    """A party's key pairs for one round; the private halves never leave the party."""

    party: int
    c_public: bytes
    s_public: bytes
    c_private: bytes = field(repr=False)
    s_private: bytes = field(repr=False)


@dataclass(frozen=True)
class Advert:
    """A party's round public keys and its Ed25519 signature over `advert_message`."""

    party: int
    c_public: bytes
    s_public: bytes
    signature: bytes

    @property
    def size(self) -> int:
        """Payload bytes on the wire: id, two keys, signature."""
        return 4 + 2 * KEY_BYTES + SIGNATURE_BYTES


@dataclass(frozen=True)
class UnmaskingReply:
    """A survivor's answer in step 4: shares of b for survivors, of s for dropped parties."""

    party: int
    b_shares: dict[int, bytes]
    s_shares: dict[int, bytes]

    @property
    def size(self) -> int:
        return 4 + (4 + SHARE_BYTES) * (len(self.b_shares) + len(self.s_shares))


def new_round_keys(party: int) -> RoundKeys:
    """Fresh c and s X25519 key pairs for one party and one round."""
    c_private, c_public = generate_keypair()
    s_private, s_public = generate_keypair()
    return RoundKeys(_party(party), c_public, s_public, c_private, s_private)


def _round_keys(keys: object) -> RoundKeys:
    if not isinstance(keys, RoundKeys):
        raise ValueError("keys must be a RoundKeys.")
    return keys


def make_advert(study_id: str, round_: int, keys: RoundKeys, signing_key: bytes) -> Advert:
    """Step 1: sign this round's public keys with the party's long-term Ed25519 key."""
    keys = _round_keys(keys)
    message = advert_message(study_id, round_, str(keys.party), keys.c_public, keys.s_public)
    return Advert(keys.party, keys.c_public, keys.s_public, sign(signing_key, message))


def _adverts(adverts: object) -> dict[int, Advert]:
    if not isinstance(adverts, Mapping) or not adverts:
        raise ValueError("adverts must be a non-empty mapping of party id to Advert.")
    checked = {}
    for party, advert in adverts.items():
        party = _party(party)
        if not isinstance(advert, Advert) or advert.party != party:
            raise ValueError(f"the advert filed under party {party} is not that party's.")
        checked[party] = advert
    return checked


def verify_adverts(
    study_id: str,
    round_: int,
    adverts: Mapping[int, Advert],
    verify_keys: Mapping[int, bytes],
    threshold: int,
) -> None:
    """Step 1, receiving side: every advert is signed by its registered party, no public key
    appears twice, and at least `threshold` of the registered parties advertised."""
    adverts = _adverts(adverts)
    if not isinstance(verify_keys, Mapping) or not verify_keys:
        raise ValueError("verify keys must be a non-empty mapping of party id to key.")
    check_threshold(threshold, len(verify_keys))
    seen: set[bytes] = set()
    for party, advert in adverts.items():
        if party not in verify_keys:
            raise ValueError(f"party {party} has no registered verify key.")
        message = advert_message(study_id, round_, str(party), advert.c_public, advert.s_public)
        if not verify(verify_keys[party], message, _bytes(advert.signature, "signature")):
            raise ValueError(f"the advert of party {party} has an invalid signature.")
        for key in (advert.c_public, advert.s_public):
            if key in seen:
                raise ValueError(f"the advert of party {party} repeats a public key.")
            seen.add(key)
    if len(adverts) < threshold:
        raise ValueError(f"only {len(adverts)} parties advertised, fewer than {threshold}.")


def _share_associated(study_id: str, round_: int, sender: int, recipient: int) -> bytes:
    return _fields(
        _DOMAIN,
        b"shares",
        _text(study_id, "study id"),
        _u64(_int(round_, "round", 0, 2**63 - 1)),
        _u32(sender),
        _u32(recipient),
    )


def _own_advert(keys: RoundKeys, adverts: dict[int, Advert]) -> None:
    own = adverts.get(keys.party)
    if own is None or (own.c_public, own.s_public) != (keys.c_public, keys.s_public):
        raise ValueError("the adverts do not carry this party's own public keys.")


def seal_shares(
    study_id: str,
    round_: int,
    keys: RoundKeys,
    self_seed: bytes,
    adverts: Mapping[int, Advert],
    threshold: int,
) -> tuple[dict[int, bytes], tuple[bytes, bytes]]:
    """Step 2: share b and the s private key among the advertised parties.

    Returns the ciphertexts for the relay (recipient id -> sealed pair of shares) and the
    party's own pair (b share, s share), which it keeps. Call after `verify_adverts`.
    """
    keys = _round_keys(keys)
    adverts = _adverts(adverts)
    _own_advert(keys, adverts)
    self_seed = _bytes(self_seed, "self seed", KEY_BYTES)
    ids = sorted(adverts)
    threshold = _int(threshold, "threshold", 1, len(ids))
    b_shares = share(self_seed, threshold, ids)
    s_shares = share(keys.s_private, threshold, ids)
    outbox = {}
    for peer in ids:
        if peer == keys.party:
            continue
        context = pair_context("share", study_id, round_, keys.party, peer)
        key = agree(keys.c_private, adverts[peer].c_public, context)
        associated = _share_associated(study_id, round_, keys.party, peer)
        outbox[peer] = seal(key, b_shares[peer] + s_shares[peer], associated)
    return outbox, (b_shares[keys.party], s_shares[keys.party])


def open_shares(
    study_id: str,
    round_: int,
    keys: RoundKeys,
    adverts: Mapping[int, Advert],
    inbox: Mapping[int, bytes],
    own: tuple[bytes, bytes],
    threshold: int,
) -> dict[int, tuple[bytes, bytes]]:
    """Step 3, first half: decrypt the shares the relay delivered (sender id -> ciphertext).

    Returns the shares this party holds, owner id -> (b share, s share), its own included;
    the owners are U2, the parties whose pairwise masks it must add.
    """
    keys = _round_keys(keys)
    adverts = _adverts(adverts)
    _own_advert(keys, adverts)
    if not isinstance(inbox, Mapping):
        raise ValueError("inbox must be a mapping of sender id to ciphertext.")
    if not isinstance(own, tuple) or len(own) != 2:
        raise ValueError("own must be the pair (b share, s share).")
    held = {
        keys.party: (
            _bytes(own[0], "own b share", SHARE_BYTES),
            _bytes(own[1], "own s share", SHARE_BYTES),
        )
    }
    for sender, ciphertext in inbox.items():
        sender = _party(sender, "sender id")
        if sender == keys.party or sender not in adverts:
            raise ValueError(f"shares from party {sender} were not expected.")
        context = pair_context("share", study_id, round_, keys.party, sender)
        key = agree(keys.c_private, adverts[sender].c_public, context)
        associated = _share_associated(study_id, round_, sender, keys.party)
        plaintext = open_sealed(key, _bytes(ciphertext, "ciphertext"), associated)
        if len(plaintext) != 2 * SHARE_BYTES:
            raise ValueError(f"shares from party {sender} have the wrong length.")
        held[sender] = (plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:])
    threshold = _int(threshold, "threshold", 1, MAX_PARTY_ID)
    if len(held) < threshold:
        raise ValueError(f"only {len(held)} parties shared keys, fewer than {threshold}.")
    return held


def mask_update(
    study_id: str,
    round_: int,
    keys: RoundKeys,
    adverts: Mapping[int, Advert],
    held: Mapping[int, tuple[bytes, bytes]],
    self_seed: bytes,
    x: np.ndarray,
) -> np.ndarray:
    """Step 3, second half: the masked vector y, with a pairwise mask for every peer in U2."""
    keys = _round_keys(keys)
    adverts = _adverts(adverts)
    _own_advert(keys, adverts)
    if not isinstance(held, Mapping) or keys.party not in held:
        raise ValueError("held must be the mapping returned by open_shares.")
    pair_seeds = {}
    for peer in held:
        if peer == keys.party:
            continue
        if peer not in adverts:
            raise ValueError(f"party {peer} has no advert.")
        context = pair_context("mask", study_id, round_, keys.party, peer)
        pair_seeds[peer] = agree(keys.s_private, adverts[peer].s_public, context)
    return masked_input(x, keys.party, self_seed, pair_seeds)


def _id_set(value: object, what: str) -> set[int]:
    if not isinstance(value, set | frozenset | list | tuple):
        raise ValueError(f"{what} must be a collection of party ids.")
    return {_party(v) for v in value}


def confirmation_message(
    study_id: str, round_: int, survivors: set[int], held: set[int], inputs: bytes
) -> bytes:
    """What a survivor signs in the consistency round: the exact survivor set U3 it was told,
    the exact set U2 whose shares it holds, and `inputs`, the 32-byte digest of what the
    relay gave it to compute its vector from (the global weights, the bin edges), bound to
    the study and the round. A relay that gave one hospital other weights than the rest
    (so that their contributions are known and the sum is that hospital's alone) cannot
    gather t signatures over one story."""
    survivors, held = _id_set(survivors, "survivors"), _id_set(held, "held")
    return _fields(
        _DOMAIN,
        b"consistency",
        _text(study_id, "study id"),
        _u64(_int(round_, "round", 0, 2**63 - 1)),
        b"".join(_u32(v) for v in sorted(survivors)),
        b"".join(_u32(v) for v in sorted(held)),
        _bytes(inputs, "inputs digest", KEY_BYTES),
    )


def check_story(party: int, survivors: set[int], held: set[int], threshold: int) -> None:
    """The survivor story a party may sign: it survived, every survivor's shares are held
    (U3 within U2) and the survivors reach the threshold."""
    survivors, held = _id_set(survivors, "survivors"), _id_set(held, "held")
    if _party(party) not in survivors:
        raise ValueError("only a survivor confirms the survivor set.")
    if not survivors <= held:
        raise ValueError("survivors must be among the parties whose shares this party holds.")
    threshold = _int(threshold, "threshold", 1, MAX_PARTY_ID)
    if len(survivors) < threshold:
        raise ValueError(f"only {len(survivors)} parties survived, fewer than {threshold}.")


def check_confirmations(
    study_id: str,
    round_: int,
    survivors: set[int],
    held: set[int],
    inputs: bytes,
    signatures: Mapping[int, bytes],
    verify_keys: Mapping[int, bytes],
    threshold: int,
) -> None:
    """At least `threshold` survivors signed this very (U3, U2, inputs) story with their
    registered keys (Bonawitz et al. 2017, ConsistencyCheck); raise ValueError otherwise."""
    if not isinstance(signatures, Mapping):
        raise ValueError("signatures must be a mapping of party id to signature.")
    message = confirmation_message(study_id, round_, survivors, held, inputs)
    valid = set()
    for signer, signature in signatures.items():
        signer = _party(signer, "signer")
        if signer not in survivors or signer not in verify_keys:
            raise ValueError(f"party {signer} is not a survivor that may confirm.")
        if not verify(verify_keys[signer], message, _bytes(signature, "signature")):
            raise ValueError(f"the confirmation of party {signer} does not match this story.")
        valid.add(signer)
    threshold = _int(threshold, "threshold", 1, MAX_PARTY_ID)
    if len(valid) < threshold:
        raise ValueError(f"only {len(valid)} survivors confirmed, fewer than {threshold}.")


def unmasking_reply(
    party: int,
    held: Mapping[int, tuple[bytes, bytes]],
    survivors: set[int],
    dropped: set[int],
    threshold: int,
) -> UnmaskingReply:
    """Step 4, a survivor's side: reveal b shares of survivors and s shares of dropped parties.

    Refuses a request that would reveal both secrets of one party (the sets overlap), that
    does not account for every party in U2, or whose survivors are fewer than `threshold`.
    """
    party = _party(party)
    if not isinstance(held, Mapping):
        raise ValueError("held must be the mapping returned by open_shares.")
    survivors = _id_set(survivors, "survivors")
    dropped = _id_set(dropped, "dropped")
    threshold = _int(threshold, "threshold", 1, MAX_PARTY_ID)
    if survivors & dropped:
        raise ValueError("no party may be both a survivor and dropped.")
    if survivors | dropped != set(held):
        raise ValueError("survivors and dropped must together be exactly the parties in U2.")
    if party not in survivors:
        raise ValueError("only a survivor answers the unmasking request.")
    if len(survivors) < threshold:
        raise ValueError(f"only {len(survivors)} parties survived, fewer than {threshold}.")
    return UnmaskingReply(
        party,
        {v: held[v][0] for v in sorted(survivors)},
        {v: held[v][1] for v in sorted(dropped)},
    )


def recover_sum(
    study_id: str,
    round_: int,
    adverts: Mapping[int, Advert],
    masked: Mapping[int, np.ndarray],
    dropped: set[int],
    replies: Mapping[int, UnmaskingReply],
    threshold: int,
) -> np.ndarray:
    """Step 4, the aggregator's side: the ring sum of the survivors' inputs.

    Reconstructs each survivor's b and each dropped party's s private key (checked against
    its advertised public key), then `unmask`s.
    """
    adverts = _adverts(adverts)
    if not isinstance(masked, Mapping) or not masked:
        raise ValueError("masked must be a non-empty mapping of party id to masked vector.")
    survivors = {_party(v) for v in masked}
    dropped = _id_set(dropped, "dropped")
    if not isinstance(replies, Mapping):
        raise ValueError("replies must be a mapping of party id to UnmaskingReply.")
    threshold = _int(threshold, "threshold", 1, MAX_PARTY_ID)
    for party, reply in replies.items():
        if not isinstance(reply, UnmaskingReply) or reply.party != party:
            raise ValueError(f"the reply filed under party {party} is not that party's.")
    if len(replies) < threshold:
        raise ValueError(f"only {len(replies)} parties answered, fewer than {threshold}.")
    if not (survivors | dropped) <= set(adverts):
        raise ValueError("every survivor and dropped party must have an advert.")

    def collect(owner: int, kind: str) -> bytes:
        pool = {
            party: (reply.b_shares if kind == "b" else reply.s_shares)[owner]
            for party, reply in replies.items()
            if owner in (reply.b_shares if kind == "b" else reply.s_shares)
        }
        return reconstruct(pool, threshold)

    self_seeds = {u: collect(u, "b") for u in sorted(survivors)}
    dropped_pair_seeds = {}
    for d in sorted(dropped):
        s_private = collect(d, "s")
        if _x25519_public(s_private) != adverts[d].s_public:
            raise ValueError(f"the reconstructed mask key of party {d} does not match its advert.")
        dropped_pair_seeds[d] = {
            u: agree(s_private, adverts[u].s_public, pair_context("mask", study_id, round_, d, u))
            for u in sorted(survivors)
        }
    return unmask(dict(masked), self_seeds, dropped_pair_seeds)


# -- the whole round in memory ----------------------------------------------------------------


@dataclass(frozen=True)
class RoundResult:
    """What `run_round` returns: the ring sum and, per phase, seconds and payload bytes.

    Seconds add up every party's and the aggregator's compute, run one after the other.
    Bytes up are what parties send to the relay; bytes down what the relay delivers.
    """

    total: np.ndarray
    survivors: frozenset[int]
    seconds: dict[str, float]
    bytes_up: dict[str, int]
    bytes_down: dict[str, int]


PHASES = ("advertise", "share_keys", "mask", "unmask")


def run_round(
    encoded: Mapping[int, np.ndarray],
    threshold: int,
    drop_after_masking: set[int] | frozenset[int] = frozenset(),
    *,
    drop_before_unmasking: set[int] | frozenset[int] = frozenset(),
    study_id: str = "simulation",
    round_: int = 0,
) -> RoundResult:
    """One protocol round in memory over ring vectors (party id -> uint64 array).

    `drop_after_masking`: parties that shared their keys but whose masked input never
    arrives. `drop_before_unmasking`: survivors that sent y but do not answer step 4.
    """
    if not isinstance(encoded, Mapping) or not encoded:
        raise ValueError("encoded must be a non-empty mapping of party id to uint64 vector.")
    inputs = {_party(k): _ring(v, "an encoded input") for k, v in encoded.items()}
    shape = next(iter(inputs.values())).shape
    if any(v.shape != shape for v in inputs.values()):
        raise ValueError("every party's vector must have the same shape.")
    ids = sorted(inputs)
    threshold = check_threshold(threshold, len(ids))
    lost = _id_set(drop_after_masking, "drop_after_masking")
    silent = _id_set(drop_before_unmasking, "drop_before_unmasking")
    if not lost | silent <= set(ids):
        raise ValueError("dropped parties must be among the inputs' parties.")
    seconds = dict.fromkeys(PHASES, 0.0)
    up = dict.fromkeys(PHASES, 0)
    down = dict.fromkeys(PHASES, 0)

    # Long-term identities, registered out of band before any round.
    signing = {u: generate_signing_key() for u in ids}
    verify_keys = {u: signing[u][1] for u in ids}

    start = time.perf_counter()
    keys = {u: new_round_keys(u) for u in ids}
    adverts = {u: make_advert(study_id, round_, keys[u], signing[u][0]) for u in ids}
    for _ in ids:  # every party checks every advert
        verify_adverts(study_id, round_, adverts, verify_keys, threshold)
    seconds["advertise"] = time.perf_counter() - start
    up["advertise"] = sum(a.size for a in adverts.values())
    down["advertise"] = len(ids) * up["advertise"]

    start = time.perf_counter()
    self_seeds = {u: secrets.token_bytes(KEY_BYTES) for u in ids}
    relay: dict[tuple[int, int], bytes] = {}
    own = {}
    for u in ids:
        outbox, own[u] = seal_shares(study_id, round_, keys[u], self_seeds[u], adverts, threshold)
        relay.update(((u, v), ciphertext) for v, ciphertext in outbox.items())
    held = {}
    for v in ids:
        inbox = {u: c for (u, w), c in relay.items() if w == v}
        held[v] = open_shares(study_id, round_, keys[v], adverts, inbox, own[v], threshold)
    seconds["share_keys"] = time.perf_counter() - start
    up["share_keys"] = sum(len(c) + 8 for c in relay.values())
    down["share_keys"] = up["share_keys"]

    start = time.perf_counter()
    masked = {
        u: mask_update(study_id, round_, keys[u], adverts, held[u], self_seeds[u], inputs[u])
        for u in ids
        if u not in lost
    }
    seconds["mask"] = time.perf_counter() - start
    up["mask"] = sum(4 + y.nbytes for y in masked.values())

    start = time.perf_counter()
    survivors, dropped = set(masked), set(ids) - set(masked)
    down["unmask"] = len(survivors) * 4 * len(ids)  # the announced survivor and dropped ids
    replies = {
        u: unmasking_reply(u, held[u], survivors, dropped, threshold)
        for u in sorted(survivors - silent)
    }
    up["unmask"] = sum(r.size for r in replies.values())
    total = recover_sum(study_id, round_, adverts, masked, dropped, replies, threshold)
    seconds["unmask"] = time.perf_counter() - start
    return RoundResult(total, frozenset(survivors), seconds, up, down)


def simulate_round(
    inputs: dict[int, np.ndarray],
    threshold: int,
    drop_after_masking: set[int],
    *,
    quantizer: Quantizer = DEFAULT_QUANTIZER,
) -> np.ndarray:
    """Quantize float inputs, run one round in memory, return the decoded survivors' sum."""
    if not isinstance(quantizer, Quantizer):
        raise ValueError("quantizer must be a Quantizer.")
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("inputs must be a non-empty mapping of party id to vector.")
    quantizer.check_capacity(len(inputs))
    encoded = {party: quantizer.encode(values) for party, values in inputs.items()}
    return quantizer.decode(run_round(encoded, threshold, drop_after_masking).total)
