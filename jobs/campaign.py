"""Screen chemical systems end to end: compositions, CSP samples, tiered MatGL funnel, ranked
candidates per system with hull diagrams, CIFs and DFT inputs.

Local (a private Ray instance, the shipped Materials Project model, the offline local hull):

    python jobs/campaign.py --chemsys Li-Mn-O Na-Fe-P-O --out outputs/screen1

On a cluster:

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/campaign.py --chemsys systems.txt --max-atoms 20 --replicas 16 \\
        --gpus-per-replica 1 --funnel-replicas 48 --hull mp --out s3://my-bucket/screen1

Rerunning the same command on the same --out resumes at the stage it stopped. The same
command is `crysray campaign`.
"""

import sys

from crysray.commands import job_main


def main(argv=None) -> int:
    return job_main("campaign", "campaign.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
