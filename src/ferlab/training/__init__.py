"""Training: `ferlab train` and the engine under it, one concern per module, read in this order:

    config.py       TrainConfig (every option of `ferlab train`), run_config (a run directory's settings)
    distributed.py  data parallel: which process this is (on GPUs, which GPU), and sums over all of them
    backend.py      deterministic kernels (--deterministic), training faces kept on the GPU
    optim.py        optimizer, learning-rate schedule, weight averages (EMA, SWA), early stopping
    losses.py       class weights and the class prior (--class-weights, --logit-adjust)
    transfer.py     what other models give a run: --init weights, --teacher distillation
    loop.py         train_one_epoch and evaluate, in torchvision-reference style
    runlock.py      one process trains in a run directory at a time (RUN/.lock)
    run.py          the run directory (open, resume, checkpoint) and fit
    timing.py       how long an epoch takes here, measured (tune and reproduce print it)
    cli.py          the `ferlab train` command

Nothing is imported here, so that reading a run's config (ferlab.training.config) does not load the loop.
"""
