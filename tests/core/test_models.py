"""Model construction: paper sizes, autoencoder noise control, shapes, radiation correction."""
import pytest
import torch

from magicfuse_core.models.autoencoder import Autoencoder, AutoencoderConfig
from magicfuse_core.models.fusion import FusionNet, FusionModule, PROFILES as FUSION_PROFILES, correct_weight, radiation_mask
from magicfuse_core.models.unet import ConditionalUNet, count_parameters, unet_config
from magicfuse_core.palette import class_ids


@pytest.mark.parametrize("profile,millions", [("ikr_paper", 39.65), ("ckg_paper", 517.67)])
def test_paper_denoisers_have_the_papers_parameter_count(profile, millions):
    with torch.device("meta"):  # count without allocating 2 GB
        net = ConditionalUNet(unet_config(profile))
    assert abs(count_parameters(net) / 1e6 - millions) < 0.01


def test_paper_fusion_network_has_2_74_million_parameters():
    with torch.device("meta"):
        net = FusionNet(FUSION_PROFILES["paper"])
    assert abs(count_parameters(net) / 1e6 - 2.74) < 0.01


def test_encoder_is_reproducible_from_a_generator_and_from_explicit_noise():
    ae = Autoencoder(AutoencoderConfig(channels=8, num_res_blocks=1)).eval()
    img = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        a = ae.encode(img, generator=torch.Generator().manual_seed(5))
        b = ae.encode(img, generator=torch.Generator().manual_seed(5))
        c = ae.encode(img, generator=torch.Generator().manual_seed(6))
        noise = torch.randn(ae.encoder.noise_shape(img), generator=torch.Generator().manual_seed(5))
        d = ae.encode(img, noise=noise)
    assert a.shape == (2, 8, 4, 6) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, d)
    assert not torch.equal(a, c), "the injected noise must matter"


def test_encoder_rejects_wrong_noise_shape_and_sizes_not_multiple_of_4():
    ae = Autoencoder(AutoencoderConfig(channels=8, num_res_blocks=1))
    with pytest.raises(ValueError, match="noise"):
        ae.encode(torch.rand(1, 3, 16, 16), noise=torch.randn(1, 32, 3, 3))
    with pytest.raises(ValueError, match="multiples of 4"):
        ae.encode(torch.rand(1, 3, 18, 16))


@pytest.mark.parametrize("h,w", [(8, 8), (15, 20), (9, 13)])
def test_unet_keeps_the_latent_size_for_any_input(h, w):
    net = ConditionalUNet(unet_config("tiny")).eval()
    with torch.no_grad():
        eps = net(torch.randn(2, 16, h, w), torch.tensor([960.0, 0.0]))
    assert eps.shape == (2, 8, h, w)


def test_radiation_correction_caps_w_only_on_thermal_classes():
    seg = torch.full((1, 9, 2, 2), -5.0)
    seg[0, 2, 0, 0] = 5.0   # person
    seg[0, 1, 0, 1] = 5.0   # car
    seg[0, 0, 1, :] = 5.0   # unlabelled
    w = torch.full((1, 8, 2, 2), 0.9)
    person_only = correct_weight(w, radiation_mask(seg, class_ids(["person"])), tau=0.4)
    assert person_only[0, :, 0, 0].eq(0.4).all() and person_only[0, :, 0, 1].eq(0.9).all()
    person_car = correct_weight(w, radiation_mask(seg, class_ids(["person", "car"])), tau=0.4)
    assert person_car[0, :, 0, 1].eq(0.4).all() and person_car[0, :, 1, :].eq(0.9).all()
    low = torch.full_like(w, 0.1)  # below tau stays untouched
    torch.testing.assert_close(correct_weight(low, radiation_mask(seg), 0.4), low)


