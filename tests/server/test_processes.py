"""What stays the same from one Python process to the next.

Tests here start Python processes of their own (no server): a sample must
not depend on the process that makes it, since worker processes and Dask
workers make the samples the server sends.
"""

import hashlib
import sys

from support import ROOT
from support.commands import run

from data_simulator import SimulatedHealthData

DIGEST = (
    "import hashlib, sys; sys.path.insert(0, sys.argv[1]); "
    "from data_simulator import SimulatedHealthData as S; "
    "t = ''.join(S(seed=3, sequence_length=100).samples_json(range(200))); "
    "print(hashlib.sha256(t.encode()).hexdigest())"
)


def test_samples_do_not_depend_on_the_process_or_hash_seed() -> None:
    digests = set()
    for hash_seed in ("1", "2"):
        done = run(
            [sys.executable, "-c", DIGEST, ROOT], env={"PYTHONHASHSEED": hash_seed}
        )
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    here = "".join(
        SimulatedHealthData(seed=3, sequence_length=100).samples_json(range(200))
    )
    assert digests == {hashlib.sha256(here.encode()).hexdigest()}
