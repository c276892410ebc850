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


def test_custom_timesteps_step_from_one_listed_timestep_to_the_next():
    """(800, 400, 0) is DDIM from 800 to 400 to 0: each step's next alpha_bar is the next listed timestep's, so
    it agrees with the 5-step leading schedule wherever the two share a step (800 -> 600 is not one of them)."""
    s = DDIMSchedule(custom_timesteps=[800, 400, 0])
    assert s.timesteps == (800, 400, 0) and s.num_inference_steps == 3
    assert s.coefficients(0) == (s.alpha_bar(800), s.alpha_bar(400))
    assert s.coefficients(2) == (s.alpha_bar(0), 1.0)
    # the last step of a list that stops above 0 still lands on the clean estimate
    early = DDIMSchedule(custom_timesteps=(800, 400))
    x, eps = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    x_next, x0 = early.step(x, eps, 1)
    torch.testing.assert_close(x_next, x0)
    # a leading schedule written out as a list is the same schedule
    five = DDIMSchedule(num_inference_steps=5)
    listed = DDIMSchedule(custom_timesteps=five.timesteps)
    for i in range(5):
        assert listed.coefficients(i) == five.coefficients(i)
    assert five.with_timesteps((800, 400)).timesteps == (800, 400)
    assert listed.with_steps(5) is listed and listed.with_steps(4).timesteps == (750, 500, 250, 0)


@pytest.mark.parametrize("timesteps", [(), (400, 800), (800, 800, 0), (1000, 0), (800, -1), "800", (800.5, 0), (True,)])
def test_bad_custom_timesteps_are_refused(timesteps):
    with pytest.raises(ValueError, match="custom_timesteps"):
        DDIMSchedule(custom_timesteps=timesteps)


@pytest.mark.parametrize("kwargs", [dict(num_inference_steps=0), dict(num_inference_steps=1001), dict(beta_schedule="cosine")])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DDIMSchedule(**kwargs)
