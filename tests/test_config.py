"""Named configs: exact parameter counts of the released models, counted on the meta device."""
import pytest

from openseason.config import NAMED_CONFIGS, Config
from openseason.errors import ConfigError
from openseason.model import count_parameters

# Totals of the released checkpoints (model.num_parameters() in transformers).
EXPECTED = {
    "pythia-14m": 14_067_712,
    "pythia-31m": 30_494_720,
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
    "pythia-1b": 1_011_781_632,
    "pythia-1.4b": 1_414_647_808,
    "pythia-2.8b": 2_775_208_960,
    "pythia-6.9b": 6_857_302_016,
    "pythia-12b": 11_846_072_320,
    "llama-7b": 6_738_415_616,
    "llama-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "tinyllama-1.1b": 1_100_048_384,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count(name):
    assert count_parameters(Config.from_name(name)) == EXPECTED[name]


@pytest.mark.parametrize("size", ["14m", "70m", "1b", "12b"])
def test_deduped_names_share_the_architecture(size):
    a, b = Config.from_name(f"pythia-{size}"), Config.from_name(f"pythia-{size}-deduped")
    assert count_parameters(a) == count_parameters(b)


def test_padded_vocab_sizes():
    assert Config.from_name("pythia-2.8b").padded_vocab_size == 50304
    assert Config.from_name("pythia-6.9b").padded_vocab_size == 50432
    assert Config.from_name("pythia-12b").padded_vocab_size == 50688


def test_every_named_config_builds():
    for name in NAMED_CONFIGS:
        assert count_parameters(Config.from_name(name)) > 0


def test_bad_configs_are_clear():
    with pytest.raises(ConfigError, match="unknown model config"):
        Config.from_name("pythia-71m")
    with pytest.raises(ConfigError, match="not a multiple of n_query_groups"):
        Config(n_head=8, n_query_groups=3)
    with pytest.raises(ConfigError, match="unknown config keys"):
        Config.from_dict({"n_layers": 2})