def test_soft_radiation_map_pulls_w_towards_tau_in_proportion_to_the_thermal_probability():
    seg = torch.zeros(1, 9, 1, 3)
    seg[0, 2, 0, 0] = 20.0              # surely a person
    seg[0, 2, 0, 1] = torch.log(torch.tensor(8.0))  # person 8 / (8 + 9 unlabelled + 7 others) = one third,
    seg[0, 0, 0, 1] = torch.log(torch.tensor(9.0))  # and not the argmax
    seg[0, 1, 0, 2] = 20.0              # surely a car (not thermal here)
    soft = radiation_mask(seg, (2,), kind="soft")
    torch.testing.assert_close(soft[0, 0, 0], torch.tensor([1.0, 1 / 3, 0.0]), atol=1e-6, rtol=0)
    w = torch.full((1, 8, 1, 3), 0.9)
    w_r = correct_weight(w, soft, tau=0.4)
    torch.testing.assert_close(w_r[0, 0, 0], torch.tensor([0.4, 0.9 - 0.5 / 3, 0.9]), atol=1e-6, rtol=0)
    hard = correct_weight(w, radiation_mask(seg, (2,), kind="hard"), tau=0.4)
    torch.testing.assert_close(hard[0, 0, 0], torch.tensor([0.4, 0.9, 0.9]))  # argmax: the unsure one is missed
    low = torch.full_like(w, 0.1)  # below tau stays untouched, as with the hard map
    torch.testing.assert_close(correct_weight(low, soft, 0.4), low)
    with pytest.raises(ValueError, match="radiation map must be one of hard, soft"):
        radiation_mask(seg, (2,), kind="argmax")


def test_fusion_module_mixes_noises_with_the_corrected_weight():
    torch.manual_seed(0)
    net = FusionNet(FUSION_PROFILES["tiny"]).eval()
    x, e1, e2, t, s = torch.randn(1, 24, 6, 8), torch.randn(1, 8, 6, 8), torch.randn(1, 8, 6, 8), torch.tensor([40.0]), torch.randn(1, 9, 6, 8)
    with torch.no_grad():
        w, s_next = net(x, e1, e2, t, s)
        eps, full, s2 = FusionModule(net, tau=0.4, thermal_classes=(2,))(x, e1, e2, t, s)
    w_r = correct_weight(w, radiation_mask(s_next, (2,)), 0.4)
    torch.testing.assert_close(eps, w_r * e1 + (1 - w_r) * e2)
    assert full.shape == (1, 9, 24, 32)
    torch.testing.assert_close(s2, s_next)


def test_unknown_class_names_are_refused():
    with pytest.raises(ValueError, match="unknown MFNet class"):
        class_ids(["pedestrian"])
    with pytest.raises(ValueError):
        class_ids([12])


def test_pooled_attention_equals_full_attention_on_block_constant_maps():
    # Every pooled key stands for pool*pool identical full-resolution keys, so the softmax
    # weights and the output are the same: pooling only loses what varies inside a block.
    from magicfuse_core.models.fusion import SpatialSelfAttention

    torch.manual_seed(0)
    full = SpatialSelfAttention(16, 4, pool=1).eval()
    pooled = SpatialSelfAttention(16, 4, pool=4).eval()
    pooled.load_state_dict(full.state_dict())
    # GroupNorm statistics are the same for a block-constant map and its pooled copy.
    x = torch.randn(2, 16, 3, 5).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    with torch.no_grad():
        torch.testing.assert_close(pooled(x), full(x), rtol=1e-4, atol=1e-5)
        rough = torch.randn(2, 16, 12, 20)
        assert not torch.allclose(pooled(rough), full(rough), atol=1e-3)


def test_fusion_attention_pool_is_a_config_field_with_the_same_parameters():
    from magicfuse_core.models.fusion import FusionConfig, FusionNet

    full = FusionNet(FusionConfig(channels=32, num_blocks=2, groups=8))
    pooled = FusionNet(FusionConfig.from_dict({**full.config.to_dict(), "attention_pool": 4}))
    pooled.load_state_dict(full.state_dict())  # same weights, only the attention's key/value grid differs
    x24, eps = torch.randn(1, 24, 10, 14), torch.randn(1, 8, 10, 14)  # not a multiple of 4: ceil pooling
    w, s = pooled(x24, eps, eps, torch.tensor([500.0]), torch.randn(1, 9, 10, 14))
    assert w.shape == (1, 8, 10, 14) and s.shape == (1, 9, 10, 14) and torch.isfinite(w).all()
    assert FusionConfig.from_dict({}).attention_pool == 1  # model.json files without the field: the paper's attention
    with pytest.raises(ValueError, match="attention_pool"):
        FusionConfig.from_dict({"attention_pool": 0})


