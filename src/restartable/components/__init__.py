"""Reference components on earth2studio's protocols, restart-aware at every level.

- :class:`SyntheticData`: a deterministic data source on a lat/lon grid.
- :class:`Persistence`: a prognostic with nothing hidden (level 1 suffices).
- :class:`Lorenz96`: a prognostic whose leapfrog scheme carries the previous
  step as hidden state, so resuming mid-rollout needs level 2.
- :class:`WindSpeed`: a diagnostic, ``sqrt(u**2 + v**2)``.
- :class:`GaussianPerturbation`: ensemble noise from a ``torch.Generator``
  whose state is checkpointed.
- :class:`MemoryIO` and :class:`ZarrIO`: IO backends that can be resumed
  into without clobbering what was written.

They need torch and xarray, and :class:`ZarrIO` needs zarr: ``pip install
'restartable[workflows]'`` installs all three. Importing this package without
torch or xarray raises a :class:`ModuleNotFoundError` that says so.
"""

from .._extras import require

# Before the modules below import torch, so that a missing one is named with its extra.
require("torch", "xarray", extra="workflows", feature="restartable.components")

from .data import SyntheticData  # noqa: E402
from .diagnostic import WindSpeed  # noqa: E402
from .io import MemoryIO, ZarrIO  # noqa: E402
from .perturbation import GaussianPerturbation  # noqa: E402
from .prognostic import Lorenz96, Persistence  # noqa: E402

__all__ = ["GaussianPerturbation", "Lorenz96", "MemoryIO", "Persistence", "SyntheticData", "WindSpeed", "ZarrIO"]
