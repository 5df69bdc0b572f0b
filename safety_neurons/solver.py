"""Closed-form, rank-limited, utility-preserving linear edit (reduced-rank ridge regression).

Row-vector convention: a layer maps a key row ``x`` (1 × d) to ``x @ W`` (1 × m).  Given

* ``X``      (n × d): keys whose outputs should change (e.g. MLP inputs of harmful prompts
  in a low-resource language),
* ``D``      (n × m): the wanted change of outputs, ``target - X @ W``,
* ``X_safe`` (k × d): optional utility anchors whose outputs should *not* change,

the **soft** edit (Multilingual Safety Alignment via Sparse Weight Editing) solves ::

    min_ΔW  ‖X ΔW − D‖² + γ ‖X_safe ΔW‖² + λ ‖ΔW‖²      s.t.  rank(ΔW) ≤ r.

With ``Q = XᵀX + γ X_safeᵀX_safe + λI = RᵀR`` (Cholesky, R upper) and the unconstrained ridge
solution ``M = Q⁻¹XᵀD`` the objective equals ``‖R(ΔW − M)‖² + ‖D‖² − ‖RM‖²``, so by
Eckart–Young the exact constrained minimiser is ``ΔW* = R⁻¹ [R M]_r`` where ``[·]_r`` is the
best rank-r approximation (truncated SVD).  Note ``R M = R⁻ᵀ XᵀD``, one triangular solve.

The **nullspace** edit (AlphaEdit-style) additionally forces ``ΔW = U0 B`` where the orthonormal
columns of ``U0`` (d × d0) span the (approximate) null space of ``X_safe``; the same reduced-rank
ridge problem is solved for ``B`` with keys ``X U0``, so ``X_safe ΔW ≈ 0`` to numerical precision
when ``U0`` is the exact null space.

The settings (rank, γ, ridge, method, null-space threshold) are one small object, `SolverOptions`: its defaults
are `solve_edit`'s, and an `EditSpec` carries one as its ``solver``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["Solution", "SolverError", "SolverOptions", "solve_edit", "objective", "null_space_basis"]

_F64 = torch.float64
_EPS = float(torch.finfo(_F64).eps)
# Above this size the condition number of Q is estimated by block power / inverse iteration
# instead of a full symmetric eigendecomposition (which costs ~10 s at d = 4096 on a CPU).
_EXACT_COND_MAX_DIM = 2048

ArrayLike = Union[Float[Tensor, "..."], Float[np.ndarray, "..."]]  # noqa: UP007 (a runtime alias)


class SolverError(ValueError):
    """The solver's inputs or settings are invalid: shapes, non-finite values, options, a singular Q."""


@dataclass(frozen=True)
class Solution:
    """Result of :func:`solve_edit`.

    ``delta`` is the weight edit (add it to ``W``: ``W_new = W + delta``).  All scalar fields
    are plain Python numbers; :meth:`to_dict` returns them without ``delta``.
    """

    delta: Float[Tensor, "d m"]  # float64, CPU
    rank: int  # numerical rank of delta actually used (≤ requested rank; may be < if n or D is low-rank)
    objective: float  # ‖XΔ−D‖² + γ‖X_safeΔ‖² + λ‖Δ‖² at delta (same γ, λ as the solve)
    loss_before: float  # ‖D‖²  (alignment loss with no edit)
    loss_after: float  # ‖X Δ − D‖²
    utility_after: float  # ‖X_safe Δ‖²  (0.0 when no X_safe)
    energy_kept: float  # Σ_r² / Σ² of the whitened matrix R M (1.0 for full rank or D = 0)
    ridge: float  # the absolute λ used
    condition: float  # condition number of Q (of the reduced Q = U0ᵀQU0 for "nullspace")
    null_dim: int | None  # d0 = room to edit for "nullspace", else None

    def to_dict(self) -> dict:
        """All scalar fields (everything except ``delta``)."""
        out = asdict(self)
        del out["delta"]
        return out


# ----------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------