def test_stream_segmentation_head_reads_only_the_streams_and_leaves_the_weight_alone():
    # seg_head "streams": S sees the two clean-latent estimates, its state and t, never F's features, so it
    # trains on stored stream rollouts; and F's weight w (MagImg) is the fold net's with the same trunk.
    from magicfuse_core.models.fusion import FusionConfig, FusionNet

    torch.manual_seed(0)
    fold = FusionNet(FusionConfig(channels=16, num_blocks=1, groups=8)).eval()
    streams = FusionNet(FusionConfig.from_dict({**fold.config.to_dict(), "seg_head": "streams", "seg_channels": 16})).eval()
    assert not hasattr(streams, "segproj") and streams.seg_head() is streams.stream_seg
    trunk = {k: v for k, v in fold.state_dict().items() if not k.startswith("segproj.")}
    streams.load_state_dict({**streams.state_dict(), **trunk})
    x24, eps_i, eps_c = torch.randn(2, 24, 11, 13), torch.randn(2, 8, 11, 13), torch.randn(2, 8, 11, 13)
    t, s0 = torch.tensor([800.0, 200.0]), torch.randn(2, 9, 11, 13)
    with torch.no_grad():
        w_fold, _ = fold(x24, eps_i, eps_c, t, s0)
        w, s = streams(x24, eps_i, eps_c, t, s0)
        other_fused = torch.cat([x24[:, :16], torch.randn(2, 8, 11, 13)], dim=1)
        _, s_other = streams(other_fused, torch.randn_like(eps_i), torch.randn_like(eps_c), t, s0)
        _, s_later = streams(x24, eps_i, eps_c, torch.tensor([0.0, 0.0]), s0)
        _, s_ckg = streams(torch.cat([x24[:, :8], -x24[:, 8:16], x24[:, 16:]], dim=1), eps_i, eps_c, t, s0)
    assert s.shape == (2, 9, 11, 13)  # odd sizes: the half-resolution context is resized back exactly
    torch.testing.assert_close(w, w_fold)
    torch.testing.assert_close(s_other, s)  # the fused sample and the noises do not reach S
    assert not torch.allclose(s_later, s) and not torch.allclose(s_ckg, s)  # t and the CKG estimate do
    with pytest.raises(ValueError, match="seg_head"):
        FusionConfig.from_dict({"seg_head": "features"})
    assert FusionConfig.from_dict({}).seg_head == "fold"  # model.json files without the field: the paper's S


