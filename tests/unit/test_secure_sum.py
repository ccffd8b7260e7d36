"""Secure aggregation maths (`datasites.contract.secure_sum`): quantization, keys, masks,
Shamir, sealing, signatures, and whole rounds with dropouts, all in memory."""

from __future__ import annotations

import itertools
import secrets

import numpy as np
import pytest
from scipy import stats

from datasites.contract import secure_sum as ss
from datasites.contract.secure_sum import (
    SHAMIR_PRIME,
    SHARE_BYTES,
    Quantizer,
    advert_message,
    agree,
    expand,
    generate_keypair,
    generate_signing_key,
    make_advert,
    masked_input,
    new_round_keys,
    open_sealed,
    open_shares,
    pair_context,
    reconstruct,
    recover_sum,
    run_round,
    seal,
    seal_shares,
    share,
    sign,
    simulate_round,
    unmask,
    unmasking_reply,
    verify,
    verify_adverts,
)

RING = 2**64
rng = np.random.default_rng(20170930)


def ring_sum(vectors) -> np.ndarray:
    vectors = list(vectors)
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        total += vector
    return total


def random_ring(length: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=length, dtype=np.uint64)


# -- quantization -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2.0**16, 1000.0])
def test_round_trip_error_is_at_most_half_a_step(scale):
    q = Quantizer(scale=scale, clip=50.0)
    values = rng.uniform(-50.0, 50.0, size=20_000)
    error = np.abs(q.decode(q.encode(values)) - values)
    assert error.max() <= 0.5 / scale * (1 + 1e-9)
    assert error.max() > 0.1 / scale  # the grid is really that coarse: rounding happened


def test_sum_of_twenty_encodings_decodes_to_the_float_sum():
    q = Quantizer(scale=2.0**20, clip=10.0)
    q.check_capacity(20)
    parties = [rng.normal(0.0, 3.0, size=5_000) for _ in range(20)]
    total = ring_sum([q.encode(v) for v in parties])
    assert total.dtype == np.uint64
    expected = np.clip(np.stack(parties), -10.0, 10.0).sum(axis=0)
    assert np.abs(q.decode(total) - expected).max() <= 20 * 0.5 / q.scale + 1e-12


def test_negative_numbers_are_twos_complement():
    q = Quantizer(scale=4.0, clip=100.0)
    encoded = q.encode(np.array([-1.0, -0.25, 0.0, 2.5, -2.5]))
    assert encoded.dtype == np.uint64
    # rint rounds half to even: 2.5 * 4 = 10 exactly, -0.25 * 4 = -1.
    assert encoded.tolist() == [RING - 4, RING - 1, 0, 10, RING - 10]
    assert q.decode(encoded).tolist() == [-1.0, -0.25, 0.0, 2.5, -2.5]
    # A sum crossing zero wraps in the ring and decodes to the signed result.
    assert q.decode(ring_sum([q.encode(np.array([-3.0])), q.encode(np.array([1.0]))])) == [-2.0]


def test_clipping_and_non_finite_inputs():
    q = Quantizer(scale=8.0, clip=2.0)
    values = np.array([1e9, -1e9, np.nan, np.inf, -np.inf, 1.5], dtype=np.float32)
    assert q.decode(q.encode(values)).tolist() == [2.0, -2.0, 0.0, 2.0, -2.0, 1.5]
    assert q.encode(np.array([3, -7], dtype=np.int16)).tolist() == [16, RING - 16]
    assert q.encode(np.zeros((2, 3))).shape == (2, 3)


def test_capacity_check_refuses_overflow():
    q = Quantizer(scale=2.0**20, clip=2.0**20)  # one entry up to 2^40
    q.check_capacity(2**22 - 1)
    with pytest.raises(ValueError, match="overflow"):
        q.check_capacity(2**22)
    # Without the check the overflow is real: 2^22 parties at +clip read back as negative.
    top = q.encode(np.array([q.clip]))
    assert q.decode(top * np.uint64(2**22) * np.uint64(2)) < 0
    with pytest.raises(ValueError, match="2\\*\\*62"):
        Quantizer(scale=2.0**31, clip=2.0**31)


@pytest.mark.parametrize(
    "scale, clip",
    [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (1.0, float("inf")), (True, 1.0), ("1", 1.0)],
)
def test_quantizer_refuses_bad_parameters(scale, clip):
    with pytest.raises(ValueError):
        Quantizer(scale=scale, clip=clip)


