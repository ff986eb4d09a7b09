"""prepare_for_decoding moves a model's CPU weights into memory backed by transparent huge pages
(device.huge_page_buffer): same Parameter objects and values, and everything a model does afterwards
(decode, train, save, copy) still works."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from openseason.config import Config, NAMED_CONFIGS
from openseason.device import HUGE_PAGE, huge_page_buffer
from openseason.generation import SamplingParams, generate_ids, prepare_for_decoding
from openseason.generation.speed import HUGE_PAGE_MIN_BYTES
from openseason.model import GPT

linux_huge_pages = pytest.mark.skipif(huge_page_buffer(1) is None, reason="no MADV_HUGEPAGE on this system")


def _model(seed: int = 0) -> GPT:
    """A tiny LLaMA with a 4096 x 128 head and embedding (2 MB each) beside small matrices."""
    config = Config(**{**NAMED_CONFIGS["tiny-llama"], **dict(
        name="huge-page-test", n_layer=2, n_embd=128, n_head=4, n_query_groups=4, intermediate_size=344,
        vocab_size=4096, padded_vocab_size=4096, block_size=64)})
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights()
    return model.eval()


def _thp_mode() -> str | None:
    """The kernel's THP mode ("always", "madvise", "never"), or None where it does not say."""
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def _anon_huge_kb(address: int) -> int:
    """AnonHugePages of the mapping that holds `address`, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


@linux_huge_pages
def test_huge_page_buffer_is_aligned_zeroed_and_outlives_its_name():
    buffer = huge_page_buffer(3 * HUGE_PAGE + 5)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 3 * HUGE_PAGE + 5
    assert buffer.data_ptr() % HUGE_PAGE == 0
    assert int(buffer.sum()) == 0
    view = buffer[HUGE_PAGE:].view(torch.float32 if (buffer.numel() - HUGE_PAGE) % 4 == 0 else torch.uint8)
    del buffer                                   # the mapping stays while a view of it does
    view.fill_(1)
    assert int(view.sum()) == view.numel()
    assert huge_page_buffer(0) is None


@linux_huge_pages
def test_prepared_weights_live_in_huge_pages_with_the_same_values():
    model, reference = _model(), _model()
    params = {name: p for name, p in model.named_parameters()}
    ids = torch.randint(0, 4096, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids)
    prepare_for_decoding(model)
    big = [p for p in model.parameters() if p.numel() * p.element_size() >= HUGE_PAGE_MIN_BYTES]
    small = [p for p in model.parameters() if p.numel() * p.element_size() < HUGE_PAGE_MIN_BYTES]
    assert big and small
    assert model._huge_page_bytes == sum(p.numel() * p.element_size() for p in big)
    for name, p in model.named_parameters():
        assert p is params[name]                                   # same Parameter objects
        torch.testing.assert_close(p, dict(reference.named_parameters())[name], atol=0, rtol=0)
    # one mapping for all the big weights, in order, none overlapping
    starts = sorted(p.data_ptr() for p in big)
    assert starts[0] % HUGE_PAGE == 0
    assert all(b - a >= 4096 for a, b in zip(starts, starts[1:]))
    ends = sorted(p.data_ptr() + p.numel() * p.element_size() for p in big)
    assert all(not (starts[0] <= p.data_ptr() < ends[-1]) for p in small)   # small ones stay outside
    if _thp_mode() in ("always", "madvise"):
        assert _anon_huge_kb(starts[0]) >= 2048, "the kernel gave the weights no huge page"
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)
    assert prepare_for_decoding(model) == 0 and model._huge_page_bytes > 0    # idempotent


@linux_huge_pages
def test_a_model_in_huge_pages_decodes_trains_saves_and_copies():
    model, reference = _model(), _model()
    prepare_for_decoding(model)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    prompts = [[5, 6, 7], [8, 9]]
    assert [r.token_ids for r in generate_ids(model, prompts, params)] == \
           [r.token_ids for r in generate_ids(reference, prompts, params)]
    # saved and loaded: plain tensors with the same values
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = _model(seed=5)
    restored.load_state_dict(torch.load(buffer))
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name
    twin = copy.deepcopy(model)
    assert twin.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()
    assert torch.equal(twin.lm_head.weight, model.lm_head.weight)
    # a training step writes into the huge-page memory like any other
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.lm_head.weight.detach().clone()
    ids = torch.randint(0, 4096, (2, 8), generator=torch.Generator().manual_seed(2))
    model(ids).logsumexp(-1).mean().backward()
    optimizer.step()
    assert not torch.equal(model.lm_head.weight, before)


def test_without_huge_pages_the_weights_stay_with_torch_and_still_get_their_layout(monkeypatch):
    """Where no huge-page buffer can be had (not Linux, mmap refused), prepare_for_decoding keeps
    torch's memory and still re-stores the weights its kernels read column-major."""
    import openseason.device as device

    monkeypatch.setattr(device, "huge_page_buffer", lambda nbytes: None)
    model, reference = _model(), _model()
    prepare_for_decoding(model)
    assert model._huge_page_bytes == 0
    assert not model.lm_head.weight.is_contiguous() and model.lm_head.weight.t().is_contiguous()
    ids = torch.randint(0, 4096, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-5, rtol=1e-5)
