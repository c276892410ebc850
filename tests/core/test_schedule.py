"""The DDIM schedule, cross-checked against an independent implementation (diffusers)."""
import pytest
import torch

from magicfuse_core.schedule import DDIMSchedule

diffusers = pytest.importorskip("diffusers", reason="diffusers is the test-only reference DDIM implementation")


def reference_scheduler(steps: int):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                                    steps_offset=0, timestep_spacing="leading", prediction_type="epsilon")
    sched.set_timesteps(steps)
    return sched


def test_timesteps_are_960_down_to_0_for_25_steps():
    s = DDIMSchedule()
    assert s.timesteps == tuple(range(960, -1, -40))
    assert list(reference_scheduler(25).timesteps.tolist()) == list(s.timesteps)


def test_alpha_bar_table_matches_diffusers():
    ref = reference_scheduler(25).alphas_cumprod.double()
    ours = DDIMSchedule().alphas_cumprod
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [25, 10, 4])
def test_every_step_matches_diffusers(steps):
    ours, ref = DDIMSchedule(num_inference_steps=steps), reference_scheduler(steps)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 8, 6, 5, generator=g)
    for i, t in enumerate(ours.timesteps):
        eps = torch.randn(x.shape, generator=g)
        x_next, x0 = ours.step(x, eps, i)
        out = ref.step(eps, int(t), x, eta=0.0)
        torch.testing.assert_close(x0, out.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_next, out.prev_sample, rtol=1e-5, atol=1e-5)
        x = x_next


def test_last_step_lands_on_the_clean_estimate():
    s = DDIMSchedule()
    x, eps = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    x_next, x0 = s.step(x, eps, len(s.timesteps) - 1)
    assert s.alpha_bar(-40) == 1.0
    torch.testing.assert_close(x_next, x0)


def test_add_noise_matches_diffusers():
    ref = reference_scheduler(25)
    x0, noise, t = torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4), torch.tensor([0, 500, 999])
    torch.testing.assert_close(DDIMSchedule().add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(num_inference_steps=0), dict(num_inference_steps=1001), dict(beta_schedule="cosine")])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DDIMSchedule(**kwargs)
