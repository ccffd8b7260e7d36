"""What secure aggregation costs per phase, and what fixed point loses against the float sum.

`python benchmarks/secure_sum.py [--parties 5 20] [--lengths 300 60000] [--dropped 0 1]`

Runs whole rounds of `datasites.contract.secure_sum` in memory (`run_round`), threshold
n//2 + 1, for every combination of parties, vector length and number of parties that drop
after masking. Per phase it prints the compute seconds summed over every party and the
aggregator (run one after the other in this process) and the payload bytes the parties send
to the relay (up) and the relay delivers (down): keys, signatures, ciphertexts, vectors,
without any transport framing. Then the largest error of the decoded sum against the float64
sum of the survivors' float32 inputs, beside its bound survivors * 0.5 / scale.
"""

from __future__ import annotations

import argparse

import numpy as np

from datasites.contract.secure_sum import DEFAULT_QUANTIZER, PHASES, Quantizer, run_round


def one_round(parties: int, length: int, dropped: int, quantizer: Quantizer) -> dict[str, object]:
    rng = np.random.default_rng(parties * 1_000_003 + length)
    # Model updates: small float32 deltas, as a hospital's training step would send.
    inputs = {
        u: rng.normal(0.0, 0.01, size=length).astype(np.float32) for u in range(1, parties + 1)
    }
    lost = set(range(1, dropped + 1))
    quantizer.check_capacity(parties)
    encoded = {u: quantizer.encode(x) for u, x in inputs.items()}
    result = run_round(encoded, parties // 2 + 1, lost)
    survivors = sorted(result.survivors)
    expected = np.sum([inputs[u].astype(np.float64) for u in survivors], axis=0)
    error = float(np.abs(quantizer.decode(result.total) - expected).max())
    return {
        "result": result,
        "error": error,
        "bound": len(survivors) * 0.5 / quantizer.scale,
    }


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 60_000])
    parser.add_argument("--dropped", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    quantizer = DEFAULT_QUANTIZER
    print(f"quantizer: scale 2^{np.log2(quantizer.scale):.0f}, clip {quantizer.clip:g}")
    header = f"{'n':>3} {'t':>3} {'length':>7} {'drop':>4}  {'phase':<10} {'seconds':>9}"
    print(f"{header} {'up':>11} {'down':>11}")
    for parties in args.parties:
        for length in args.lengths:
            for dropped in args.dropped:
                run = one_round(parties, length, dropped, quantizer)
                result = run["result"]
                for phase in PHASES:
                    print(
                        f"{parties:>3} {parties // 2 + 1:>3} {length:>7} {dropped:>4}  "
                        f"{phase:<10} {result.seconds[phase]:>9.4f} "
                        f"{size(result.bytes_up[phase]):>11} {size(result.bytes_down[phase]):>11}"
                    )
                total_seconds = sum(result.seconds.values())
                print(
                    f"{parties:>3} {parties // 2 + 1:>3} {length:>7} {dropped:>4}  "
                    f"{'total':<10} {total_seconds:>9.4f} "
                    f"{size(sum(result.bytes_up.values())):>11} "
                    f"{size(sum(result.bytes_down.values())):>11}   "
                    f"max error {run['error']:.2e} (bound {run['bound']:.2e})"
                )


if __name__ == "__main__":
    main()