def test_quantizer_refuses_bad_arrays():
    q = Quantizer(scale=2.0, clip=1.0)
    with pytest.raises(ValueError):
        q.encode([1.0, 2.0])
    with pytest.raises(ValueError):
        q.encode(np.array(["a"]))
    with pytest.raises(ValueError):
        q.decode(np.array([1, 2], dtype=np.int64))
    with pytest.raises(ValueError):
        q.check_capacity(0)


# -- key agreement and the mask generator ----------------------------------------------------


def test_agree_is_symmetric_and_bound_to_its_context():
    u_private, u_public = generate_keypair()
    v_private, v_public = generate_keypair()
    w_private, w_public = generate_keypair()
    context = pair_context("mask", "study-1", 3, 1, 2)
    assert context == pair_context("mask", "study-1", 3, 2, 1)
    key = agree(u_private, v_public, context)
    assert len(key) == 32
    assert key == agree(v_private, u_public, context)
    assert key != agree(u_private, v_public, pair_context("mask", "study-1", 4, 1, 2))
    assert key != agree(u_private, v_public, pair_context("mask", "study-2", 3, 1, 2))
    assert key != agree(u_private, v_public, pair_context("share", "study-1", 3, 1, 2))
    assert key != agree(u_private, w_public, context)


def test_agree_refuses_bad_keys_without_echoing_them():
    private, public = generate_keypair()
    with pytest.raises(ValueError) as excinfo:
        agree(private[:31], public, b"ctx")
    assert private[:31].hex() not in str(excinfo.value)
    assert repr(private[:31]) not in str(excinfo.value)
    with pytest.raises(ValueError, match="not usable"):
        agree(private, bytes(32), b"ctx")  # a low-order point
    with pytest.raises(ValueError):
        agree(private, public, b"")
    with pytest.raises(ValueError):
        agree(private, public, "ctx")
    with pytest.raises(ValueError):
        pair_context("mask", "study", 0, 4, 4)


def test_expand_matches_the_rfc_7539_chacha20_vector():
    # RFC 7539 A.1, test vector 1: all-zero key, nonce and counter.
    keystream = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    assert expand(bytes(32), 8).tolist() == np.frombuffer(keystream, "<u8").tolist()


def test_expand_is_deterministic_and_seed_dependent():
    seed, other = secrets.token_bytes(32), secrets.token_bytes(32)
    a = expand(seed, 1000)
    assert a.dtype == np.uint64 and a.shape == (1000,)
    assert np.array_equal(a, expand(seed, 1000))
    assert np.array_equal(a[:10], expand(seed, 10))  # a prefix of the same stream
    assert not np.any(a == expand(other, 1000))
    assert expand(seed, 0).shape == (0,)
    with pytest.raises(ValueError):
        expand(seed[:16], 10)
    with pytest.raises(ValueError):
        expand(seed, -1)