def _as_f64(name: str, a: ArrayLike) -> Float[Tensor, ...]:
    """Convert a tensor / numpy array / nested list to a float64 CPU tensor (no grad)."""
    if isinstance(a, Tensor):
        if a.is_complex():
            raise SolverError(f"{name} must be real, got dtype {a.dtype}")
        t = a.detach().to(device="cpu", dtype=_F64)
    else:
        arr = np.asarray(a)
        if np.iscomplexobj(arr):
            raise SolverError(f"{name} must be real, got dtype {arr.dtype}")
        try:
            t = torch.as_tensor(arr.astype(np.float64, copy=False), dtype=_F64)
        except (TypeError, ValueError) as exc:
            raise SolverError(f"{name} could not be converted to a float64 array: {exc}") from exc
    if t.ndim != 2:
        raise SolverError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t


def _check_finite(name: str, t: Tensor) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise SolverError(
            f"{name} contains {bad} non-finite entries (NaN or inf) out of {t.numel()} (shape {tuple(t.shape)})"
        )


def _check_nonneg(name: str, v: float) -> float:
    if isinstance(v, (bool, str, bytes)):  # True / "0.1" are mistakes, not numbers
        raise SolverError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    try:
        v = float(v)
    except (TypeError, ValueError) as exc:
        raise SolverError(f"{name} must be a real number, got {v!r}") from exc
    if not math.isfinite(v) or v < 0:
        raise SolverError(f"{name} must be a finite number >= 0, got {v}")
    return v


def _check_rank(rank: int | None, limit: int, what: str, note: str = "") -> int | None:
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise SolverError(f"rank must be a positive int or None, got {rank!r}")
    rank = int(rank)
    if rank < 1:
        raise SolverError(f"rank must be >= 1 (or None for full rank), got rank={rank}")
    if rank > limit:
        raise SolverError(f"rank={rank} is larger than possible: it exceeds {what}={limit}{note}")
    return rank


