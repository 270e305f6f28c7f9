"""A user's own messy folder end to end: pretrain writes the report, views and embed work, every
broken file is named once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from messy_folder import make_messy_folder

from twinview.cli import main

FAST = [
    "views.size=32",
    "train.max_steps=2",
    "batch_size=4",
    "backbone.width=4",
    "method.proj_hidden_dim=32",
    "method.proj_out_dim=16",
    "data.num_workers=0",
]


@pytest.fixture
def messy(tmp_path):
    return make_messy_folder(tmp_path / "photos")


def _skip_warnings(caught, path: str) -> int:
    return sum(path in str(w.message) and "skipping" in str(w.message) for w in caught)


def test_pretrain_on_a_messy_folder_writes_the_report(messy, tmp_path, capsys):
    root = messy["root"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["pretrain", f"data={root}", f"output.dir={tmp_path / 'runs'}", *FAST])
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "simclr-photos"
    assert (run / "report.html").stat().st_size > 5_000
    assert (run / "views.png").is_file() and (run / "backbone.pt").is_file()
    for path in messy["broken"]:
        assert _skip_warnings(caught, path) == 1, path  # named once, not once per epoch or split
    counts = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert any(f"skipped {len(messy['broken'])} of" in c for c in counts), counts
    for path in messy["ignored"]:
        assert not any(path in str(w.message) for w in caught)

    # The same folder through the other commands of a run.
    out = tmp_path / "views.png"
    assert main(["views", f"data={root}", "views.size=32", "--out", str(out)]) == 0
    assert out.stat().st_size > 1_000
    emb = tmp_path / "emb.parquet"
    assert main(["embed", str(run), f"out={emb}"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(emb)
    assert table.num_rows == messy["n_images"]
    assert sorted(set(table.column("label").to_pylist())) == list(range(len(messy["classes"])))
    vectors = np.array(table.column("embedding").to_pylist())
    assert np.isfinite(vectors).all()
    assert main(["report", str(run)]) == 0
