"""Tests for safety_neurons.solver (closed-form reduced-rank ridge edit)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from safety_neurons.solver import Solution, null_space_basis, objective, solve_edit

torch.set_num_threads(1)

F64 = torch.float64


def _problem(seed: int = 0, n: int = 40, d: int = 12, m: int = 7, k: int | None = None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    D = torch.randn(n, m, generator=g, dtype=F64)
    S = None if k is None else torch.randn(k, d, generator=g, dtype=F64)
    return X, D, S


def _Q(X, S, gamma, lam):
    Q = X.T @ X + lam * torch.eye(X.shape[1], dtype=F64)
    if S is not None:
        Q = Q + gamma * S.T @ S
    return Q


def _obj_t(X, D, S, delta, gamma, lam):
    """Differentiable copy of the soft objective."""
    val = (X @ delta - D).square().sum() + lam * delta.square().sum()
    if S is not None:
        val = val + gamma * (S @ delta).square().sum()
    return val


def _lbfgs_best(X, D, S, gamma, lam, r, restarts=3):
    """Generic optimiser: LBFGS over ΔW = A Bᵀ, several restarts, best objective."""
    d, m = X.shape[1], D.shape[1]
    best = math.inf
    for i in range(restarts):
        g = torch.Generator().manual_seed(100 + i)
        A = torch.randn(d, r, generator=g, dtype=F64).requires_grad_()
        B = torch.randn(m, r, generator=g, dtype=F64).requires_grad_()
        opt = torch.optim.LBFGS(
            [A, B],
            lr=1,
            max_iter=200,
            history_size=30,
            tolerance_grad=1e-11,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            f = _obj_t(X, D, S, A @ B.T, gamma, lam)
            f.backward()
            return f

        opt.step(closure)
        with torch.no_grad():
            best = min(best, float(_obj_t(X, D, S, A @ B.T, gamma, lam)))
    return best


# ---------------------------------------------------------------------------------------
# optimality of the closed form
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 5, 30])
def test_closed_form_beats_random_rank_r_perturbations(k):
    X, D, S = _problem(1, k=k)
    r, gamma = 3, 2.0
    sol = solve_edit(X, D, S, rank=r, gamma=gamma, ridge=0.1)
    U, s, Vh = torch.linalg.svd(sol.delta)
    P, V = U[:, :r] * s[:r], Vh[:r].T  # delta = P Vᵀ
    g = torch.Generator().manual_seed(7)
    for scale in (1e-4, 1e-2, 1.0):
        for _ in range(50):
            P2 = P + scale * torch.randn(P.shape, generator=g, dtype=F64)
            V2 = V + scale * torch.randn(V.shape, generator=g, dtype=F64)
            other = objective(X, D, S, P2 @ V2.T, gamma, sol.ridge)
            assert sol.objective <= other + 1e-10 * abs(other)
    # completely random rank-r matrices are worse too
    for _ in range(50):
        R = torch.randn(12, r, generator=g, dtype=F64) @ torch.randn(r, 7, generator=g, dtype=F64)
        assert sol.objective <= objective(X, D, S, 0.1 * R, gamma, sol.ridge)


@pytest.mark.parametrize("k,gamma,r", [(None, 1.0, 3), (5, 3.0, 3), (20, 0.5, 2)])
def test_closed_form_matches_generic_optimiser(k, gamma, r):
    X, D, S = _problem(2, k=k)
    sol = solve_edit(X, D, S, rank=r, gamma=gamma, ridge=0.05)
    best = _lbfgs_best(X, D, S, gamma, sol.ridge, r)
    assert sol.objective <= best * (1 + 1e-9)
    assert sol.objective == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("r", [1, 2, 3, 5, 7])
def test_rank_of_delta_at_most_r(r):
    X, D, S = _problem(3, k=4)
    sol = solve_edit(X, D, S, rank=r)
    sv = torch.linalg.svdvals(sol.delta)
    assert int((sv > 1e-10 * sv[0]).sum()) <= r
    assert sol.rank == r
    assert 0.0 < sol.energy_kept <= 1.0 + 1e-12


def test_energy_kept_increases_with_rank():
    X, D, _ = _problem(4)
    kept = [solve_edit(X, D, rank=r).energy_kept for r in range(1, 8)]
    assert all(a < b for a, b in zip(kept, kept[1:]))
    assert kept[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("k", [None, 6])
@pytest.mark.parametrize("rank", [None, 7])
def test_full_rank_equals_ridge_solution(k, rank):
    X, D, S = _problem(5, k=k)
    gamma, lam = 1.5, 0.3
    sol = solve_edit(X, D, S, rank=rank, gamma=gamma, ridge=lam, ridge_mode="absolute")
    M = torch.linalg.solve(_Q(X, S, gamma, lam), X.T @ D)
    torch.testing.assert_close(sol.delta, M, rtol=1e-10, atol=1e-12)
    assert sol.rank == 7
    assert sol.energy_kept == pytest.approx(1.0)


def test_ridge_zero_full_rank_is_least_squares():
    X, D, _ = _problem(6, n=40, d=12)
    sol = solve_edit(X, D, rank=None, ridge=0.0)
    torch.testing.assert_close(sol.delta, torch.linalg.lstsq(X, D).solution, rtol=1e-9, atol=1e-11)
    assert sol.ridge == 0.0


# ---------------------------------------------------------------------------------------
# reported fields
# ---------------------------------------------------------------------------------------


def test_solution_fields_consistent():
    X, D, S = _problem(7, k=5)
    gamma, ridge = 2.0, 0.01
    sol = solve_edit(X, D, S, rank=3, gamma=gamma, ridge=ridge)
    assert isinstance(sol, Solution)
    lam = ridge * float(torch.trace(X.T @ X + gamma * S.T @ S)) / 12
    assert sol.ridge == pytest.approx(lam, rel=1e-12)
    assert sol.loss_before == pytest.approx(float(D.square().sum()), rel=1e-12)
    assert sol.loss_after == pytest.approx(float((X @ sol.delta - D).square().sum()), rel=1e-10)
    assert sol.utility_after == pytest.approx(float((S @ sol.delta).square().sum()), rel=1e-10)
    assert sol.objective == pytest.approx(objective(X, D, S, sol.delta, gamma, lam), rel=1e-10)
    assert sol.loss_after < sol.loss_before
    assert sol.condition == pytest.approx(float(torch.linalg.cond(_Q(X, S, gamma, lam))), rel=1e-8)
    assert sol.null_dim is None
    dct = sol.to_dict()
    assert "delta" not in dct
    assert set(dct) == {
        "rank",
        "objective",
        "loss_before",
        "loss_after",
        "utility_after",
        "energy_kept",
        "ridge",
        "condition",
        "null_dim",
    }
    assert all(v is None or isinstance(v, (int, float)) for v in dct.values())
    assert sol.delta.dtype == F64 and sol.delta.device.type == "cpu"
    assert sol.delta.shape == (12, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sol.rank = 5  # frozen


def test_no_safe_rows_means_zero_utility():
    X, D, _ = _problem(8)
    sol = solve_edit(X, D, rank=2)
    assert sol.utility_after == 0.0
    assert sol.objective == pytest.approx(sol.loss_after + sol.ridge * float(sol.delta.square().sum()))


def test_actual_rank_limited_by_number_of_keys():
    X, D, _ = _problem(9, n=2, d=12, m=7)
    sol = solve_edit(X, D, rank=5)
    assert sol.rank == 2
    assert int((torch.linalg.svdvals(sol.delta) > 1e-10).sum()) == 2
    assert sol.energy_kept == pytest.approx(1.0)


def test_zero_target_change_gives_zero_edit():
    X, _, S = _problem(10, k=3)
    D = torch.zeros(40, 7, dtype=F64)
    for method in ("soft", "nullspace"):
        sol = solve_edit(X, D, S, rank=3, method=method)
        assert sol.rank == 0
        assert float(sol.delta.abs().max()) == 0.0
        assert sol.loss_before == sol.loss_after == 0.0
        assert sol.energy_kept == 1.0


def test_relative_ridge_is_scale_free():
    X, D, S = _problem(11, k=5)
    a = solve_edit(X, D, S, rank=3)
    b = solve_edit(1000.0 * X, 1000.0 * D, 1000.0 * S, rank=3)
    torch.testing.assert_close(a.delta, b.delta, rtol=1e-8, atol=1e-10)
    assert b.ridge == pytest.approx(1e6 * a.ridge)
    assert b.objective == pytest.approx(1e6 * a.objective)
    assert b.condition == pytest.approx(a.condition)


def test_absolute_ridge_used_verbatim_and_shrinks():
    X, D, _ = _problem(12)
    small = solve_edit(X, D, rank=3, ridge=1e-3, ridge_mode="absolute")
    big = solve_edit(X, D, rank=3, ridge=1e3, ridge_mode="absolute")
    assert small.ridge == 1e-3 and big.ridge == 1e3
    assert float(big.delta.norm()) < float(small.delta.norm())


# ---------------------------------------------------------------------------------------
# utility preservation
# ---------------------------------------------------------------------------------------


def test_large_gamma_pushes_utility_to_zero():
    X, D, S = _problem(13, k=4)
    utils = [
        solve_edit(X, D, S, rank=3, gamma=g, ridge=1e-3, ridge_mode="absolute").utility_after
        for g in (0.0, 1.0, 100.0, 1e6)
    ]
    assert all(a > b for a, b in zip(utils, utils[1:]))
    assert utils[-1] < 1e-6 * utils[0]


@pytest.mark.parametrize("rank", [3, None])
def test_nullspace_preserves_safe_keys(rank):
    X, D, S = _problem(14, k=5)
    sol = solve_edit(X, D, S, rank=rank, method="nullspace")
    ratio = float((S @ sol.delta).norm() / sol.delta.norm())
    assert ratio < 1e-8
    assert sol.utility_after < 1e-20
    assert sol.loss_after < sol.loss_before
    assert sol.null_dim == 7


@pytest.mark.parametrize("kwargs", [{}, {"null_threshold": 1e-12}, {"null_energy": 1e-12}])
def test_null_dim_for_known_rank(kwargs):
    X, D, _ = _problem(15)
    g = torch.Generator().manual_seed(0)
    S = torch.randn(5, 3, generator=g, dtype=F64) @ torch.randn(3, 12, generator=g, dtype=F64)  # rank 3
    sol = solve_edit(X, D, S, rank=2, method="nullspace", **kwargs)
    assert sol.null_dim == 9
    _, _, S5 = _problem(16, k=5)
    assert solve_edit(X, D, S5, rank=2, method="nullspace", **kwargs).null_dim == 7
    # many rows, still rank-deficient (k > d)
    S30 = torch.randn(30, 8, generator=g, dtype=F64) @ torch.randn(8, 12, generator=g, dtype=F64)
    sol = solve_edit(X, D, S30, rank=2, method="nullspace", **kwargs)
    assert sol.null_dim == 4
    assert float((S30 @ sol.delta).norm() / sol.delta.norm()) < 1e-8


def _known_spectrum_safe(s, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = len(s)
    U = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))[0]
    return U @ torch.diag(torch.tensor(s, dtype=F64)) @ V.T


@pytest.mark.parametrize(
    "kwargs,d0",
    [
        ({}, 7),
        ({"null_threshold": 2e-6}, 8),  # e ≤ 2e-4 → {1e-4}
        ({"null_threshold": 1e-3}, 9),  # e ≤ 0.1 → {1e-2, 1e-4}
        ({"null_threshold": 0.05}, 10),  # e ≤ 5 → {1, 1e-2, 1e-4}
        ({"null_threshold": 1.0}, 12),
        ({"null_energy": 1e-5}, 8),  # tail energy ≤ 1.1e-3 → {1e-4}
        ({"null_energy": 0.01}, 10),  # ≤ 1.100101 → {1e-4, 1e-2, 1}
        ({"null_energy": 0.5}, 11),  # ≤ 55 → {…, 9}
        ({"null_energy": 1.0}, 12),
    ],
)
def test_null_space_parametrisation(kwargs, d0):
    # singular values 10, 3, 1, 0.1, 0.01 → eigenvalues of X_safeᵀX_safe 100, 9, 1, 1e-2, 1e-4 (+7 zeros)
    S = _known_spectrum_safe([10.0, 3.0, 1.0, 0.1, 0.01])
    U0 = null_space_basis(S, **kwargs)
    assert U0.shape == (12, d0)
    torch.testing.assert_close(U0.T @ U0, torch.eye(d0, dtype=F64), rtol=0, atol=1e-12)
    X, D, _ = _problem(17)
    sol = solve_edit(X, D, S, rank=min(d0, 7), method="nullspace", **kwargs)
    assert sol.null_dim == d0
    # leakage bounded by the largest admitted eigenvalue
    kept_e = sorted([100.0, 9.0, 1.0, 1e-2, 1e-4] + [0.0] * 7)[:d0]
    assert sol.utility_after <= (kept_e[-1] + 1e-12) * float(sol.delta.square().sum())


def test_nullspace_is_optimal_within_subspace():
    X, D, S = _problem(18, k=5)
    gamma, lam = 1.0, 0.2
    sol = solve_edit(X, D, S, rank=None, gamma=gamma, ridge=lam, ridge_mode="absolute", method="nullspace")
    U0 = torch.linalg.svd(S, full_matrices=True).Vh[5:].T  # independent null-space basis
    Q0 = U0.T @ _Q(X, S, gamma, lam) @ U0
    expected = U0 @ torch.linalg.solve(Q0, U0.T @ X.T @ D)
    torch.testing.assert_close(sol.delta, expected, rtol=1e-9, atol=1e-11)
    assert sol.condition == pytest.approx(float(torch.linalg.cond(Q0)), rel=1e-8)
    # rank-limited: beats rank-r perturbations that stay in the null space
    r = 2
    sr = solve_edit(X, D, S, rank=r, gamma=gamma, ridge=lam, ridge_mode="absolute", method="nullspace")
    B = U0.T @ sr.delta
    U, s, Vh = torch.linalg.svd(B)
    P, V = U[:, :r] * s[:r], Vh[:r].T
    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        P2 = P + 0.01 * torch.randn(P.shape, generator=g, dtype=F64)
        V2 = V + 0.01 * torch.randn(V.shape, generator=g, dtype=F64)
        assert sr.objective <= objective(X, D, S, U0 @ P2 @ V2.T, gamma, lam) + 1e-10
    # and it can never beat the unconstrained soft optimum
    assert sr.objective >= solve_edit(X, D, S, rank=r, gamma=gamma, ridge=lam, ridge_mode="absolute").objective


def test_nullspace_relative_ridge_uses_reduced_trace():
    X, D, S = _problem(19, k=5)
    sol = solve_edit(X, D, S, rank=2, method="nullspace", ridge=0.01)
    U0 = null_space_basis(S)
    assert sol.ridge == pytest.approx(0.01 * float(torch.trace(U0.T @ X.T @ X @ U0)) / 7, rel=1e-10)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

_X, _D, _S = _problem(20, k=5)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((_X, _D), {"rank": 0}, r"rank must be >= 1"),
        ((_X, _D), {"rank": -2}, r"rank must be >= 1"),
        ((_X, _D), {"rank": 8}, r"rank=8 is larger than possible.*min\(d, m\)=7"),
        ((_X, _D), {"rank": 2.5}, r"rank must be a positive int"),
        ((_X, _D[:, :0]), {}, r"empty neuron set"),
        ((_X[:0], _D[:0]), {}, r"no key rows"),
        ((_X, _D[:30]), {}, r"row-count mismatch.*40.*30"),
        ((_X, _D, _S[:, :10]), {}, r"column mismatch.*10.*12"),
        ((_X[0], _D), {}, r"X must be a 2-D matrix"),
        ((_X, _D), {"gamma": -1.0}, r"gamma must be a finite number >= 0"),
        ((_X, _D), {"ridge": -0.1}, r"ridge must be a finite number >= 0"),
        ((_X, _D), {"ridge": float("nan")}, r"ridge must be"),
        ((_X, _D), {"ridge_mode": "scaled"}, r"ridge_mode must be"),
        ((_X, _D), {"method": "hard"}, r"method must be"),
        ((_X, _D), {"method": "nullspace"}, r"nullspace.*needs X_safe"),
        ((_X, _D, _S), {"null_threshold": 1e-3}, r"only apply to method='nullspace'"),
        ((_X, _D, _S), {"method": "nullspace", "rank": 3, "null_threshold": 1e-3, "null_energy": 0.1}, r"at most one"),
        ((_X, _D, _S), {"method": "nullspace", "rank": 3, "null_threshold": 2.0}, r"null_threshold .* \[0, 1\]"),
        ((_X, _D, _S), {"method": "nullspace", "rank": 3, "null_energy": -0.1}, r"null_energy must be"),
        ((_X, _D, _problem(21, k=20)[2]), {"method": "nullspace", "rank": 3}, r"no room to edit"),
        ((_X, _D), {"rank": 32}, r"rank=32 is larger than possible"),  # the default rank on a 7-neuron set
        (
            (_X, _D, _problem(22, k=9)[2]),
            {"method": "nullspace", "rank": 4},
            r"rank=4 is larger than possible.*min\(d0, m\)=3",
        ),
        ((_X[:5], _D[:5]), {"ridge": 0.0, "rank": 3}, r"Q .* is singular.*use ridge > 0"),
        ((torch.zeros(40, 12), _D), {"rank": 3}, r"Q .* is singular.*use ridge > 0"),
    ],
)
def test_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_edit(*args, **kwargs)


@pytest.mark.parametrize("which", ["X", "D", "X_safe"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(which, bad):
    X, D, S = _X.clone(), _D.clone(), _S.clone()
    {"X": X, "D": D, "X_safe": S}[which][1, 2] = bad
    with pytest.raises(ValueError, match=rf"^{which} contains 1 non-finite"):
        solve_edit(X, D, S, rank=3)


def test_singular_q_rank_deficient_keys_even_when_cholesky_passes():
    # rank-2 keys, no ridge: Q is exactly singular whatever the rounding does
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 2, generator=g, dtype=F64) @ torch.randn(2, 12, generator=g, dtype=F64)
    with pytest.raises(ValueError, match=r"singular.*use ridge > 0"):
        solve_edit(X, _D, rank=3, ridge=0.0)
    assert solve_edit(X, _D, rank=3, ridge=1e-3).rank == 2  # fine with a ridge


# ---------------------------------------------------------------------------------------
# dtypes / containers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["soft", "nullspace"])
def test_dtype_and_container_invariance(method):
    X, D, S = _problem(23, k=5)
    ref = solve_edit(X, D, S, rank=3, method=method)
    # numpy float64 → identical problem
    a = solve_edit(X.numpy(), D.numpy(), S.numpy(), rank=3, method=method)
    torch.testing.assert_close(a.delta, ref.delta, rtol=1e-12, atol=1e-14)
    # float32 tensors and float32 numpy: same answer to float32 input precision
    for Xi, Di, Si in ((X.float(), D.float(), S.float()), (X.float().numpy(), D.float().numpy(), S.float().numpy())):
        b = solve_edit(Xi, Di, Si, rank=3, method=method)
        assert b.delta.dtype == F64
        torch.testing.assert_close(b.delta, ref.delta, rtol=1e-4, atol=1e-5)
        assert b.objective == pytest.approx(ref.objective, rel=1e-5)
    # float32 data: exactly the float64 computation on the up-cast values
    c = solve_edit(X.float(), D.float(), S.float(), rank=3, method=method)
    c64 = solve_edit(X.float().double(), D.float().double(), S.float().double(), rank=3, method=method)
    torch.testing.assert_close(c.delta, c64.delta, rtol=0, atol=0)
    # bfloat16 works and is computed in float64
    e = solve_edit(X.bfloat16(), D.bfloat16(), S.bfloat16(), rank=3, method=method)
    assert e.delta.dtype == F64
    e64 = solve_edit(X.bfloat16().double(), D.bfloat16().double(), S.bfloat16().double(), rank=3, method=method)
    torch.testing.assert_close(e.delta, e64.delta, rtol=0, atol=0)


def test_inputs_not_modified_and_grad_tensors_accepted():
    X, D, S = _problem(24, k=5)
    Xc, Dc, Sc = X.clone(), D.clone(), S.clone()
    Xg = X.clone().requires_grad_()
    sol = solve_edit(Xg, D, S, rank=3)
    assert not sol.delta.requires_grad
    assert torch.equal(X, Xc) and torch.equal(D, Dc) and torch.equal(S, Sc)
    sol.delta.zero_()  # the result never aliases an input
    assert torch.equal(X, Xc)


def test_objective_helper_accepts_numpy_and_none():
    X, D, S = _problem(25, k=5)
    delta = torch.randn(12, 7, dtype=F64)
    v = objective(X.numpy(), D.numpy(), None, delta.numpy(), 3.0, 0.5)
    assert v == pytest.approx(float((X @ delta - D).square().sum() + 0.5 * delta.square().sum()))
    w = objective(X, D, S, delta, 3.0, 0.5)
    assert w == pytest.approx(v + 3.0 * float((S @ delta).square().sum()))