# ----------------------------------------------------------------------------------------
# the settings
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverOptions:
    """The closed form's settings, checked when made (a bad one is a `SolverError`).

    Its defaults are `solve_edit`'s; `EditSpec.solver` holds one, and ``options.solve(X, D, X_safe)`` is
    ``solve_edit(X, D, X_safe, **options.to_dict())``.

    * ``rank``: the rank limit of ΔW (None: none, the plain ridge solution);
    * ``gamma``: the weight γ of the preserved rows;
    * ``ridge``: λ, relative to tr(XᵀX + γ X_safeᵀX_safe)/d (``ridge_mode="relative"``) or absolute;
    * ``method``: ``"soft"`` (the penalty) or ``"nullspace"`` (ΔW in the null space of X_safe), with at most
      one of ``null_threshold`` / ``null_energy`` widening that null space (see `null_space_basis`).
    """

    rank: int | None = 32
    gamma: float = 1.0
    ridge: float = 1e-2
    ridge_mode: Literal["relative", "absolute"] = "relative"
    method: Literal["soft", "nullspace"] = "soft"
    null_threshold: float | None = None
    null_energy: float | None = None

    def __post_init__(self):
        if self.rank is not None:
            object.__setattr__(self, "rank", _check_rank(self.rank, math.inf, "", ""))
        object.__setattr__(self, "gamma", _check_nonneg("gamma", self.gamma))
        object.__setattr__(self, "ridge", _check_nonneg("ridge", self.ridge))
        if self.ridge_mode not in ("relative", "absolute"):
            raise SolverError(f"ridge_mode must be 'relative' or 'absolute', got {self.ridge_mode!r}")
        if self.method not in ("soft", "nullspace"):
            raise SolverError(f"method must be 'soft' or 'nullspace', got {self.method!r}")
        if self.null_threshold is not None and self.null_energy is not None:
            raise SolverError("give at most one of null_threshold and null_energy, not both")
        for name, what in (
            ("null_threshold", "is relative to the largest eigenvalue"),
            ("null_energy", "is a fraction of the total energy"),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if self.method != "nullspace":
                raise SolverError("null_threshold / null_energy only apply to method='nullspace'")
            value = _check_nonneg(name, value)
            if value > 1:
                raise SolverError(f"{name} {what} and must be in [0, 1], got {value}")
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> SolverOptions:
        """A copy with some settings changed (checked again)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise SolverError(f"unknown solver setting(s) {unknown}; the settings are {[f.name for f in fields(self)]}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> SolverOptions:
        if not isinstance(d, Mapping):
            raise SolverError(f"solver options must be a dict, got {type(d).__name__} {d!r:.60}")
        return cls().replace(**d)

    def solve(self, X: ArrayLike, D: ArrayLike, X_safe: ArrayLike | None = None) -> Solution:
        """`solve_edit` with these settings."""
        return solve_edit(X, D, X_safe, **self.to_dict())


# ----------------------------------------------------------------------------------------
# linear-algebra helpers
# ----------------------------------------------------------------------------------------


def _thin_svd(A: Float[Tensor, "a b"]) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``A = U diag(s) Vh``; for non-square A a QR step first (much faster on CPU)."""
    a, b = A.shape
    if a > b:
        Qa, Ra = torch.linalg.qr(A)
        U, s, Vh = torch.linalg.svd(Ra)
        return Qa @ U, s, Vh
    if b > a:
        Qb, Rb = torch.linalg.qr(A.mT)  # A.T = Qb Rb = Qb U2 S Vh2  =>  A = Vh2ᵀ S (Qb U2)ᵀ
        U2, s, Vh2 = torch.linalg.svd(Rb)
        return Vh2.mT, s, (Qb @ U2).mT
    return torch.linalg.svd(A, full_matrices=False)


def _spd_condition(Q: Float[Tensor, "d d"], L: Float[Tensor, "d d"]) -> float:
    """Condition number λ_max/λ_min of the SPD matrix ``Q = L Lᵀ``.

    Exact (eigvalsh) for d ≤ 2048; otherwise a block power iteration on Q and a block inverse
    iteration via the Cholesky factor (a lower bound on the true value, accurate to a few %).
    """
    d = Q.shape[0]
    if d <= _EXACT_COND_MAX_DIM:
        ev = torch.linalg.eigvalsh(Q)
        lo, hi = float(ev[0]), float(ev[-1])
        return hi / lo if lo > 0 else math.inf
    p, iters = 16, 20
    g = torch.Generator().manual_seed(0)
    V = torch.linalg.qr(torch.randn(d, p, generator=g, dtype=_F64))[0]
    W = V.clone()
    Lt = L.mT.contiguous()

    def qinv(B: Tensor) -> Tensor:  # Q⁻¹ B via two triangular solves (faster than cholesky_solve)
        return torch.linalg.solve_triangular(Lt, torch.linalg.solve_triangular(L, B, upper=False), upper=True)

    for _ in range(iters):
        V = torch.linalg.qr(Q @ V)[0]
        W = torch.linalg.qr(qinv(W))[0]
    hi = float(torch.linalg.eigvalsh(V.mT @ Q @ V)[-1])  # Ritz value ≤ λ_max
    mu = float(torch.linalg.eigvalsh(W.mT @ qinv(W))[-1])  # Ritz value ≤ 1/λ_min
    return hi * mu if mu > 0 else math.inf


def null_space_basis(
    X_safe: Float[Tensor, "k d"],
    *,
    null_threshold: float | None = None,
    null_energy: float | None = None,
) -> Float[Tensor, "d d0"]:
    """Orthonormal basis ``U0`` of the (approximate) null space of ``X_safe`` (float64, d × d0).

    With ``X_safe = U diag(σ) Vᵀ`` the eigenvalues of ``X_safeᵀX_safe`` are ``e_i = σ_i²`` (zero
    for the d − rank directions).  A right singular direction is kept when

    * it is numerically null (``σ_i ≤ max(k, d)·eps·σ_max``, as in ``matrix_rank``) — always; or
    * ``null_threshold=t``: ``e_i ≤ t · e_max`` (relative eigenvalue threshold, t ∈ [0, 1]); or
    * ``null_energy=f``: it is among the smallest-eigenvalue directions that *together* hold at
      most a fraction ``f`` of the total energy ``Σ e_i = ‖X_safe‖²_F`` (f ∈ [0, 1]).

    Larger t / f ⇒ more room to edit but ``‖X_safe U0‖² ≤ max kept e_i`` leaks into utility.
    Computed via an SVD of ``X_safe`` (not an eigendecomposition of the Gram matrix) so the
    exact null space is accurate to ``eps·σ_max`` rather than ``sqrt(eps)``.
    """
    S = _as_f64("X_safe", X_safe)
    _check_finite("X_safe", S)
    if null_threshold is not None and null_energy is not None:
        raise SolverError("give at most one of null_threshold and null_energy, not both")
    if null_threshold is not None:
        null_threshold = _check_nonneg("null_threshold", null_threshold)
        if null_threshold > 1:
            raise SolverError(
                f"null_threshold is relative to the largest eigenvalue and must be in [0, 1], got {null_threshold}"
            )
    if null_energy is not None:
        null_energy = _check_nonneg("null_energy", null_energy)
        if null_energy > 1:
            raise SolverError(f"null_energy is a fraction of the total energy and must be in [0, 1], got {null_energy}")
    k, d = S.shape
    if k == 0:
        return torch.eye(d, dtype=_F64)
    if k >= d:
        R = torch.linalg.qr(S, mode="r")[1]  # S = Q R, same right singular vectors as R
        _, s, Vh = torch.linalg.svd(R)
        V = Vh.mT
    else:
        # Sᵀ = Qc [R1; 0]  =>  S = R1ᵀ Qc[:, :k]ᵀ; Qc[:, k:] spans an exact part of the null space.
        Qc, Rc = torch.linalg.qr(S.mT, mode="complete")
        _, s, Wh = torch.linalg.svd(Rc[:k].mT)
        V = torch.cat([Qc[:, :k] @ Wh.mT, Qc[:, k:]], dim=1)
        s = torch.cat([s, torch.zeros(d - k, dtype=_F64)])
    # columns of V are ordered by decreasing singular value s (length d)
    s_max = float(s[0])
    if s_max == 0.0:
        return V
    keep = s <= max(k, d) * _EPS * s_max
    e = s.square()
    if null_threshold is not None:
        keep |= e <= null_threshold * float(e[0])
    elif null_energy is not None:
        # ascending energies: the longest low-energy tail holding ≤ f of the total energy
        cum = torch.flip(e, [0]).cumsum(0)
        n_tail = int((cum <= null_energy * float(cum[-1])).sum())
        if n_tail:
            keep[d - n_tail :] = True
    # ``keep`` is monotone (a tail) because s is sorted, so the basis is a trailing block
    return V[:, keep]


def _reduced_rank_ridge(
    G: Float[Tensor, "p p"], XtD: Float[Tensor, "p m"], lam: float, rank: int | None
) -> tuple[Tensor, Tensor | None, Tensor, float, int]:
    """Solve ``min tr(BᵀGB) − 2tr(BᵀXtD) + λ‖B‖²`` s.t. rank(B) ≤ r (exactly).

    Returns ``(left, right, sigma, cond, rank_used)`` with ``B = left @ right`` (``right`` is
    None for full rank, where ``left`` is the ridge solution itself), ``sigma`` the singular
    values of the whitened ridge solution ``R M`` and ``cond`` the condition number of Q.
    """
    p = G.shape[0]
    Q = G.clone()
    Q.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(Q)  # Q = L Lᵀ, i.e. R = Lᵀ
    if int(info) != 0:
        raise SolverError(
            f"Q = XᵀX + γ X_safeᵀX_safe + λI ({p} × {p}) is singular (Cholesky failed at "
            f"pivot {int(info)}, λ = {lam:g}); use ridge > 0 (or a larger ridge)"
        )
    cond = _spd_condition(Q, L)
    if not math.isfinite(cond) or cond * p * _EPS > 1.0:
        raise SolverError(
            f"Q = XᵀX + γ X_safeᵀX_safe + λI ({p} × {p}) is singular to working precision "
            f"(condition number {cond:.3g}, λ = {lam:g}); use ridge > 0 (or a larger ridge)"
        )
    RM = torch.linalg.solve_triangular(L, XtD, upper=False)  # R M = L⁻¹ XᵀD
    # Numerical rank of R M: the triangular solve has relative error ~ eps·cond(R) = eps·√cond(Q),
    # so singular values below that (times the size) are rounding noise, not directions to edit.
    rel_tol = max(RM.shape) * _EPS * max(1.0, math.sqrt(cond))
    if rank is None:
        sigma = torch.linalg.svdvals(RM)
        used = int((sigma > rel_tol * float(sigma[0])).sum()) if float(sigma[0]) > 0 else 0
        M = torch.cholesky_solve(XtD, L)  # Q⁻¹ XᵀD, the plain ridge solution
        return M, None, sigma, cond, used
    U, sigma, Vh = _thin_svd(RM)
    used = min(rank, int((sigma > rel_tol * float(sigma[0])).sum())) if float(sigma[0]) > 0 else 0
    left = torch.linalg.solve_triangular(L.mT, U[:, :used] * sigma[:used], upper=True)
    return left, Vh[:used], sigma, cond, used


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------


def objective(
    X: ArrayLike,
    D: ArrayLike,
    X_safe: ArrayLike | None,
    delta: ArrayLike,
    gamma: float,
    ridge_abs: float,
) -> float:
    """Soft objective ``‖X Δ − D‖² + γ ‖X_safe Δ‖² + λ ‖Δ‖²`` (Frobenius norms, float64)."""
    X, D, delta = _as_f64("X", X), _as_f64("D", D), _as_f64("delta", delta)
    val = float((X @ delta - D).square().sum()) + float(ridge_abs) * float(delta.square().sum())
    if X_safe is not None:
        val += float(gamma) * float((_as_f64("X_safe", X_safe) @ delta).square().sum())
    return val


def solve_edit(
    X: Float[Tensor, "n d"] | Float[np.ndarray, "n d"],
    D: Float[Tensor, "n m"] | Float[np.ndarray, "n m"],
    X_safe: Float[Tensor, "k d"] | Float[np.ndarray, "k d"] | None = None,
    *,
    rank: int | None = SolverOptions.rank,
    gamma: float = SolverOptions.gamma,
    ridge: float = SolverOptions.ridge,
    ridge_mode: Literal["relative", "absolute"] = SolverOptions.ridge_mode,
    method: Literal["soft", "nullspace"] = SolverOptions.method,
    null_threshold: float | None = SolverOptions.null_threshold,
    null_energy: float | None = SolverOptions.null_energy,
) -> Solution:
    """Closed-form rank-≤r edit ``ΔW`` (d × m) minimising
    ``‖X ΔW − D‖² + γ‖X_safe ΔW‖² + λ‖ΔW‖²`` (exactly, via whitened truncated SVD).

    * ``rank=None``: no rank limit (the plain ridge solution ``Q⁻¹XᵀD``).
    * ``ridge_mode="relative"``: ``λ = ridge · tr(XᵀX + γ X_safeᵀX_safe) / d`` (scale-free);
      ``"absolute"``: ``λ = ridge``.
    * ``method="nullspace"``: ``ΔW = U0 B`` with ``U0`` from :func:`null_space_basis`
      (``null_threshold`` / ``null_energy``; default: the numerical null space only) and the same
      objective minimised over ``B`` (keys ``X U0``; the γ term vanishes on the exact null space).
      A relative ridge is then taken w.r.t. the reduced problem: ``tr(U0ᵀ(XᵀX + γX_safeᵀX_safe)U0)/d0``.

    The settings are those of `SolverOptions` (with its defaults; ``options.solve(X, D, X_safe)`` passes
    them all). All computation is float64 on CPU whatever the input dtype/device. Raises `SolverError`
    (a ``ValueError``) on bad hyper-parameters, bad shapes, non-finite inputs or a (numerically) singular Q.
    """
    SolverOptions(rank, gamma, ridge, ridge_mode, method, null_threshold, null_energy)  # the settings, before any work
    X = _as_f64("X", X)
    D = _as_f64("D", D)
    n, d = X.shape
    m = D.shape[1]
    if m == 0:
        raise SolverError(f"empty neuron set: D has 0 columns (shape {tuple(D.shape)})")
    if n == 0:
        raise SolverError(f"no key rows: X has n == 0 rows (shape {tuple(X.shape)})")
    if d == 0:
        raise SolverError(f"X has 0 columns (shape {tuple(X.shape)}): nothing to edit")
    if D.shape[0] != n:
        raise SolverError(
            f"row-count mismatch: X has {n} rows (shape {tuple(X.shape)}) but D has {D.shape[0]} (shape {tuple(D.shape)})"
        )
    S = None
    if X_safe is not None:
        S = _as_f64("X_safe", X_safe)
        if S.shape[1] != d:
            raise SolverError(
                f"column mismatch: X_safe has {S.shape[1]} columns (shape {tuple(S.shape)}) "
                f"but X has {d} (shape {tuple(X.shape)})"
            )
    _check_finite("X", X)
    _check_finite("D", D)
    if S is not None:
        _check_finite("X_safe", S)
    gamma = _check_nonneg("gamma", gamma)
    ridge = _check_nonneg("ridge", ridge)
    if ridge_mode not in ("relative", "absolute"):
        raise SolverError(f"ridge_mode must be 'relative' or 'absolute', got {ridge_mode!r}")
    if method not in ("soft", "nullspace"):
        raise SolverError(f"method must be 'soft' or 'nullspace', got {method!r}")

    G = X.mT @ X
    if S is not None and gamma > 0:
        G = G + gamma * (S.mT @ S)
    XtD = X.mT @ D

    if method == "soft":
        if null_threshold is not None or null_energy is not None:
            raise SolverError("null_threshold / null_energy only apply to method='nullspace'")
        rank = _check_rank(rank, min(d, m), "min(d, m)", f" (d = {d}, m = {m})")
        lam = ridge * float(G.diagonal().sum()) / d if ridge_mode == "relative" else ridge
        left, right, sigma, cond, used = _reduced_rank_ridge(G, XtD, lam, rank)
        null_dim = None
    else:
        if S is None:
            raise SolverError("method='nullspace' needs X_safe (the keys whose outputs must be preserved)")
        rank = _check_rank(rank, min(d, m), "min(d, m)", f" (d = {d}, m = {m})")
        U0 = null_space_basis(S, null_threshold=null_threshold, null_energy=null_energy)
        d0 = U0.shape[1]
        if d0 == 0:
            raise SolverError(
                f"no room to edit: the null space of X_safe (shape {tuple(S.shape)}) has dimension 0 "
                f"with null_threshold={null_threshold}, null_energy={null_energy}; relax the "
                f"threshold (raise null_threshold or null_energy to admit low-energy directions)"
            )
        rank = _check_rank(rank, min(d0, m), "min(d0, m)", f" (d0 = {d0} = null-space dimension of X_safe, m = {m})")
        G0 = U0.mT @ G @ U0
        lam = ridge * float(G0.diagonal().sum()) / d0 if ridge_mode == "relative" else ridge
        left0, right, sigma, cond, used = _reduced_rank_ridge(G0, U0.mT @ XtD, lam, rank)
        left = U0 @ left0
        null_dim = d0

    # delta = left @ right (low-rank factors) or left (full rank); evaluate losses through them
    if right is None:
        delta = left
        resid = X @ delta - D
        util = float((S @ delta).square().sum()) if S is not None else 0.0
    else:
        delta = left @ right
        resid = (X @ left) @ right - D
        util = float(((S @ left) @ right).square().sum()) if S is not None else 0.0
    loss_after = float(resid.square().sum())
    obj = loss_after + gamma * util + lam * float(delta.square().sum())
    total = float(sigma.square().sum())
    kept = float(sigma[:used].square().sum()) if right is not None else total
    energy_kept = kept / total if total > 0 else 1.0

    return Solution(
        delta=delta.contiguous(),
        rank=int(used),
        objective=obj,
        loss_before=float(D.square().sum()),
        loss_after=loss_after,
        utility_after=util,
        energy_kept=energy_kept,
        ridge=float(lam),
        condition=float(cond),
        null_dim=null_dim,
    )
