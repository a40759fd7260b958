"""Turn a sampling run into report.md, report.json and PNG plots, stored in the run.

    python jobs/report.py --run outputs/perov5_csp
    python jobs/report.py --run s3://my-bucket/campaign1

The report itself is crysray.report; the same command is `crysray report`.
"""

import sys

from crysray.commands import job_main


def main(argv=None) -> int:
    return job_main("report", "report.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
