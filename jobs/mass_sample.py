"""Generate crystals at scale: a pool of model replicas on Ray, streamed to Parquet.

Local (a private Ray instance, shipped checkpoint, CSP on the Perov-5 test compositions):

    python jobs/mass_sample.py --out outputs/perov5_csp

On a cluster:

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/mass_sample.py --compositions my_formulas.txt --num-samples 1000000 \\
        --replicas 64 --gpus-per-replica 1 --out s3://my-bucket/campaign1

--out is a local directory or a URL (s3://bucket/prefix, gs://bucket/prefix, file:///path);
credentials come from the environment (e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL) of the driver
and of every Ray node, never from the URL, and are written nowhere. Inside a job submitted with
--working-dir, a relative --out is refused: it would land in the job's temporary copy.

Rerunning the same command on the same --out resumes: finished work units are skipped and the
final dataset holds exactly --num-samples rows with unique sample_ids. Ctrl-C stops the run
without counting the interrupted attempts. The same command is `crysray sample`.
"""

import sys

from crysray.commands import job_main


def main(argv=None) -> int:
    return job_main("sample", "mass_sample.py", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
