"""Image generation with consistency models (Song et al. 2023; iCT, Song & Dhariwal 2023): its own
small training loop sharing the house habits (atomic checkpoints, bit-exact resume, metrics.csv,
TensorBoard, PNG grids), not the language-model loop.

    params.py     Karras grid, c_skip / c_out / c_in, N(k) and mu(k) schedules, iCT curriculum
    unet.py       the small U-Net F;  models.py: f (consistency function) and D (EDM teacher) around it
    losses.py     l2, l1, pseudo-Huber distances
    data.py       digits (scikit-learn), Fashion-MNIST (Debian package), folders of images
    training.py   train_consistency(): ct, cd, ict, edm;  checkpoint.py: run directories and resume
    sampling.py   one-step / multistep sampler (diffusers parity), Heun sampler, PNG grids
    run.py        load_run(), sample_run()
    fd.py         Fréchet distance on features of a small classifier trained on the same data
"""
from .options import ConsistencyOptions
from .params import NoiseSpec, karras_sigmas
from .run import load_run, sample_run
from .training import train_consistency

__all__ = ["ConsistencyOptions", "NoiseSpec", "karras_sigmas", "load_run", "sample_run", "train_consistency"]