def test_frame_segmentation_head_reads_the_frame_once_and_keeps_the_state_over_the_steps():
    # seg_head "frame": S maps the (padded) frame to logits on the latent grid; inside the step loop the net
    # hands the state on unchanged, and F's weight w is the fold net's with the same trunk.
    from magicfuse_core.models.fusion import FusionConfig, FusionNet

    torch.manual_seed(0)
    fold = FusionNet(FusionConfig(channels=16, num_blocks=1, groups=8)).eval()
    frame_net = FusionNet(FusionConfig.from_dict({**fold.config.to_dict(), "seg_head": "frame", "seg_channels": 8})).eval()
    assert not hasattr(frame_net, "segproj") and frame_net.seg_head() is frame_net.frame_seg
    frame_net.load_state_dict({**frame_net.state_dict(),
                               **{k: v for k, v in fold.state_dict().items() if not k.startswith("segproj.")}})
    frame = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        s0 = frame_net.frame_state(frame)
        x24, eps_i, eps_c = torch.randn(2, 24, 16, 24), torch.randn(2, 8, 16, 24), torch.randn(2, 8, 16, 24)
        w_fold, _ = fold(x24, eps_i, eps_c, torch.tensor([800.0, 0.0]), s0)
        w, s = frame_net(x24, eps_i, eps_c, torch.tensor([800.0, 0.0]), s0)
        brighter = frame_net.frame_state((frame * 2).clamp(0, 1))
    assert s0.shape == (2, 9, 16, 24)  # the latent grid: a quarter of the frame
    torch.testing.assert_close(w, w_fold)
    assert torch.equal(s, s0)  # the same map gates every step
    assert not torch.allclose(brighter, s0)  # it reads the pixels
    with pytest.raises(ValueError, match="seg_head 'frame'"):
        fold.frame_state(frame)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_prediction_denoiser_hands_the_sampler_the_epsilon_of_its_z0(dtype):
    # The UNet returns what it predicts; EpsilonDenoiser turns a z0 prediction into the noise whose
    # clean estimate (x_t - sqrt(1-a) eps) / sqrt(a) is that z0, with the schedule it is given.
    from magicfuse_core.backends.torch_fast import TorchNet, cast_for_precision
    from magicfuse_core.denoiser import EpsilonDenoiser
    from magicfuse_core.models.unet import UNetConfig
    from magicfuse_core.schedule import DDIMSchedule

    torch.manual_seed(0)
    cfg = unet_config("tiny").to_dict()
    net = ConditionalUNet(UNetConfig.from_dict({**cfg, "prediction": "sample"})).eval()
    x, t = torch.randn(3, 16, 8, 8), torch.tensor([960.0, 400.0, 0.0])
    schedule = DDIMSchedule()
    with torch.no_grad():
        z0 = net(x, t)  # the network itself: its raw prediction
        body = TorchNet(cast_for_precision(net, dtype), dtype)  # as the torch backend's bf16 mode
        eps = EpsilonDenoiser(body, "sample", schedule.alphas_cumprod)(x, t)
    assert eps.dtype == torch.float32  # the conversion stays fp32 whatever the body's precision
    a = schedule.alphas_cumprod[t.long()].float().view(-1, 1, 1, 1)
    z0_from_eps = (x[:, 8:] - (1 - a).sqrt() * eps) / a.sqrt()
    if dtype == torch.float32:
        torch.testing.assert_close(z0_from_eps, z0, rtol=1e-4, atol=2e-4)
    else:  # bf16 weights: only the body's rounding, not amplified by the conversion (1 - a = 8.5e-4 at t = 0)
        assert float((z0_from_eps - z0).abs().mean()) < 0.05


def test_the_denoiser_uses_the_schedule_it_is_given():
    """A z0 model loaded with another alpha table converts with that table, not a hidden default."""
    from magicfuse_core.denoiser import EpsilonDenoiser
    from magicfuse_core.models.unet import UNetConfig
    from magicfuse_core.schedule import DDIMSchedule

    torch.manual_seed(0)
    net = ConditionalUNet(UNetConfig.from_dict({**unet_config("tiny").to_dict(), "prediction": "sample"})).eval()
    x, t = torch.randn(2, 16, 8, 8), torch.tensor([920.0, 40.0])
    for schedule in (DDIMSchedule(), DDIMSchedule(beta_schedule="scaled_linear")):
        with torch.no_grad():
            eps = EpsilonDenoiser(net, "sample", schedule.alphas_cumprod)(x, t)
            z0 = net(x, t)
        for i, ti in enumerate(schedule.timesteps):  # predict_x0 of the same schedule recovers the body's z0
            if ti in (920, 40):
                row = 0 if ti == 920 else 1
                torch.testing.assert_close(schedule.predict_x0(x[row:row + 1, 8:], eps[row:row + 1], i), z0[row:row + 1],
                                           rtol=1e-4, atol=2e-4)
    with pytest.raises(ValueError, match="prediction"):
        EpsilonDenoiser(net, "v", DDIMSchedule().alphas_cumprod)
    cfg = unet_config("tiny").to_dict()
    with pytest.raises(ValueError, match="prediction"):
        UNetConfig.from_dict({**cfg, "prediction": "v"})


