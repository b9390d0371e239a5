"""The names the method's math accepts: parametric motion models, flow distances, θ solvers.

They live apart from :mod:`emseg.core.coherence_math` (which re-exports them) because the settings
(:mod:`emseg.core.hparams`) offer them as choices, and every command line reads the settings to
declare its flags: keeping them here, free of any import, lets ``--help`` answer without loading
torch (about 2 s).
"""

from __future__ import annotations

#: parametric motion model → ft, the number of parameters per flow component
FT: dict[str, int] = {"Affine": 3, "Quadratic": 6}
#: the distances between the flow and a mask's parametric flow
V_DISTANCES: tuple[str, ...] = ("squared", "l1", "l2")
#: the M-step's θ solvers
THETA_METHODS: tuple[str, ...] = ("IRLS", "OLS", "Optim")
