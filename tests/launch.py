"""Runs an entry point under torchrun on CPU processes (gloo), for the tests that compare several
processes with one."""

import os
import subprocess
import sys


def torchrun(module: str, nproc: int, *args: str) -> None:
    """`python -m module args` on nproc processes, one thread each; a failure fails the test with its output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module,
           *args]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
