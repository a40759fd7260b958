"""Run the MatGL stability funnel over a sampling run directory (resumable, exactly once).

    python jobs/filter_stability.py --run outputs/perov5_csp [--hull mp|local] [--offline]
    python jobs/filter_stability.py --run s3://my-bucket/campaign1 --hull local

Per work unit: structural validity, SMACT composition validity, novelty against the training
set, batched MatGL relaxation, formation energy on the Materials Project's scale and energy
above the chosen hull (funnel/unit-*.parquet); then run-wide uniqueness and the S.U.N. count
(funnel/_unique/*.parquet, funnel/_summary.json). The same stage runs inside
jobs/mass_sample.py with --funnel; the same command is `crysray funnel`.
"""

import sys

from crysray.commands import job_main


def main(argv=None) -> int:
    return job_main("funnel", "filter_stability.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
