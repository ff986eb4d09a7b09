"""The stochastic iterative sampler against diffusers' CMStochasticIterativeScheduler (a test-only
peer, constructed with explicit arguments: nothing comes from the Hub), on the same model outputs."""
import pytest
import torch

from openseason.consistency.models import ConsistencyFunction
from openseason.consistency.params import NoiseSpec, karras_sigma_at
from openseason.consistency.sampling import cm_step, consistency_sample

diffusers = pytest.importorskip("diffusers")
from diffusers import CMStochasticIterativeScheduler  # noqa: E402

SPEC = NoiseSpec()


def _scheduler(clip=True):
    return CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5,
                                          s_noise=1.0, rho=7.0, clip_denoised=clip)


class FakeNet(torch.nn.Module):
    """A fixed smooth function of the (scaled) input and the time input, standing in for a U-Net."""

    def forward(self, x, t):
        return torch.tanh(0.8 * x + 0.3 * torch.sin(x * 3)) * 1.5 + (t / 1000.0).view(-1, 1, 1, 1)


@pytest.mark.parametrize("timesteps", [[0], [22, 0], [30, 20, 10, 0], [39, 25, 0]])
@pytest.mark.parametrize("clip", [True, False])
def test_multistep_sampler_matches_diffusers(timesteps, clip):
    shape = (4, 1, 8, 8)
    net = FakeNet()
    sched = _scheduler(clip)
    sched.set_timesteps(timesteps=timesteps)
    gen = torch.Generator().manual_seed(7)
    sample = torch.randn(shape, generator=gen) * sched.init_noise_sigma
    for t in sched.timesteps:
        scaled = sched.scale_model_input(sample, t)
        out = net(scaled, t.float().expand(shape[0]))
        sample = sched.step(out, t, sample, generator=gen).prev_sample
    # diffusers' timesteps [22, 0] are the ramp [0, 22] reversed: our grid indices down from sigma_max
    ours_sigmas = [karras_sigma_at(i, 40) for i in reversed(timesteps)]
    assert ours_sigmas == pytest.approx(sched.sigmas[:-1].tolist(), rel=1e-6)
    f = ConsistencyFunction(net, SPEC)
    ours = consistency_sample(f, shape, ours_sigmas, SPEC, torch.Generator().manual_seed(7), clip=clip)
    assert torch.allclose(ours, sample, atol=1e-6, rtol=0), (ours - sample).abs().max()


def test_step_arithmetic_matches_diffusers_on_given_outputs():
    torch.manual_seed(3)
    sched = _scheduler(clip=True)
    sched.set_timesteps(timesteps=[30, 20, 10, 0])
    sample = torch.randn(6, 3, 4, 4) * 10
    for i, t in enumerate(sched.timesteps):
        model_output = torch.randn(6, 3, 4, 4) * 2
        sched.scale_model_input(sample, t)
        gen_a, gen_b = torch.Generator().manual_seed(i), torch.Generator().manual_seed(i)
        want = sched.step(model_output, t, sample, generator=gen_a).prev_sample
        noise = torch.randn(sample.shape, generator=gen_b)
        got = cm_step(model_output, sample, sched.sigmas[i], sched.sigmas[i + 1], noise, SPEC, clip=True)
        assert torch.allclose(got, want, atol=1e-6, rtol=0)
        sample = want


def test_sampler_refuses_bad_time_points():
    f = ConsistencyFunction(FakeNet(), SPEC)
    for bad in ([], [1.0, 2.0], [81.0], [80.0, 0.001]):
        with pytest.raises(ValueError):
            consistency_sample(f, (1, 1, 8, 8), bad, SPEC)
