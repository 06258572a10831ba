"""Structures of a last-layer Laplace approximation's GGN: one small strategy object each.

The last layer's weights ``theta = vec([W; b])`` (``rows = in + 1`` rows, ``C`` columns,
flattened row by row: index ``i * C + c``) have the generalised Gauss-Newton matrix

    H = sum_n (phi~_n phi~_n^T) (x) Lambda_n,   Sigma = (H + delta I)^-1

and each structure stores H its own way and answers the questions `tfp_bnn.laplace` asks:

    structure  stores                     eigenvalues of H         square root T (T T^T = Sigma)
    diag       diag(H) as [rows, C]       the diagonal             1 / sqrt(diag(H) + delta)
    kron       A [rows, rows], G [C, C]   lam_A (x) lam_G          Q_A (.) Q_G^T scaled by
               (KFAC: H ~ A (x) G)                                   1 / sqrt(lam_A lam_G^T + delta)
    full       H [P, P], P = rows * C     eigvalsh(H)              L^-T, L L^T = H + delta I

plus the posterior precision ``H + delta I`` and the variance of the linearised outputs
``f = phi~^T theta``, ``var_bc = J_bc^T Sigma J_bc``. `STRUCTURES` maps each
`tfp_bnn.options.Hessian` to its class; a new structure is one more class and one more key.

Example:
    >>> from tfp_bnn.options import Hessian
    >>> rng = np.random.default_rng(0)
    >>> phi = rng.normal(size=(20, 3))                       # last-layer features [N, rows]
    >>> p = np.full((20, 2), 0.5)                            # predicted probabilities [N, C]
    >>> s = STRUCTURES[Hessian.KRON].classification(phi, p)
    >>> s.function_variance(phi[:4], delta=1.0).shape        # [B, C]
    (4, 2)

References:
    Ritter, Botev & Barber, "A Scalable Laplace Approximation for Neural Networks", ICLR 2018;
    Daxberger et al., "Laplace Redux - Effortless Bayesian Deep Learning", NeurIPS 2021.
"""
import numpy as np

from tfp_bnn.options import Hessian

__all__ = ["Diag", "Kron", "Full", "STRUCTURES"]

_CHUNK = 256  # examples per block of the full GGN's [rows, C, rows, C] accumulation


def _softmax_curvature(p):
    """[N, C, C] Lambda_n = diag(p_n) - p_n p_n^T."""
    return np.einsum("na,ab->nab", p, np.eye(p.shape[1])) - np.einsum("na,nb->nab", p, p)


class Diag:
    """diag(H): ``hessian`` is [rows, C]."""

    def __init__(self, hessian):
        self.hessian = hessian
        self.eigenvalues = np.maximum(hessian.ravel(), 0.0)

    @classmethod
    def classification(cls, phi, p):
        return cls(np.square(phi).T @ (p * (1.0 - p)))

    @classmethod
    def regression(cls, phi, noise_variance, num_outputs):
        a = np.square(phi).sum(0) / noise_variance
        return cls(np.repeat(a[:, None], num_outputs, axis=1))

    def precision(self, delta):
        return self.hessian + delta

    def function_variance(self, phi, delta):
        return np.square(phi) @ (1.0 / (self.hessian + delta))

    def square_root(self, delta):
        return [1.0 / np.sqrt(self.hessian + delta)]


class Kron:
    """KFAC ``H ~ A (x) G``: ``hessian`` is (A [rows, rows], G [C, C]), both eigendecomposed."""

    def __init__(self, a, g):
        self.hessian = (a, g)
        lam_a, self.q_a = np.linalg.eigh(a)
        lam_g, self.q_g = np.linalg.eigh(g)
        self.lam_a, self.lam_g = np.maximum(lam_a, 0.0), np.maximum(lam_g, 0.0)
        self.eigenvalues = np.outer(self.lam_a, self.lam_g).ravel()

    @classmethod
    def classification(cls, phi, p):
        # G is the mean of Lambda_n, so A (x) G keeps the scale of the sum over examples.
        return cls(phi.T @ phi, (np.diag(p.sum(0)) - p.T @ p) / len(p))

    @classmethod
    def regression(cls, phi, noise_variance, num_outputs):
        return cls(phi.T @ phi / noise_variance, np.eye(num_outputs))  # exact: Lambda = I / s2

    def precision(self, delta):
        dense = np.kron(*self.hessian)
        return dense + delta * np.eye(len(dense))

    def _scale(self, delta):
        """[rows, C] 1 / (eigenvalues + delta) in the eigenbasis Q_A (x) Q_G."""
        return 1.0 / (np.outer(self.lam_a, self.lam_g) + delta)

    def function_variance(self, phi, delta):
        u = np.square(phi @ self.q_a)  # [B, rows]
        return (u @ self._scale(delta)) @ np.square(self.q_g).T

    def square_root(self, delta):
        return [self.q_a, self.q_g, np.sqrt(self._scale(delta))]


class Full:
    """The full GGN: ``hessian`` is [P, P], P = rows * C."""

    def __init__(self, hessian, num_outputs):
        self.hessian = hessian
        self.num_outputs = num_outputs
        self.eigenvalues = np.maximum(np.linalg.eigvalsh(hessian), 0.0)

    @classmethod
    def classification(cls, phi, p):
        rows, c = phi.shape[1], p.shape[1]
        h = np.zeros((rows, c, rows, c))
        for start in range(0, len(p), _CHUNK):
            ph = phi[start:start + _CHUNK]
            lam = _softmax_curvature(p[start:start + _CHUNK])
            h += np.einsum("ni,nj,nab->iajb", ph, ph, lam, optimize=True)
        return cls(h.reshape(rows * c, rows * c), c)

    @classmethod
    def regression(cls, phi, noise_variance, num_outputs):
        return cls(np.kron(phi.T @ phi / noise_variance, np.eye(num_outputs)), num_outputs)

    def precision(self, delta):
        return self.hessian + delta * np.eye(len(self.hessian))

    def function_variance(self, phi, delta):
        rows, c = phi.shape[1], self.num_outputs
        cov = np.linalg.inv(self.precision(delta)).reshape(rows, c, rows, c)
        return np.einsum("bi,bj,icjc->bc", phi, phi, cov, optimize=True)

    def square_root(self, delta):
        chol = np.linalg.cholesky(self.precision(delta))
        return [np.linalg.inv(chol).T]  # Sigma = (L L^T)^-1 = L^-T L^-1


STRUCTURES = {Hessian.DIAG: Diag, Hessian.KRON: Kron, Hessian.FULL: Full}
