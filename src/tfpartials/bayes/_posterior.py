"""Gaussian posterior algebra for each curvature structure: log-determinants, functional variances, samples.

Each structure holds the curvature ``H1`` of the summed negative log-likelihood at unit noise and temperature
(so the posterior precision is ``s * H1 + diag(p)`` with ``s = 1 / (sigma^2 T)`` and ``p`` the per-parameter
prior precision) in a factorised form, and answers, for any ``(s, p)``:

* ``logdet(s, p)``: ``log det(s H1 + diag(p))``;
* ``functional_covariance(J, s, p)``: ``J_b Sigma J_b^T`` for ``J`` of shape ``(B, C, P)``, without forming
  ``Sigma`` except for the dense structure;
* ``sample(z, s, p)``: ``Sigma^{1/2} z`` for standard normal ``z`` of shape ``(P, n)``;
* ``variance(s, p)``: ``diag(Sigma)``.

``kron`` uses the per-layer Kronecker eigenbases: ``N A (x) B`` has eigenvalues ``N a_i b_j`` in the basis
``Q_A (x) Q_B`` (Martens & Grosse 2015; Ritter, Botev & Barber 2018), so all four are exact for the Kronecker
approximation at any isotropic per-block prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg as sla

from .._checks import InputError

__all__ = ["DensePosterior", "DiagPosterior", "LowRankPosterior", "KronPosterior", "KronFactor"]


def _not_pd(what: str) -> InputError:
    return InputError(f"the posterior precision ({what}) is not positive definite: the curvature has negative "
                      "eigenvalues larger than the prior precision; use curvature='ggn' (positive "
                      "semi-definite) or a larger prior_precision")


def _isotropic(p: np.ndarray) -> bool:
    return bool(np.all(p == p[0]))


class DensePosterior:
    """``H1`` as a dense symmetric ``P x P`` matrix (eigendecomposed once for isotropic priors)."""

    def __init__(self, H1: np.ndarray, psd: bool = False):
        H1 = np.asarray(H1, np.float64)
        self.H1 = 0.5 * (H1 + H1.T)
        if psd:  # a GGN is positive semi-definite; float32 round-off leaves eigenvalues of about -1e-7 |H|
            vals, vecs = np.linalg.eigh(self.H1)
            if vals.min() < 0:
                vals = np.maximum(vals, 0.0)
                self.H1 = (vecs * vals) @ vecs.T
                self.H1 = 0.5 * (self.H1 + self.H1.T)
        self.n = H1.shape[0]
        self._eig = None
        self._cache: tuple | None = None

    def _eigh(self):
        if self._eig is None:
            self._eig = np.linalg.eigh(self.H1)
        return self._eig

    def precision(self, s: float, p: np.ndarray) -> np.ndarray:
        return s * self.H1 + np.diag(p)

    def logdet(self, s: float, p: np.ndarray) -> float:
        if _isotropic(p):
            lam = s * self._eigh()[0] + p[0]
            if np.any(lam <= 0):
                raise _not_pd("full")
            return float(np.sum(np.log(lam)))
        try:
            L = np.linalg.cholesky(self.precision(s, p))
        except np.linalg.LinAlgError:
            raise _not_pd("full") from None
        return float(2.0 * np.sum(np.log(np.diag(L))))

    def covariance(self, s: float, p: np.ndarray) -> np.ndarray:
        key = (s, p.tobytes())
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if _isotropic(p):
            vals, vecs = self._eigh()
            lam = s * vals + p[0]
            if np.any(lam <= 0):
                raise _not_pd("full")
            cov = (vecs / lam) @ vecs.T
        else:
            try:
                c = sla.cho_factor(self.precision(s, p), lower=True)
            except np.linalg.LinAlgError:
                raise _not_pd("full") from None
            cov = sla.cho_solve(c, np.eye(self.n))
        cov = 0.5 * (cov + cov.T)
        self._cache = (key, cov)
        return cov

    def functional_covariance(self, J: np.ndarray, s: float, p: np.ndarray) -> np.ndarray:
        cov = self.covariance(s, p)
        B, C, P = J.shape
        JS = (J.reshape(B * C, P) @ cov).reshape(B, C, P)   # one GEMM, then (C x C) per example
        return np.matmul(JS, np.swapaxes(J, 1, 2))

    def variance(self, s: float, p: np.ndarray) -> np.ndarray:
        return np.diag(self.covariance(s, p)).copy()

    def sample(self, z: np.ndarray, s: float, p: np.ndarray) -> np.ndarray:
        if _isotropic(p):
            vals, vecs = self._eigh()
            lam = s * vals + p[0]
            if np.any(lam <= 0):
                raise _not_pd("full")
            return vecs @ ((vecs.T @ z) / np.sqrt(lam)[:, None])
        try:
            L = np.linalg.cholesky(self.precision(s, p))  # P = L L^T, Sigma^{1/2} z = L^{-T} z
        except np.linalg.LinAlgError:
            raise _not_pd("full") from None
        return sla.solve_triangular(L, z, lower=True, trans="T")


class DiagPosterior:
    """``H1`` by its diagonal ``h``."""

    def __init__(self, h: np.ndarray):
        self.h = np.asarray(h, np.float64)
        self.n = self.h.shape[0]

    def _lam(self, s, p):
        lam = s * self.h + p
        if np.any(lam <= 0):
            raise _not_pd("diag")
        return lam

    def logdet(self, s, p):
        return float(np.sum(np.log(self._lam(s, p))))

    def variance(self, s, p):
        return 1.0 / self._lam(s, p)

    def functional_covariance(self, J, s, p):
        return np.matmul(J * self.variance(s, p), np.swapaxes(J, 1, 2))

    def sample(self, z, s, p):
        return z / np.sqrt(self._lam(s, p))[:, None]


class LowRankPosterior:
    """``H1 ~ U diag(lam) U^T`` from its top ``k`` eigenpairs; needs an isotropic prior ``delta I``."""

    def __init__(self, vals: np.ndarray, vecs: np.ndarray):
        keep = vals > 0
        self.vals = np.asarray(vals[keep], np.float64)
        self.U = np.asarray(vecs[:, keep], np.float64)
        self.n = vecs.shape[0]

    def _delta(self, p):
        if not _isotropic(p):
            raise InputError("structure='lowrank' needs a scalar prior precision (the same for every parameter)")
        return float(p[0])

    def logdet(self, s, p):
        d = self._delta(p)
        return float(np.sum(np.log(s * self.vals + d)) + (self.n - self.vals.size) * np.log(d))

    def _w(self, s, d):
        return s * self.vals / (s * self.vals + d)   # Sigma = (I - U diag(w) U^T) / d

    def variance(self, s, p):
        d = self._delta(p)
        return (1.0 - np.sum(self.U**2 * self._w(s, d), axis=1)) / d

    def functional_covariance(self, J, s, p):
        d = self._delta(p)
        JU = J @ self.U
        JJ = np.matmul(J, np.swapaxes(J, 1, 2))
        return (JJ - np.matmul(JU * self._w(s, d), np.swapaxes(JU, 1, 2))) / d

    def sample(self, z, s, p):
        d = self._delta(p)
        shrink = 1.0 - np.sqrt(d / (s * self.vals + d))   # Sigma^{1/2} = (I - U diag(shrink) U^T) / sqrt(d)
        return (z - self.U @ (shrink[:, None] * (self.U.T @ z))) / np.sqrt(d)


@dataclass(frozen=True)
class KronFactor:
    """One block of a Kronecker-factored curvature: ``scale * (A (x) B)`` on the flat positions ``indices``.

    ``kind="kronecker"``: eigenpairs ``(a, QA)`` and ``(b, QB)`` of the factors; the block is ``A (x) B`` in the
    flat ParameterSpace order of the block's parameters (row-major ``(dim A, dim B)`` reshape).
    ``kind="diagonal"``: ``diag`` holds the block's diagonal.
    """

    indices: np.ndarray
    kind: str
    a: np.ndarray | None = None
    QA: np.ndarray | None = None
    b: np.ndarray | None = None
    QB: np.ndarray | None = None
    diag: np.ndarray | None = None


class KronPosterior:
    """``H1`` block diagonal with Kronecker-factored (or diagonal) blocks; the prior must be constant per block."""

    def __init__(self, factors: list[KronFactor], n: int, scale: float):
        self.factors = factors
        self.n = n
        self.scale = float(scale)   # H1 = scale * blockdiag(A (x) B)

    def _delta(self, f: KronFactor, p: np.ndarray) -> float:
        block = p[f.indices]
        if not _isotropic(block):
            raise InputError("structure='kfac' needs a prior precision that is constant on each layer "
                             "(a scalar or one value per layer)")
        return float(block[0])

    def _eigs(self, f: KronFactor, s: float, d: float) -> np.ndarray:
        if f.kind == "kronecker":
            lam = s * self.scale * np.outer(f.a, f.b) + d
        else:
            lam = s * self.scale * f.diag + d
        if np.any(lam <= 0):
            raise _not_pd("kfac")
        return lam

    def logdet(self, s, p):
        return float(sum(np.sum(np.log(self._eigs(f, s, self._delta(f, p)))) for f in self.factors))

    def variance(self, s, p):
        out = np.empty(self.n)
        for f in self.factors:
            lam = self._eigs(f, s, self._delta(f, p))
            sl = f.indices
            if f.kind == "kronecker":   # diag(Q diag(1/lam) Q^T) with Q = QA (x) QB
                out[sl] = np.einsum("ia,jb,ab->ij", f.QA**2, f.QB**2, 1.0 / lam).reshape(-1)
            else:
                out[sl] = 1.0 / lam
        return out

    def functional_covariance(self, J, s, p):
        B, C, _ = J.shape
        out = np.zeros((B, C, C))
        for f in self.factors:
            lam = self._eigs(f, s, self._delta(f, p))
            Jb = J[:, :, f.indices].reshape(B * C, -1)
            if f.kind == "kronecker":
                R = Jb.reshape(B * C, f.QA.shape[0], f.QB.shape[0])
                T = (np.swapaxes(R @ f.QB, 1, 2) @ f.QA).swapaxes(1, 2).reshape(B, C, -1)   # QA^T R QB
                out += np.matmul(T / lam.reshape(-1), np.swapaxes(T, 1, 2))
            else:
                Jr = Jb.reshape(B, C, -1)
                out += np.matmul(Jr / lam, np.swapaxes(Jr, 1, 2))
        return out

    def sample(self, z, s, p):
        out = np.empty_like(z)
        for f in self.factors:
            lam = self._eigs(f, s, self._delta(f, p))
            sl = f.indices
            Z = z[sl].T   # (n, size)
            if f.kind == "kronecker":
                m = Z.shape[0]
                R = Z.reshape(m, f.QA.shape[0], f.QB.shape[0]) / np.sqrt(lam)[None]
                out[sl] = np.einsum("ia,mab,jb->mij", f.QA, R, f.QB).reshape(m, -1).T
            else:
                out[sl] = (Z / np.sqrt(lam)[None]).T
        return out
