"Integration tests of the core (config, diffusion, model) against the original Genie's checkpoint and outputs."
import re
from pathlib import Path

import pytest
import torch

from genie_nb.config import GenieConfig, read_config, parse_config, config_to_text, ConfigError
from genie_nb.diffusion import Diffusion, Rigid, frenet_frames, schedule_terms, get_betas, noise_loss
from genie_nb.model import Genie, sinusoidal_encoding

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / 'tests/fixtures/original_genie'
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def ref():
    return torch.load(FIX / 'reference_genie_small_ref.pt', weights_only=True)


@pytest.fixture(scope='module')
def genie(ref):
    cfg = read_config(FIX / 'runs/genie_small_ref/configuration')
    model = Genie(cfg).eval()
    ckpt = torch.load(FIX / 'runs/genie_small_ref/version_0/checkpoints/epoch=0.ckpt', weights_only=True)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    assert model.n_params == ref['meta_n_params'] == 65660
    return model


def test_every_reference_tensor_matches(ref, genie):
    "Every tensor of the reference file (but the batch-of-3 bug) is reproduced within 1e-5."
    frames = Rigid(ref['input_rots'], ref['input_trans'])
    t, mask = ref['input_s'], ref['input_mask']
    p_mask = mask[:, :, None] * mask[:, None, :]
    with torch.no_grad():
        s = genie.model.single_feature_net(t, mask)
        z = genie.model.pair_feature_net(s, frames, p_mask)
        _, zt = genie.model.features(frames, t, mask)
        out = genie(frames, t, mask)
        loss = noise_loss(frames.trans - out.trans, ref['loss_noise_trans'], mask)
        step = genie.p(frames, t, mask, noise_scale=0.)
        step0 = genie.p(frames, torch.zeros_like(t), mask, noise_scale=0.6)
    ours = dict(single_feature_eval=s, pair_feature_eval=z, pair_transform_eval=zt,
                denoiser_eval_trans=out.trans, denoiser_eval_rots=out.rots, loss_eval=loss,
                p_noise0_trans=step.trans, p_noise0_rots=step.rots,
                p_s0_noise0_trans=step0.trans, p_s0_noise0_rots=step0.rots,
                input_rots=frenet_frames(ref['input_trans'], mask),
                frenet_rots=frenet_frames(ref['frenet_x'], ref['frenet_mask']))
    ours.update({f'sched_{k}': v for k, v in schedule_terms(get_betas(100, 'cosine')).items()})
    for case in ('pos', 'timestep', 'generic'):
        ours[f'sinus_{case}_out'] = sinusoidal_encoding(ref[f'sinus_{case}_v'], ref[f'sinus_{case}_N'], ref[f'sinus_{case}_D'])
    inputs = {'input_trans', 'input_s', 'input_mask', 'loss_noise_trans', 'frenet_x', 'frenet_mask', 'frenet_bug_b3_rots'}
    expected = {k for k, v in ref.items() if isinstance(v, torch.Tensor) and not k.startswith(('meta_', 'sinus_'))
                and k not in inputs} | {f'sinus_{c}_out' for c in ('pos', 'timestep', 'generic')}
    assert expected == set(ours), expected ^ set(ours)
    for k in sorted(expected): torch.testing.assert_close(ours[k], ref[k], **TOL, msg=lambda m, k=k: f'{k}: {m}')


def test_batch_of_three_is_not_corrupted(ref):
    "The original's torch.cross without dim crosses the batch axis when b == 3; ours does not."
    rots3 = frenet_frames(ref['frenet_x'][:3], ref['frenet_mask'][:3])
    torch.testing.assert_close(rots3, ref['frenet_rots'][:3], **TOL)
    assert (rots3 - ref['frenet_bug_b3_rots']).abs().max() > 0.1


def test_one_residue_chain_runs_through_the_model():
    model = Genie(GenieConfig.tiny()).eval()
    x, mask = torch.randn(3, 1, 3), torch.ones(3, 1)
    with torch.no_grad():
        out = model.p(Rigid(frenet_frames(x, mask), x), torch.tensor([5, 5, 5]), mask)
    assert out.trans.shape == (3, 1, 3) and torch.isfinite(out.trans).all()


def test_fixture_configuration_round_trip():
    path = FIX / 'runs/genie_small_ref/configuration'
    cfg = read_config(path)
    assert (cfg.model.c_s, cfg.model.c_p, cfg.model.include_tri_att, cfg.diffusion.n_timestep, cfg.io.max_n_res) == (32, 16, True, 100, 48)
    again = parse_config(config_to_text(cfg))
    assert again == cfg
    # the original's parser keeps every line of the file as key -> string (or exact True/False)
    def original_parse(text):
        return {k: (True if v == 'True' else False if v == 'False' else v)
                for k, v in (l.split() for l in text.splitlines() if len(l.split()) == 2)}
    assert original_parse(config_to_text(cfg)) == original_parse(path.read_text())


def test_config_errors_name_file_line_and_key(tmp_path):
    p = tmp_path / 'configuration'
    p.write_text('name x\nsingleFeatureDimensoin 32\n')
    with pytest.raises(ConfigError, match=r"configuration, line 2: unknown key 'singleFeatureDimensoin'; did you mean 'singleFeatureDimension'"):
        read_config(p)


def test_readme_test_command_is_what_ci_runs():
    "`.ci/run` runs exactly the test command written in README.md."
    ci = (ROOT / '.ci/run').read_text()
    cmd = re.search(r'^(pip install torch==2\.13\.0 .*)$', ci, re.M).group(1)
    assert cmd in (ROOT / 'README.md').read_text()
