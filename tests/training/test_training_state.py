"""What a training run carries across a restart, without running a phase: the EMA averages (on the
model's device), each rank's RNG state (own state back, or a reseed on another world size), and the
process group's collective timeout."""
from __future__ import annotations

import io
import random
from datetime import timedelta

import numpy as np
import pytest
import torch

from training import distributed
from training.distributed import Dist, setup_distributed
from training.ema import EMA
from training.rng import restore_rng_states, rng_state

CPU = torch.device("cpu")


def small_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def trained_ema() -> tuple[torch.nn.Module, EMA]:
    torch.manual_seed(0)
    net = small_net()
    ema = EMA(net, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(net)
    return net, ema


def through_a_file(state: dict) -> dict:
    """What resuming reads: the checkpoint saved and loaded onto the CPU."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------------------- EMA

def test_ema_warms_up_then_averages():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # decay min(0.5, 2/11) = 2/11
    assert ema.shadow["weight"].item() == pytest.approx(9 / 11)
    ema.update(net)
    assert ema.shadow["weight"].item() == pytest.approx(9 / 11 * 0.25 + 0.75)


def test_ema_loaded_from_a_cpu_checkpoint_lives_on_the_models_device():
    # Resuming on CUDA reads the checkpoint onto the CPU; the averages must go where the weights are,
    # or the first update mixes devices. The meta device stands in for a GPU.
    _, ema = trained_ema()
    state = through_a_file(ema.state_dict())
    with torch.device("meta"):
        model = small_net()
    resumed = EMA(model, decay=0.9)
    resumed.load_state_dict(state)
    assert {v.device.type for v in resumed.shadow.values()} == {"meta"}
    assert resumed.updates == 3
    resumed.update(model)  # the update after resuming runs on the model's device
    assert {v.device.type for v in resumed.shadow.values()} == {"meta"}


def test_ema_follows_a_model_moved_after_the_ema_was_made():
    net = small_net()
    ema = EMA(net, decay=0.9)
    net.to("meta")
    ema.update(net)
    assert {v.device.type for v in ema.shadow.values()} == {"meta"}


def test_ema_round_trip_on_cpu_is_exact():
    net, ema = trained_ema()
    resumed = EMA(small_net(), decay=0.5)
    resumed.load_state_dict(through_a_file(ema.state_dict()))
    assert resumed.decay == ema.decay and resumed.updates == ema.updates
    for k, v in ema.shadow.items():
        assert torch.equal(resumed.shadow[k], v), k
    ema.update(net)
    resumed.update(net)
    for k, v in ema.shadow.items():  # and it continues identically
        assert torch.equal(resumed.shadow[k], v), k


def test_ema_refuses_the_state_of_another_network():
    _, ema = trained_ema()
    other = EMA(torch.nn.Linear(3, 4), decay=0.9)
    with pytest.raises(ValueError, match="missing|unexpected"):
        other.load_state_dict(ema.state_dict())
    wider = EMA(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5)), decay=0.9)
    with pytest.raises(ValueError, match="0.weight"):
        wider.load_state_dict(ema.state_dict())


# ---------------------------------------------------------------------------- RNG states per rank

def seeded_state(seed: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return rng_state(CPU)


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def draws_after(state: dict) -> tuple:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    return draws()


def test_each_rank_gets_its_own_rng_state_back_when_the_world_size_matches():
    saved = through_a_file({"rng": [seeded_state(10), seeded_state(11)]})["rng"]
    expected = [draws_after(s) for s in saved]
    assert expected[0] != expected[1]
    for rank in (0, 1):
        torch.manual_seed(99)  # whatever this process drew before resuming
        assert restore_rng_states(saved, Dist(rank=rank, world_size=2), seed=0, step=40) is None
        assert draws() == expected[rank]


def test_another_world_size_reseeds_every_rank_from_seed_step_and_rank():
    saved = [seeded_state(10), seeded_state(11)]
    old = [draws_after(s) for s in saved]
    streams = []
    for rank in range(3):
        note = restore_rng_states(saved, Dist(rank=rank, world_size=3), seed=7, step=40)
        assert "2 process(es)" in note and "has 3" in note
        streams.append(draws())
        restore_rng_states(saved, Dist(rank=rank, world_size=3), seed=7, step=40)
        assert draws() == streams[-1]  # deterministic
    assert len({str(s) for s in streams}) == 3  # one stream per rank
    assert not {str(s) for s in streams} & {str(s) for s in old}
    restore_rng_states(saved, Dist(rank=0, world_size=3), seed=7, step=41)
    assert draws() != streams[0]  # a later checkpoint, other draws


def test_a_single_state_checkpoint_resumes_a_single_process_exactly():
    # Checkpoints written before the states were kept per rank hold rank 0's state as a dict.
    legacy = seeded_state(12)
    expected = draws_after(legacy)
    torch.manual_seed(99)
    assert restore_rng_states(legacy, Dist(), seed=0, step=40) is None
    assert draws() == expected
    assert "1 process(es)" in restore_rng_states(legacy, Dist(rank=1, world_size=2), seed=0, step=40)


# ---------------------------------------------------------------------------- process group

@pytest.fixture()
def two_process_env(monkeypatch):
    """A rank 0 of 2 whose process group is recorded instead of joined."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    return calls


def test_process_group_waits_two_hours_by_default_for_the_latent_cache_build(two_process_env):
    ctx = setup_distributed("cpu")
    assert ctx.world_size == 2 and ctx.is_main
    assert two_process_env == [("gloo", {"timeout": timedelta(minutes=120)})]


def test_process_group_timeout_comes_from_ddp_timeout_min(two_process_env):
    setup_distributed("cpu", 300)
    assert two_process_env[-1][1]["timeout"] == timedelta(hours=5)
    for bad in (0, -5, "soon"):
        with pytest.raises(ValueError, match="ddp_timeout_min"):
            setup_distributed("cpu", bad)


def test_single_process_runs_join_no_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("joined a group"))
    assert not setup_distributed("cpu").enabled


# ---------------------------------------------------------------------------- training checkpoint

def test_training_checkpoint_names_its_network_and_loads_strictly(tmp_path):
    from training.builders import build_unet
    from training.checkpoints import load_trained_module, save_checkpoint

    spec = {"profile": "tiny", "config": {"model_channels": 16, "groups": 8}}
    net = build_unet(spec)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path / "last.pt", ctx=Dist(), step=3, model=net, optimizer=optimizer)
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert state["kind"] == "unet" and state["world_size"] == 1 and len(state["rng"]) == 1
    for k, v in load_trained_module(path).state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k
    dropped = next(iter(state["model"]))
    del state["model"][dropped]
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match=f"damaged.pt does not match the network: 1 missing key.*{dropped}"):
        load_trained_module(tmp_path / "damaged.pt")
