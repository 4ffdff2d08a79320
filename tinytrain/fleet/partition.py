"""Label-skewed splits of a data set over N clients: Dirichlet(alpha) proportions per class
(small alpha: each client sees few labels; large alpha: close to uniform), deterministic from a seed."""
import numpy as np

from ..compiler.errors import TinytrainError


def dirichlet_partition(y, n_clients, alpha, seed=0, min_samples=2):
    """-> [index array per client], every sample in exactly one client, each client >= min_samples.
    For each class c, its samples (in a seeded shuffle) go to clients in proportions p_c ~ Dir(alpha);
    a draw leaving a client under min_samples is redrawn (up to 100 times, then an error)."""
    y = np.asarray(y)
    if not 1 <= int(n_clients) <= len(y) // max(min_samples, 1):
        raise TinytrainError(f"{n_clients} clients for {len(y)} samples: each needs at least {min_samples}",
                             field="clients")
    if not (np.isfinite(alpha) and alpha > 0):
        raise TinytrainError(f"alpha {alpha}: expected a positive number", field="alpha")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(100):
        parts = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_samples:
            return [np.array(sorted(p), np.int64) for p in parts]
    raise TinytrainError(f"alpha {alpha} leaves some of {n_clients} clients with under {min_samples} samples "
                         f"in 100 draws: use fewer clients or a larger alpha", field="alpha")
