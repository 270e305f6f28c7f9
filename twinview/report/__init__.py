"""The run report: plots, a 2-D embedding map and the self-contained ``report.html``.

``write_report(run_dir, test_features=..., test_labels=..., test_images=...)`` writes
``run_dir/report.html``; :func:`project_2d` maps embeddings to 2-D (UMAP, t-SNE or PCA).
"""

from twinview.report.embedding_map import project_2d
from twinview.report.html import write_report

__all__ = ["project_2d", "write_report"]
