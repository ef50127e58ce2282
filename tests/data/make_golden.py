"""Write the golden index of format version 1 (run once; the files are committed).

    python tests/data/make_golden.py
"""

from pathlib import Path

import numpy as np

from mrlsearch import Searcher

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    rng = np.random.default_rng(2024)
    vectors = rng.standard_normal((300, 32)).astype(np.float32)
    queries = rng.standard_normal((6, 32)).astype(np.float32)
    searcher = Searcher(32, (8, 16, 32), metric="cosine", index_dims=(8,))
    searcher.add(vectors, ids=np.arange(1000, 1300))
    searcher.remove([1000, 1001, 1002, 1003, 1004])
    searcher.save(HERE / "golden_index_v1")
    result = searcher.funnel(queries, 5, [(8, 50), (16, 20), (32, 5)])
    np.savez(HERE / "golden_index_v1_expected.npz", queries=queries, ids=result.ids,
             scores=result.scores)
    print("wrote", HERE / "golden_index_v1")
