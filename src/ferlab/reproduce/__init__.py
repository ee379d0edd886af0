"""`ferlab reproduce PAPER`: rerun a paper's experiments and write DIR/report.md, a table of each
of the paper's claims next to our measured result and the protocol difference behind it, with
report.json and the figures.

    ferlab reproduce triwijoyo2021 --budget cpu --data fer2013.csv.gz --out repro-triwijoyo
    ferlab reproduce bah2022 --fergit fergit:FER2013_CSV,MUXSPACE_DIR --ckplus CK+48_DIR

PAPER: triwijoyo2021 (with vs without batch norm), sarmah2023 (random search, batch sizes, Adam vs
SGD-Nesterov, 5-conv vs 8-conv, final training), bah2022 (basic vs residual CNN on FERGIT and
CK+), li2023 (20..100 epochs): one module each, like the models in ferlab.models, on the framework
in `core`. Data paths are options, or the FERLAB_DATA, FERLAB_FERGIT and FERLAB_CKPLUS environment
variables.

Budgets (each paper module's `BUDGETS` holds every number):
    full   the paper's protocol: its epochs, trials and splits (days to months on a CPU).
    cpu    a documented reduction that finishes on a 2-core CPU in a few hours; the report lists
           exactly what was reduced, and every claim says when its number is not comparable.
    smoke  for tests only: 1-epoch runs of tiny-width models, the whole report path in seconds.

The cpu budgets are sized to finish within one 3-hour session on the slower of the two 2-core CPUs
ferlab has been measured on: an AMD EPYC with AVX2 only (fp32), which trains these models 2.5-3x
slower than an AVX-512/AMX CPU with bf16 autocast. Times in the budgets: AVX2 fp32 (AMX bf16),
training plus per-epoch evaluation, 2 threads, quiet machine; from images/s measured with
benchmarks/train_speed.py (AVX2: triwijoyo2021 31, sarmah2023 8-conv 45 / 5-conv 89 / base 64,
bah2022 resnet 74, li2023 1,130 train images/s) and, where stated, from the cpu runs themselves.

Every training is a `ferlab train` run directory under DIR/runs/ (config.json, metrics.csv,
last.pt, best.safetensors, curves.png). Re-running the same command skips finished runs and
resumes unfinished ones from their last epoch, so a killed reproduction continues where it
stopped; the report is rebuilt from the runs at the end. A run directory that holds other
settings (another budget, other data) is refused: use another --out.
"""

from ferlab.reproduce import bah2022, li2023, sarmah2023, triwijoyo2021
from ferlab.reproduce.core import Claim, Reproduction

PAPERS = {"triwijoyo2021": triwijoyo2021, "sarmah2023": sarmah2023, "bah2022": bah2022, "li2023": li2023}
BUDGETS = {name: paper.BUDGETS for name, paper in PAPERS.items()}

__all__ = ["BUDGETS", "PAPERS", "Claim", "Reproduction"]
