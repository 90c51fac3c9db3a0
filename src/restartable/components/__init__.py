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

They need torch and xarray (``pip install 'restartable[workflows]'``);
:class:`ZarrIO` needs zarr.
"""

from .data import SyntheticData
from .diagnostic import WindSpeed
from .io import MemoryIO, ZarrIO
from .perturbation import GaussianPerturbation
from .prognostic import Lorenz96, Persistence

__all__ = ["GaussianPerturbation", "Lorenz96", "MemoryIO", "Persistence", "SyntheticData", "WindSpeed", "ZarrIO"]
