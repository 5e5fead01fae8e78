"""A job whose ranks disagree: rank 0 all-reduces 4 elements, the others 8. Every rank
must raise TopocclError naming the ranks (never hang). Prints `raised rank R: culprits`."""

import numpy as np
import topoccl

comm = topoccl.Communicator.from_env()
n = 4 if comm.rank == 0 else 8
try:
    comm.all_reduce(np.ones(n, dtype=np.float32))
except topoccl.TopocclError as e:
    print(f"raised rank {comm.rank}: {e.culprits}: {e}", flush=True)
else:
    print(f"no error on rank {comm.rank}", flush=True)
