"""What PLD accounting saves: the noise each accountant needs for the same target epsilon.

Usage: python benchmarks/accounting.py

For typical studies (the README's recipes and the defaults at a hospital's size), the
hospital calibrates the training and evaluation noise (each part to the whole target, as
the runtime does) once by PLD (what the ledger uses) and once by RDP (the cross-check),
and prints one JSON line per study: both noise multipliers, the saving, the calibrated
study's cost under each accountant, and the seconds calibration took.
"""

from __future__ import annotations

import json
import time
import warnings

from datasites.privacy.accounting import calibrate_study
from datasites.privacy.budget import EVAL_SHARE

DELTA = 1e-5
STUDIES = {  # name: (epsilon, n, batch_size, local_epochs, rounds, evaluations)
    "ehr recipe (logistic, 10 rounds)": (1.0, 5_000, 512, 1, 10, 11),
    "ehr defaults (mlp, 20 rounds of 5 epochs)": (1.0, 14_000, 512, 5, 20, 21),
    "pathmnist (cnn, 20 rounds)": (3.0, 18_000, 128, 1, 20, 21),
    "small hospital (2,000 rows)": (1.0, 2_000, 64, 1, 10, 11),
}


def main() -> None:
    warnings.filterwarnings("ignore", message="Optimal order is the")
    for name, (eps, n, batch, epochs, rounds, evaluations) in STUDIES.items():
        kwargs = dict(
            epsilon=eps,
            delta=DELTA,
            n=n,
            batch_size=batch,
            local_epochs=epochs,
            rounds=rounds,
            evaluations=evaluations,
            eval_share=EVAL_SHARE,
        )
        started = time.perf_counter()
        pld = calibrate_study(**kwargs)
        seconds = time.perf_counter() - started
        rdp = calibrate_study(**kwargs, accountant="rdp")
        saving = 1 - pld.train.noise_multiplier / rdp.train.noise_multiplier
        print(
            json.dumps(
                {
                    "benchmark": "accounting",
                    "study": name,
                    "epsilon": eps,
                    "n": n,
                    "sigma_train_pld": round(pld.train.noise_multiplier, 4),
                    "sigma_train_rdp": round(rdp.train.noise_multiplier, 4),
                    "train_noise_saving": round(saving, 4),
                    "sigma_eval_pld": round(pld.evaluation.noise_multiplier, 3),
                    "sigma_eval_rdp": round(rdp.evaluation.noise_multiplier, 3),
                    "pld_study_pld_epsilon": round(pld.total_epsilon(DELTA), 4),
                    "pld_study_rdp_epsilon": round(pld.total_epsilon(DELTA, accountant="rdp"), 4),
                    "rdp_study_pld_epsilon": round(rdp.total_epsilon(DELTA), 4),
                    "pld_calibration_s": round(seconds, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
