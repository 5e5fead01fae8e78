"""topoccl: topology-aware collective communication.

``Communicator.from_env()`` joins the job the launcher started (``topoccl run``, torchrun,
mpirun, Slurm); its collectives work in place on numpy arrays and other C-contiguous
buffers, release the GIL while they wait, and raise ``TopocclError`` (with ``culprits``,
the ranks blamed) when they fail.
"""

from ._topoccl import Communicator, Compression, TopocclError, __version__

__all__ = ["Communicator", "Compression", "TopocclError", "__version__"]