def test_expand_is_roughly_uniform():
    draws = expand(secrets.token_bytes(32), 100_000)
    bits = np.unpackbits(draws.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    means = bits.mean(axis=0)  # bit j of byte k: every bit position of the uint64
    assert np.abs(means - 0.5).max() < 0.01
    assert abs(float((draws >> np.uint64(63)).mean()) - 0.5) < 0.01


# -- Shamir -----------------------------------------------------------------------------------


def lagrange(points, x):
    """An independent interpolation over the same field, for the tests."""
    total = 0
    for j, (xj, yj) in enumerate(points):
        term = yj
        for m, (xm, _) in enumerate(points):
            if m != j:
                term = term * (x - xm) * pow(xj - xm, -1, SHAMIR_PRIME)
        total += term
    return total % SHAMIR_PRIME


def as_share(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def test_shamir_published_vector():
    # Wikipedia, "Shamir's secret sharing": secret 1234, f(x) = 1234 + 166x + 94x^2, k = 3.
    published = {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414, 6: 5614}
    secret = (1234).to_bytes(32, "big")
    for subset in itertools.combinations(published, 3):
        assert reconstruct({i: as_share(published[i]) for i in subset}, 3) == secret
    assert reconstruct({i: as_share(y) for i, y in published.items()}, 3) == secret


def test_any_t_of_n_shares_reconstruct():
    secret = secrets.token_bytes(32)
    shares = share(secret, 3, [1, 2, 3, 4, 5])
    assert sorted(shares) == [1, 2, 3, 4, 5]
    assert all(len(s) == SHARE_BYTES for s in shares.values())
    for subset in itertools.combinations(shares, 3):
        assert reconstruct({i: shares[i] for i in subset}, 3) == secret
    for subset in itertools.combinations(shares, 4):
        assert reconstruct({i: shares[i] for i in subset}, 3) == secret
    # Fresh uniform coefficients: the same secret shares differently, over the whole field.
    again = share(secret, 3, [1, 2, 3, 4, 5])
    assert all(again[i] != shares[i] for i in shares)
    assert min(int.from_bytes(s, "big") for s in again.values()) > 2**400
    sparse = share(secret, 2, [3, 7, 11, 42])
    assert reconstruct({42: sparse[42], 7: sparse[7]}, 2) == secret


def test_shamir_refuses_fewer_than_t_shares():
    shares = share(secrets.token_bytes(32), 4, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="at least 4 shares"):
        reconstruct({i: shares[i] for i in (1, 2, 3)}, 4)


def test_t_minus_1_shares_are_consistent_with_every_secret():
    secret, threshold = secrets.token_bytes(32), 3
    shares = share(secret, threshold, [1, 2, 3, 4, 5])
    known = [(i, int.from_bytes(shares[i], "big")) for i in (2, 5)]
    for candidate in (secrets.token_bytes(32), bytes(32), b"\xff" * 32, secret):
        # The polynomial through (0, candidate) and the two known shares has degree < 3:
        # it forges a third share that, with the real two, reconstructs the candidate.
        points = [(0, int.from_bytes(candidate, "big")), *known]
        forged = {**{i: shares[i] for i in (2, 5)}, 4: as_share(lagrange(points, 4))}
        assert reconstruct(forged, threshold) == candidate
    # And the forged share differs from the real one unless the candidate is the secret.
    assert forged[4] == shares[4]


def test_shamir_detects_an_inconsistent_extra_share():
    secret = secrets.token_bytes(32)
    shares = share(secret, 3, [1, 2, 3, 4, 5])
    shares[5] = as_share((int.from_bytes(shares[5], "big") + 1) % SHAMIR_PRIME)
    with pytest.raises(ValueError, match="inconsistent"):
        reconstruct(shares, 3)
    # With exactly t shares the corruption goes unseen by interpolation, but almost surely
    # lands outside the 32-byte range and is refused.
    with pytest.raises(ValueError, match="32-byte"):
        reconstruct({i: shares[i] for i in (1, 2, 5)}, 3)


@pytest.mark.parametrize(
    "secret, threshold, ids",
    [
        (b"\x01" * 31, 2, [1, 2, 3]),
        (b"\x01" * 32, 4, [1, 2, 3]),
        (b"\x01" * 32, 0, [1, 2, 3]),
        (b"\x01" * 32, 2, [1, 1, 3]),
        (b"\x01" * 32, 2, [0, 1, 3]),
        (b"\x01" * 32, 2, []),
        ("secret", 2, [1, 2]),
    ],
)
def test_share_refuses_bad_arguments(secret, threshold, ids):
    with pytest.raises(ValueError):
        share(secret, threshold, ids)


def test_reconstruct_refuses_bad_shares():
    with pytest.raises(ValueError):
        reconstruct({1: b"\x00" * 65, 2: b"\x00" * 66}, 2)
    with pytest.raises(ValueError, match="field"):
        reconstruct({1: b"\xff" * 66, 2: b"\x00" * 66}, 2)


# -- sealing and signatures -------------------------------------------------------------------


def test_seal_round_trip_and_tampering():
    key = secrets.token_bytes(32)
    sealed = seal(key, b"two shares", b"study|1|from 1|to 2")
    assert len(sealed) == len(b"two shares") + ss.SEAL_OVERHEAD
    assert open_sealed(key, sealed, b"study|1|from 1|to 2") == b"two shares"
    assert seal(key, b"two shares", b"ad") != seal(key, b"two shares", b"ad")  # fresh nonce
    for position in (0, 12, len(sealed) - 1):  # nonce, body, tag
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(ValueError, match="authentication"):
            open_sealed(key, bytes(tampered), b"study|1|from 1|to 2")
    with pytest.raises(ValueError, match="authentication"):
        open_sealed(key, sealed, b"study|1|from 2|to 1")
    with pytest.raises(ValueError, match="authentication"):
        open_sealed(secrets.token_bytes(32), sealed, b"study|1|from 1|to 2")
    with pytest.raises(ValueError, match="too short"):
        open_sealed(key, sealed[:20], b"")


def test_sign_and_verify():
    signing_key, verify_key = generate_signing_key()
    signature = sign(signing_key, b"advert")
    assert len(signature) == 64
    assert verify(verify_key, b"advert", signature)
    assert not verify(verify_key, b"advers", signature)
    flipped = bytes([signature[0] ^ 0x80]) + signature[1:]
    assert not verify(verify_key, b"advert", flipped)
    assert not verify(generate_signing_key()[1], b"advert", signature)
    assert not verify(verify_key, b"advert", signature[:63])
    with pytest.raises(ValueError):
        verify(verify_key[:31], b"advert", signature)
    with pytest.raises(ValueError):
        sign(signing_key, "advert")


def test_advert_message_is_injective():
    c, s = secrets.token_bytes(32), secrets.token_bytes(32)
    base = ("study", 7, "hospital-a", c, s)
    variants = [
        ("studz", 7, "hospital-a", c, s),
        ("study", 8, "hospital-a", c, s),
        ("study", 7, "hospital-b", c, s),
        ("study", 7, "hospital-a", s, c),
        ("study", 7, "hospital-a", c, c),
    ]
    messages = {advert_message(*base)} | {advert_message(*v) for v in variants}
    assert len(messages) == 1 + len(variants)
    assert advert_message("ab", 1, "c", c, s) != advert_message("a", 1, "bc", c, s)
    assert advert_message("a|1", 1, "b", c, s) != advert_message("a", 1, "1|b", c, s)
    assert advert_message(*base) == advert_message(*base)  # canonical: same fields, same bytes
    with pytest.raises(ValueError):
        advert_message("", 7, "hospital-a", c, s)
    with pytest.raises(ValueError):
        advert_message("study", -1, "hospital-a", c, s)
    with pytest.raises(ValueError):
        advert_message("study", 7, "hospital-a", c[:31], s)


# -- masks cancel -----------------------------------------------------------------------------


def test_pairwise_masks_cancel_in_masked_input_and_unmask():
    ids = [1, 2, 3, 4]
    pair = {frozenset(p): secrets.token_bytes(32) for p in itertools.combinations(ids, 2)}
    self_seeds = {u: secrets.token_bytes(32) for u in ids}
    xs = {u: random_ring(257) for u in ids}
    ys = {
        u: masked_input(
            xs[u], u, self_seeds[u], {v: pair[frozenset((u, v))] for v in ids if v != u}
        )
        for u in ids
    }
    assert not any(np.array_equal(ys[u], xs[u]) for u in ids)
    assert np.array_equal(unmask(ys, self_seeds, {}), ring_sum(xs.values()))
    # Party 3 drops after masking: its pairwise masks stay in the others' y until removed.
    survivors = [1, 2, 4]
    dropped = {3: {u: pair[frozenset((3, u))] for u in survivors}}
    recovered = unmask(
        {u: ys[u] for u in survivors}, {u: self_seeds[u] for u in survivors}, dropped
    )
    assert np.array_equal(recovered, ring_sum(xs[u] for u in survivors))
    # Forgetting the dropped party's masks leaves garbage.
    garbage = unmask({u: ys[u] for u in survivors}, {u: self_seeds[u] for u in survivors}, {})
    assert not np.array_equal(garbage, recovered)


def test_masking_refuses_bad_arguments():
    x, seed = random_ring(4), secrets.token_bytes(32)
    with pytest.raises(ValueError):
        masked_input(x.astype(np.int64), 1, seed, {})
    with pytest.raises(ValueError):
        masked_input(x, 1, seed, {1: seed})
    with pytest.raises(ValueError):
        masked_input(x, 0, seed, {})
    with pytest.raises(ValueError):
        unmask({1: x, 2: random_ring(5)}, {1: seed, 2: seed}, {})
    with pytest.raises(ValueError):
        unmask({1: x}, {}, {})
    with pytest.raises(ValueError):
        unmask({1: x}, {1: seed}, {1: {1: seed}})
    with pytest.raises(ValueError):
        unmask({1: x, 2: x}, {1: seed, 2: seed}, {3: {1: seed}})


@pytest.mark.parametrize("dropped", [set(), {4}, {1, 5}, {2, 3}])
def test_round_sum_is_exact_in_the_ring(dropped):
    inputs = {u: random_ring(1_000) for u in range(1, 6)}
    result = run_round(inputs, 3, dropped, study_id="ring-test", round_=2)
    survivors = [u for u in inputs if u not in dropped]
    assert result.survivors == frozenset(survivors)
    assert np.array_equal(result.total, ring_sum(inputs[u] for u in survivors))


@pytest.mark.parametrize("parties", [2, 3, 7, 20])
def test_masks_cancel_exactly_for_2_to_20_parties(parties):
    inputs = {u: random_ring(64) for u in range(1, parties + 1)}
    result = run_round(inputs, parties // 2 + 1, set(), study_id="cancel", round_=1)
    assert np.array_equal(result.total, ring_sum(inputs.values()))


def test_round_survives_a_silent_survivor():
    inputs = {u: random_ring(50) for u in range(1, 6)}
    result = run_round(inputs, 3, {2}, drop_before_unmasking={5})
    assert np.array_equal(result.total, ring_sum(inputs[u] for u in (1, 3, 4, 5)))


def test_below_threshold_the_round_fails():
    inputs = {u: random_ring(20) for u in range(1, 6)}
    with pytest.raises(ValueError, match="fewer than 3"):
        run_round(inputs, 3, {1, 2, 3})
    with pytest.raises(ValueError, match="fewer than 3"):
        run_round(inputs, 3, {1, 2}, drop_before_unmasking={3})
    with pytest.raises(ValueError, match="more than half"):
        run_round(inputs, 2, set())


def test_simulate_round_decodes_the_survivors_float_sum():
    inputs = {u: rng.normal(0.0, 0.1, size=(30, 10)) for u in range(1, 8)}
    dropped = {3, 6}
    total = simulate_round(inputs, 4, dropped)
    expected = sum(inputs[u] for u in inputs if u not in dropped)
    assert total.shape == (30, 10)
    assert np.abs(total - expected).max() <= 5 * 0.5 / ss.DEFAULT_QUANTIZER.scale + 1e-12
    with pytest.raises(ValueError):
        simulate_round(inputs, 4, {1, 2, 3, 4})


# -- the protocol's checks --------------------------------------------------------------------


def protocol(n=5, threshold=3):
    ids = list(range(1, n + 1))
    signing = {u: generate_signing_key() for u in ids}
    keys = {u: new_round_keys(u) for u in ids}
    adverts = {u: make_advert("s", 1, keys[u], signing[u][0]) for u in ids}
    verify_keys = {u: signing[u][1] for u in ids}
    verify_adverts("s", 1, adverts, verify_keys, threshold)
    seeds = {u: secrets.token_bytes(32) for u in ids}
    relay, own = {}, {}
    for u in ids:
        outbox, own[u] = seal_shares("s", 1, keys[u], seeds[u], adverts, threshold)
        relay.update({(u, v): c for v, c in outbox.items()})
    return ids, keys, adverts, verify_keys, relay, own


def test_a_forged_or_replayed_advert_is_refused():
    ids, keys, adverts, verify_keys, _, _ = protocol()
    forged = dict(adverts)
    forged[2] = ss.Advert(2, adverts[2].c_public, generate_keypair()[1], adverts[2].signature)
    with pytest.raises(ValueError, match="party 2 has an invalid signature"):
        verify_adverts("s", 1, forged, verify_keys, 3)
    with pytest.raises(ValueError, match="invalid signature"):
        verify_adverts("s", 2, adverts, verify_keys, 3)  # last round's adverts
    with pytest.raises(ValueError, match="not that party's"):
        verify_adverts("s", 1, {**adverts, 3: adverts[4]}, verify_keys, 3)
    with pytest.raises(ValueError, match="fewer than 3"):
        verify_adverts("s", 1, {u: adverts[u] for u in (1, 2)}, verify_keys, 3)


def test_shares_routed_to_the_wrong_party_or_swapped_are_refused():
    ids, keys, adverts, _, relay, own = protocol()
    inbox = {u: relay[(u, 2)] for u in ids if u != 2}
    held = open_shares("s", 1, keys[2], adverts, inbox, own[2], 3)
    assert sorted(held) == ids
    swapped = {**inbox, 1: relay[(3, 2)]}
    with pytest.raises(ValueError, match="authentication"):
        open_shares("s", 1, keys[2], adverts, swapped, own[2], 3)
    reflected = {**inbox, 1: relay[(2, 1)]}  # 2's own message to 1, sent back
    with pytest.raises(ValueError, match="authentication"):
        open_shares("s", 1, keys[2], adverts, reflected, own[2], 3)
    with pytest.raises(ValueError, match="fewer than 3"):
        open_shares("s", 1, keys[2], adverts, {1: inbox[1]}, own[2], 3)


def test_a_survivor_never_reveals_both_secrets_of_one_party():
    ids, keys, adverts, _, relay, own = protocol()
    inbox = {u: relay[(u, 1)] for u in ids if u != 1}
    held = open_shares("s", 1, keys[1], adverts, inbox, own[1], 3)
    reply = unmasking_reply(1, held, {1, 2, 3, 4}, {5}, 3)
    assert sorted(reply.b_shares) == [1, 2, 3, 4] and sorted(reply.s_shares) == [5]
    with pytest.raises(ValueError, match="both"):
        unmasking_reply(1, held, {1, 2, 3, 4, 5}, {5}, 3)
    with pytest.raises(ValueError, match="exactly the parties"):
        unmasking_reply(1, held, {1, 2, 3}, {5}, 3)
    with pytest.raises(ValueError, match="fewer than 3"):
        unmasking_reply(1, held, {1, 2}, {3, 4, 5}, 3)
    with pytest.raises(ValueError, match="survivor"):
        unmasking_reply(1, held, {2, 3, 4}, {1, 5}, 3)


def test_the_aggregator_detects_a_corrupted_share():
    ids, keys, adverts, _, relay, own = protocol()
    seeds_held = {
        v: open_shares(
            "s", 1, keys[v], adverts, {u: relay[(u, v)] for u in ids if u != v}, own[v], 3
        )
        for v in ids
    }
    x = {u: random_ring(10) for u in ids}
    seeds = {u: reconstruct({v: seeds_held[v][u][0] for v in ids}, 3) for u in ids}
    masked = {
        u: ss.mask_update("s", 1, keys[u], adverts, seeds_held[u], seeds[u], x[u])
        for u in (1, 2, 3, 4)
    }
    replies = {u: unmasking_reply(u, seeds_held[u], {1, 2, 3, 4}, {5}, 3) for u in (1, 2, 3, 4)}
    total = recover_sum("s", 1, adverts, masked, {5}, replies, 3)
    assert np.array_equal(total, ring_sum(x[u] for u in (1, 2, 3, 4)))
    bad = dict(replies[4].s_shares)
    bad[5] = as_share((int.from_bytes(bad[5], "big") + 1) % SHAMIR_PRIME)
    corrupted = {**replies, 4: ss.UnmaskingReply(4, replies[4].b_shares, bad)}
    with pytest.raises(ValueError, match="inconsistent"):
        recover_sum("s", 1, adverts, masked, {5}, corrupted, 3)
    with pytest.raises(ValueError, match="fewer than 3"):
        recover_sum("s", 1, adverts, masked, {5}, {u: replies[u] for u in (1, 2)}, 3)


def test_round_keys_hide_their_private_halves():
    keys = new_round_keys(3)
    assert keys.c_private.hex() not in repr(keys) and repr(keys.s_private) not in repr(keys)


# -- a masked input looks uniform -------------------------------------------------------------


def one_masked(x: np.ndarray) -> np.ndarray:
    peers = {v: secrets.token_bytes(32) for v in (1, 3, 4)}
    return masked_input(x, 2, secrets.token_bytes(32), peers)


def test_a_masked_zero_vector_is_uniform():
    y = one_masked(np.zeros(100_000, dtype=np.uint64))
    top_byte = (y >> np.uint64(56)).astype(np.int64)
    counts = np.bincount(top_byte, minlength=256)
    chi2 = float((((counts - counts.mean()) ** 2) / counts.mean()).sum())
    assert chi2 < stats.chi2.ppf(0.999, 255)
    assert abs(float((y & np.uint64(1)).mean()) - 0.5) < 0.01


def test_masked_vectors_do_not_correlate_with_their_inputs():
    length = 100_000
    small = rng.integers(0, 1_000, size=length).astype(np.uint64)  # a ramp-like signal
    signs = rng.integers(0, 2, size=length).astype(np.uint64) << np.uint64(63)  # top bits
    for x in (small, signs):
        y = one_masked(x)
        r = np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1]
        assert abs(r) < 5 / np.sqrt(length)
        agree_top = float(((x >> np.uint64(63)) == (y >> np.uint64(63))).mean())
        assert abs(agree_top - 0.5) < 0.01
    # The same check sees an input that is not masked.
    assert (
        np.corrcoef(small.astype(np.float64), (small + np.uint64(5)).astype(np.float64))[0, 1]
        > 0.99
    )
