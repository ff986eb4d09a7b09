"""The numbers against the papers' formulas: Karras grid, boundary condition, CT / iCT schedules,
pseudo-Huber constant, lognormal index probabilities, distance metrics, Heun step."""
import math

import pytest
import torch

from openseason.consistency.losses import distance
from openseason.consistency.models import ConsistencyFunction, EDMDenoiser
from openseason.consistency.params import (NoiseSpec, consistency_scalings, ct_ema_decay, ct_num_steps,
                                           ict_num_steps, karras_sigma_at, karras_sigmas, lognormal_index_probs,
                                           pseudo_huber_c)
from openseason.consistency.sampling import default_sigmas, heun_step
from openseason.consistency.unet import UNet, UNetConfig


@pytest.mark.parametrize("n", [2, 18, 40, 151])
def test_karras_grid_matches_the_direct_formula(n):
    eps, T, rho = 0.002, 80.0, 7.0
    got = karras_sigmas(n)
    for i in range(1, n + 1):  # paper: t_i = (eps^(1/rho) + (i-1)/(N-1) (T^(1/rho) - eps^(1/rho)))^rho
        want = (eps ** (1 / rho) + (i - 1) / (n - 1) * (T ** (1 / rho) - eps ** (1 / rho))) ** rho
        assert got[i - 1].item() == pytest.approx(want, rel=1e-12)
    assert got[0].item() == eps and got[-1].item() == T
    assert torch.all(got[1:] > got[:-1])
    # index convention of time points: 0 = sigma_max, n-1 = sigma_min
    assert karras_sigma_at(0, n) == pytest.approx(T) and karras_sigma_at(n - 1, n) == pytest.approx(eps)
    assert karras_sigma_at(5 % n, n) == pytest.approx(got.flip(0)[5 % n].item(), rel=1e-12)


def test_boundary_condition_is_exact():
    torch.manual_seed(0)
    f = ConsistencyFunction(UNet(UNetConfig(base=8)))
    x = torch.randn(5, 1, 8, 8) * 3
    assert torch.equal(f(x, 0.002), x)
    assert torch.equal(f(x, torch.full((5,), 0.002)), x)
    assert not torch.equal(f(x, 0.5), x)
    c_skip, c_out, c_in = consistency_scalings(torch.tensor([0.002, 1.0, 80.0]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    sd = 0.5
    assert c_skip[1].item() == pytest.approx(sd ** 2 / ((1 - 0.002) ** 2 + sd ** 2))
    assert c_out[2].item() == pytest.approx(sd * (80 - 0.002) / math.sqrt(sd ** 2 + 80 ** 2))
    assert c_in[2].item() == pytest.approx(1 / math.sqrt(80 ** 2 + sd ** 2))


def test_ct_schedules_follow_the_paper():
    K, s0, s1, mu0 = 1000, 2, 150, 0.9
    for k in (0, 1, 10, 250, 500, 999, 1000):
        want_n = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1
        assert ct_num_steps(k, K, s0, s1) == want_n
        assert ct_ema_decay(k, K, s0, s1, mu0) == pytest.approx(math.exp(s0 * math.log(mu0) / want_n), rel=1e-15)
    assert ct_num_steps(0, K) == 2 and ct_num_steps(K, K) == 151
    assert ct_ema_decay(0, K) == pytest.approx(0.9)


def test_ict_doubling_curriculum():
    K, s0, s1 = 1000, 10, 1280
    k_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
    assert k_prime == 125
    assert [ict_num_steps(k, K) for k in (0, 124, 125, 250, 874, 875, 999)] == [11, 11, 21, 41, 641, 1281, 1281]


def test_pseudo_huber_constant_and_metrics():
    assert pseudo_huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))  # iCT: c = 0.03 on CIFAR-10
    assert pseudo_huber_c(3072) == pytest.approx(0.0299, abs=1e-4)
    x = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([[1.0, -2.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    assert distance(x, y, "l2").tolist() == [9.0, 0.0]
    assert distance(x, y, "l1").tolist() == [5.0, 0.0]
    c = 0.00054 * 2
    ph = distance(x, y, "pseudo-huber")
    assert ph[0].item() == pytest.approx(math.sqrt(9 + c * c) - c) and ph[1].item() == 0.0
    with pytest.raises(ValueError):
        distance(x, y, "lpips")


def test_lognormal_index_probabilities():
    sig = karras_sigmas(11)
    p = lognormal_index_probs(sig, -1.1, 2.0)
    cdf = [math.erf((math.log(s) + 1.1) / (math.sqrt(2) * 2.0)) for s in sig.tolist()]
    want = [b - a for a, b in zip(cdf, cdf[1:])]
    total = sum(want)
    assert p.tolist() == pytest.approx([w / total for w in want], rel=1e-12)
    assert float(p.sum()) == pytest.approx(1.0)


def test_heun_step_is_exact_for_a_point_mass():
    # data = one point x0: D(x, sigma) = x0 and the ODE solution is x0 + (x - x0) sigma' / sigma
    x0 = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64) * 5
    s, sn = torch.full((3,), 5.0, dtype=torch.float64), torch.full((3,), 1.5, dtype=torch.float64)
    got = heun_step(lambda z, sigma: x0, x, s, sn)
    assert torch.allclose(got, x0 + (x - x0) * 1.5 / 5.0, atol=1e-12)


def test_edm_denoiser_and_default_time_points():
    torch.manual_seed(0)
    d = EDMDenoiser(UNet(UNetConfig(base=8)))
    assert d(torch.randn(2, 1, 8, 8), 1.0).shape == (2, 1, 8, 8)
    assert default_sigmas(1) == [80.0]
    two = default_sigmas(2)
    assert two[0] == pytest.approx(80.0) and two[1] == pytest.approx(karras_sigma_at(22, 40))
    with pytest.raises(ValueError):
        default_sigmas(0)
    assert NoiseSpec().sigma_data == 0.5
