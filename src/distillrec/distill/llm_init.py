"""`llm_init`: the student's item table starts from a language model's item vectors (LLMInit, AlphaFuse).

The embarrassingly simple competitor of distillation: no teacher, no extra loss, only a better
starting point. The LM vectors [N, D] (embed_items) are centred and projected on their top `d`
principal components (`projection: pca`), then rescaled to the students' own initial std (`scale`),
so items with similar text start close together and training moves them from there. It combines
with every distillation method (`llm_init+dllm2rec`): the initialisation happens before the
method's objective is built, and the saved student is an ordinary ID model.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distillrec.students.base import Student

log = logging.getLogger(__name__)


def pca_projection(vectors: np.ndarray, dims: int) -> np.ndarray:
    """[N, dims] scores of the centred vectors on their top principal components (float64 SVD).

    Each component's sign is fixed (its largest-magnitude loading positive), so the result does not
    depend on the LAPACK build. With D < dims the missing columns are 0 (the caller fills them).
    """
    centred = vectors.astype(np.float64) - vectors.mean(0, dtype=np.float64)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:dims]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    projected = centred @ (vt * signs[:, None]).T
    return np.pad(projected, ((0, 0), (0, dims - projected.shape[1])))


def init_item_table(student: Student, vectors: np.ndarray, scale: float) -> torch.Tensor:
    """Overwrite rows 1..N of the student's item table with the PCA of `vectors` ([N + 1, D], row 0 padding),
    rescaled to std `scale`; columns beyond D keep the student's random init. Returns the new rows."""
    n_items, dims = student.n_items, student.hidden
    if len(vectors) != n_items + 1:
        raise ValueError(f"item vectors have {len(vectors) - 1} items, the student {n_items}")
    projected = pca_projection(vectors[1:], dims)
    used = min(dims, vectors.shape[1], n_items)
    projected[:, :used] *= scale / max(projected[:, :used].std(), 1e-12)
    weight = student.items.weight
    with torch.no_grad():
        rows = torch.as_tensor(projected, dtype=weight.dtype, device=weight.device)
        weight[1:n_items + 1, :used] = rows[:, :used]
    log.info("llm_init: item table from the top %d principal components of %d-d item vectors (std %.3g)",
             used, vectors.shape[1], scale)
    return weight[1:n_items + 1].detach().clone()