def test_local_decoder_keeps_a_latent_change_local_and_the_released_one_does_not():
    """Why the local decoder exists: a change of the latent in one place (the noise fusion in a person
    region) must not move pixels far away; the released layout's InstanceNorm moves the whole frame.
    The local decoder's one global input, the frame's tone, is held fixed here (`style_latent=`)."""
    torch.manual_seed(0)
    z = torch.rand(1, 8, 24, 24)
    changed = z.clone()
    changed[..., 2:6, 2:6] = 1 - changed[..., 2:6, 2:6]
    far = (slice(None), slice(None), slice(64, None), slice(64, None))  # 40 px beyond the change
    for kind, local in (("local", True), ("released", False)):
        ae = Autoencoder(AutoencoderConfig(channels=8, num_res_blocks=1, decoder=kind, decoder_channels=16,
                                           decoder_blocks=2)).eval()
        with torch.no_grad():
            if kind == "local":  # trained blocks are not the identity: give the zero-initialised convs weights
                for m in ae.decoder.modules():
                    if isinstance(m, torch.nn.Conv2d):
                        torch.nn.init.normal_(m.weight, std=0.1)
                ae.decoder.out[-1].bias.fill_(0.5)  # mid-grey, inside the output clamp
            if kind == "local":
                for m in ae.decoder.style.modules():
                    if isinstance(m, torch.nn.Linear):
                        torch.nn.init.normal_(m.weight, std=0.1)
                a, b = ae.decoder(z, style_latent=z), ae.decoder(changed, style_latent=z)
                assert not torch.equal(ae.decoder(changed)[far], a[far])  # the tone itself is global
            else:
                a, b = ae.decode(z), ae.decode(changed)
                # with the frame's own statistics held fixed (style_latent) the released layout is local too
                fa, fb = ae.decoder(z, style_latent=z), ae.decoder(changed, style_latent=z)
                torch.testing.assert_close(fa, a, atol=1e-5, rtol=0)
                torch.testing.assert_close(fa[far], fb[far], atol=1e-6, rtol=0)
                assert not torch.equal(fa, fb)
        assert a.shape == (1, 3, 96, 96) and 0 <= float(a.min()) and float(a.max()) <= 1
        assert (a[far] == b[far]).all() == local, kind
        assert not torch.equal(a, b)


def test_autoencoder_config_names_its_decoder():
    with pytest.raises(ValueError, match="decoder must be one of released, local"):
        AutoencoderConfig(decoder="transposed")
    ae = Autoencoder(AutoencoderConfig(channels=8, num_res_blocks=1, decoder="local", decoder_channels=16))
    assert Autoencoder(AutoencoderConfig(**ae.config.to_dict())).decoder.__class__.__name__ == "LocalDecoder"


def test_class_labels_is_the_argmax_over_classes_ties_included():
    from magicfuse_core.models.fusion import class_labels

    logits = torch.randn(2, 9, 5, 7)
    logits[0, 3, 1, 1] = logits[0, 5, 1, 1] = 50.0  # a tie: the first class wins, as with argmax
    assert torch.equal(class_labels(logits), logits.argmax(dim=1))
    assert class_labels(logits)[0, 1, 1] == 3


@pytest.mark.parametrize("kind", ["released", "local"])
def test_a_style_latent_of_another_batch_or_width_is_a_clear_error(kind):
    ae = Autoencoder(AutoencoderConfig(channels=8, num_res_blocks=1, decoder=kind, decoder_channels=16)).eval()
    z = torch.rand(2, 8, 8, 8)
    with torch.no_grad():
        assert ae.decoder(z, style_latent=torch.rand(2, 8, 12, 12)).shape == (2, 3, 32, 32)  # another size: fine
        for bad in (torch.rand(1, 8, 8, 8), torch.rand(2, 4, 8, 8), torch.rand(8, 8, 8)):
            with pytest.raises(ValueError, match="style_latent must be"):
                ae.decoder(z, style_latent=bad)
