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

#: degrees d of the space-time polynomial models ``<spatial>ST<d>`` (ST0: one motion for the whole clip)
ST_POLY_DEGREES: tuple[int, ...] = (0, 1, 2, 3)
#: spacings K (in frames) between the control points of the cubic B-spline models ``<spatial>BSpline<K>``
ST_BSPLINE_SPACINGS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10)

#: Space-time motion models over a clip of T frames: name → (spatial model in ``FT``, temporal basis
#: ``"poly"`` or ``"bspline"``, its degree d or its control-point spacing K in frames). A segment's flow
#: is (spatial basis) ⊗ (temporal basis); see :func:`emseg.core.coherence_math.temporal_basis`.
#: ``QuadraticST1`` is the CVPR 2023 space-time model (12 = 6 × {t, 1} functions); ``QuadraticBSpline5``
#: a quadratic motion whose 6 coefficients are cubic B-splines in t with a control point every 5 frames
#: (the B-splines are always cubic: the number is K, never the degree). These are kept out of ``FT``:
#: the frame model (``--param_model``) fits one frame, and the B-spline models' ft depends on T.
ST_MODELS: dict[str, tuple[str, str, int]] = {
    **{f"{s}ST{d}": (s, "poly", d) for s in FT for d in ST_POLY_DEGREES},
    **{f"{s}BSpline{k}": (s, "bspline", k) for s in FT for k in ST_BSPLINE_SPACINGS},
}
