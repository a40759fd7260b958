"""Train a crysray model with Ray Train (DDP: gloo on CPU, NCCL on GPU).

Local (a private Ray instance):

    python jobs/train.py --config crysbfn_perov5 --workers 2 --storage runs/ray --name perov5 \\
        train.max_minutes=60

Cluster (storage must be shared: NFS or s3://...):

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/train.py --workers 8 --gpu --storage s3://bucket/crysray --name perov5

Running the same command again with the same --storage and --name resumes from the latest
checkpoint; a crashed worker restarts from it too (FailureConfig). The final EMA weights are
exported to --export as an inference checkpoint for jobs/mass_sample.py. The same command is
`crysray ray-train`.
"""

import sys

from crysray.commands import job_main


def main(argv=None) -> int:
    return job_main("ray-train", "train.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
