"Integration and fault tests of genie_nb.model_io: round trips, original checkpoints, damage, crashes, retention."
import copy, errno, os, random, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import genie_nb
from genie_nb import model_io as mio
from genie_nb.config import ConfigError, GenieConfig, config_to_text, write_config
from genie_nb.model import Genie
from genie_nb.model_io import (CheckpointCorrupt, CheckpointMismatch, CheckpointNotFound, CheckpointUnsafe,
                               apply_retention, capture_rng, checkpoint_path, export_safetensors, get_epochs,
                               get_versions, import_safetensors, load_checkpoint, load_config, load_model,
                               model_from_checkpoint, new_version, restore_rng, retained, run_dir, save_checkpoint,
                               sha256_file, sidecar_path)

REPO = Path(__file__).resolve().parents[1]
FIX = REPO/'tests/fixtures/original_genie/runs/genie_small_ref'
FIX_CKPT = FIX/'version_0/checkpoints/epoch=0.ckpt'
FIX_SHA = '92841bacd85456bd6fee7a2984d0a5f435897f0691110c995382dcce97efd98a'  # from the fixture's README


def tiny_model(seed=0, **kw):
    "A tiny Genie whose zero-initialised layers are perturbed, so that every tensor is distinctive."
    torch.manual_seed(seed)
    m = Genie(GenieConfig.tiny(**kw))
    with torch.no_grad():
        for p in m.parameters(): p.add_(0.05 * torch.randn_like(p))
    return m


def assert_same_weights(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a: assert torch.equal(a[k], b[k]), k


def train_steps(model, opt, k):
    x0, mask = torch.randn(2, 11, 3).cumsum(1), torch.ones(2, 11)
    for _ in range(k):
        opt.zero_grad(); model.loss(x0, mask).backward(); opt.step()


def make_run(root, name='tiny', epochs=((0, 1), (2,)), model=None):
    "A run folder with one version per tuple of epochs."
    model = model or tiny_model()
    write_config(model.config, run_dir(root, name)/'configuration')
    for es in epochs:
        v = new_version(root, name)
        for e in es: save_checkpoint(checkpoint_path(root, name, v, e), model, epoch=e, global_step=10 * e)
    return model


def copy_fixture(tmp_path, config_text=None):
    shutil.copytree(FIX, tmp_path/'genie_small_ref')
    if config_text is not None: (tmp_path/'genie_small_ref'/'configuration').write_text(config_text)
    return tmp_path


# ---------------------------------------------------------------- round trip and exact resume

def test_round_trip_bit_exact(tmp_path):
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_steps(model, opt, 2)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters(): p.mul_(0.5)
    extra = {'order': torch.randperm(7), 'position': 3, 'note': 'sampler state', 'nested': {'a': [1, 2.5, None]}}
    random.seed(5); np.random.seed(5); torch.manual_seed(5)
    path = save_checkpoint(tmp_path/'epoch=3.ckpt', model, opt, ema=ema, epoch=3, global_step=17, extra=extra)
    expected = (random.random(), np.random.rand(3), torch.rand(3), random.gauss(0, 1), np.random.randn(2))

    ck = load_checkpoint(path)
    assert (ck['epoch'], ck['global_step']) == (3, 17)
    assert ck['pytorch-lightning_version'] == '2.6.6' and ck['lr_schedulers'] == []
    assert ck['genie_nb']['version'] == genie_nb.__version__
    assert_same_weights(ck['state_dict'], model.state_dict())
    assert_same_weights(ck['genie_nb']['ema'], ema.state_dict())
    assert ck['genie_nb']['extra']['note'] == 'sampler state' and ck['genie_nb']['extra']['nested'] == {'a': [1, 2.5, None]}
    assert torch.equal(ck['genie_nb']['extra']['order'], extra['order'])
    # the optimiser state loads into a fresh optimiser and equals the original
    opt2 = torch.optim.Adam(Genie(model.config).parameters(), lr=1e-3)
    opt2.load_state_dict(ck['optimizer_states'][0])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1['param_groups'] == s2['param_groups']
    for i in s1['state']:
        for k in s1['state'][i]: assert torch.equal(s1['state'][i][k], s2['state'][i][k]), (i, k)
    # EMA weights by default, raw weights on request; building a model draws no random numbers
    state = torch.get_rng_state()
    assert_same_weights(model_from_checkpoint(ck).state_dict(), ema.state_dict())
    assert_same_weights(model_from_checkpoint(ck, use_ema=False).state_dict(), model.state_dict())
    assert torch.equal(torch.get_rng_state(), state)
    # the random state: scramble every generator, restore, and draw the same numbers again
    random.seed(99); np.random.seed(99); torch.manual_seed(99)
    assert restore_rng(ck) is True
    got = (random.random(), np.random.rand(3), torch.rand(3), random.gauss(0, 1), np.random.randn(2))
    assert got[0] == expected[0] and got[3] == expected[3]
    assert np.array_equal(got[1], expected[1]) and np.array_equal(got[4], expected[4])
    assert torch.equal(got[2], expected[2])


def test_rng_state_has_no_numpy_objects():
    "The random state must pass torch.load(weights_only=True): tensors, ints, floats, strings only."
    def walk(x):
        if isinstance(x, dict): [walk(v) for v in x.values()]
        elif isinstance(x, (list, tuple)): [walk(v) for v in x]
        else: assert isinstance(x, (torch.Tensor, int, float, str, type(None))) and type(x).__module__ == 'builtins' \
            or isinstance(x, torch.Tensor), type(x)
    np.random.randn()  # make NumPy cache a gaussian: its state then carries a float
    walk(capture_rng())


def test_resume_equals_uninterrupted(tmp_path):
    "k steps, save, m steps == k steps, save, load into fresh objects, restore RNG, m steps: bit for bit."
    torch.manual_seed(1)
    a = Genie(GenieConfig.tiny()).train()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-3)
    train_steps(a, opt_a, 2)
    path = save_checkpoint(tmp_path/'epoch=0.ckpt', a, opt_a, epoch=0, global_step=2)
    train_steps(a, opt_a, 3)

    torch.manual_seed(12345)  # anything in between must not matter
    ck = load_checkpoint(path)
    b = model_from_checkpoint(ck).train()
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3)
    opt_b.load_state_dict(ck['optimizer_states'][0])
    restore_rng(ck)
    train_steps(b, opt_b, 3)
    assert_same_weights(a.state_dict(), b.state_dict())


def test_checkpoint_refuses_unloadable_extra(tmp_path):
    model = tiny_model()
    with pytest.raises(TypeError, match=r"\['extra'\]\['epoch_order'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path/'epoch=0.ckpt', model, extra={'epoch_order': np.arange(3)})
    with pytest.raises(TypeError, match='numpy.float64'):
        save_checkpoint(tmp_path/'epoch=0.ckpt', model, extra={'loss': np.float64(0.5)})
    assert list(tmp_path.iterdir()) == []  # nothing was written
    with pytest.raises(ValueError, match='pass epoch=0'): save_checkpoint(tmp_path/'epoch=0.ckpt', model, epoch=1)


def test_wrappers_are_unwrapped(tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, m): super().__init__(); self.module = m
    model = tiny_model()
    ema = torch.optim.swa_utils.AveragedModel(model)  # keys 'module.model.…' and 'n_averaged'
    with torch.no_grad():
        for p in ema.parameters(): p.mul_(2)
    path = save_checkpoint(tmp_path/'epoch=0.ckpt', Wrapper(model), ema=ema)
    ck = load_checkpoint(path)
    assert_same_weights(ck['state_dict'], model.state_dict())
    assert_same_weights(ck['genie_nb']['ema'], ema.module.state_dict())
    with pytest.raises(ValueError, match="EMA weights do not have the model's keys"):
        save_checkpoint(tmp_path/'epoch=0.ckpt', model, ema={'model.foo': torch.ones(1)})


# ---------------------------------------------------------------- the original's checkpoints

def test_original_checkpoint_loads(tmp_path):
    root = copy_fixture(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no sidecar: loads without a warning
        m = load_model(root, 'genie_small_ref')
    ref = torch.load(FIX_CKPT, weights_only=True)
    assert_same_weights(m.state_dict(), ref['state_dict'])
    assert not m.training
    assert m.origin['version'] == 0 and m.origin['epoch'] == 0 and ref['epoch'] == 0 and m.origin['global_step'] == 1
    assert m.origin['sha256'] == FIX_SHA and m.origin['ema'] is False and m.origin['name'] == 'genie_small_ref'
    assert m.config.model.c_s == 32 and m.config.model.include_tri_att
    ck = load_checkpoint(root/'genie_small_ref/version_0/checkpoints/epoch=0.ckpt')
    with pytest.warns(UserWarning, match='no random state'): assert restore_rng(ck) is False
    # the same through the path conveniences: the run folder, and the file (which finds its run's configuration)
    assert_same_weights(load_model(root/'genie_small_ref').state_dict(), ref['state_dict'])
    m2 = load_model(root/'genie_small_ref/version_0/checkpoints/epoch=0.ckpt')
    assert (m2.origin['name'], m2.origin['version'], m2.origin['epoch']) == ('genie_small_ref', 0, 0)
    assert sha256_file(FIX_CKPT) == FIX_SHA  # the fixture itself was never touched


def test_original_checkpoint_without_its_configuration(tmp_path):
    shutil.copy(FIX_CKPT, tmp_path/'epoch=0.ckpt')
    with pytest.raises(CheckpointMismatch, match="stores no configuration"): load_model(tmp_path/'epoch=0.ckpt')


@pytest.mark.parametrize('spelling', ['false', 'no'])
def test_bool_quirk_is_explained(tmp_path, spelling):
    text = FIX.joinpath('configuration').read_text().replace('includeTriangularAttention True',
                                                            f'includeTriangularAttention {spelling}')
    root = copy_fixture(tmp_path, text)
    with pytest.raises(ConfigError) as e: load_model(root, 'genie_small_ref')
    msg = str(e.value)
    assert 'has include_tri_att weights' in msg and f"spells it {spelling!r}" in msg
    assert "only the exact strings 'True'/'False'" in msg and 'epoch=0.ckpt' in msg


def test_bool_flag_disagreement_without_quirk(tmp_path):
    text = FIX.joinpath('configuration').read_text().replace('includeTriangularAttention True',
                                                            'includeTriangularAttention False')
    root = copy_fixture(tmp_path, text)
    with pytest.raises(ConfigError, match='trained with other settings'): load_model(root, 'genie_small_ref')
    text = FIX.joinpath('configuration').read_text() + 'includeTriangularMultiplicativeUpdate False\n'
    shutil.rmtree(tmp_path/'genie_small_ref')
    root = copy_fixture(tmp_path, text)
    with pytest.raises(ConfigError, match='has include_mul_update weights'): load_model(root, 'genie_small_ref')


def test_mismatched_configuration_lists_names_and_shapes(tmp_path):
    base = FIX.joinpath('configuration').read_text()
    root = copy_fixture(tmp_path, base.replace('singleFeatureDimension 32', 'singleFeatureDimension 24'))
    with pytest.raises(CheckpointMismatch) as e: load_model(root, 'genie_small_ref')
    msg = str(e.value)
    assert 'model.single_feature_net.linear.weight: [32, 32] in the checkpoint, [24, 32] in the model' in msg
    assert 'epoch=0.ckpt' in msg and 'configuration' in msg
    (root/'genie_small_ref/configuration').write_text(base.replace('numStructureLayers 2', 'numStructureLayers 3'))
    with pytest.raises(CheckpointMismatch, match=r'model.structure_net.net.2.\S+: \[\d+(, \d+)*\] in the model, missing'):
        load_model(root, 'genie_small_ref')
    (root/'genie_small_ref/configuration').write_text(base.replace('numStructureLayers 2', 'numStructureLayers 1'))
    with pytest.raises(CheckpointMismatch, match=r'model.structure_net.net.1.\S+: \[\d+(, \d+)*\] in the checkpoint, not in the model'):
        load_model(root, 'genie_small_ref')


# ---------------------------------------------------------------- discovery and missing things

def test_discovery_ignores_stray_files(tmp_path):
    ck = tmp_path/'run/version_0/checkpoints'
    ck.mkdir(parents=True)
    for v in ('version_3', 'version_foo', 'version_', 'version_01', 'checkpoints'): (tmp_path/'run'/v).mkdir()
    (tmp_path/'run/version_7').touch()  # a file, not a folder
    for f in ('epoch=0.ckpt', 'epoch=5.ckpt', 'epoch=12.ckpt', 'last.ckpt', 'epoch=3.ckpt~', 'epoch=x.ckpt',
              'epoch=4.ckpt.bak', '.epoch=6.ckpt.123.ab12cd34.tmp', 'epoch=5.ckpt.sha256', 'epoch=-1.ckpt',
              'epoch=07.ckpt', 'epoch=8.ckpt.tmp', 'epoch=9', 'foo.ckpt'):
        (ck/f).touch()
    (ck/'epoch=20.ckpt').mkdir()  # a folder, not a file
    assert get_versions(tmp_path, 'run') == [0, 3]
    assert get_epochs(tmp_path, 'run', 0) == [0, 5, 12]
    assert get_epochs(tmp_path, 'run', 3) == [] and get_versions(tmp_path, 'nothing') == []
    assert checkpoint_path(tmp_path, 'run', 0, 5) == ck/'epoch=5.ckpt'
    assert new_version(tmp_path, 'run') == 4  # version_7 is a file: not a version, but its number stays free
    assert (tmp_path/'run/version_4/checkpoints').is_dir()
    assert new_version(tmp_path, 'other') == 0 and new_version(tmp_path, 'other') == 1


def test_missing_run_version_epoch_list_what_exists(tmp_path):
    make_run(tmp_path)
    (tmp_path/'other').mkdir(); (tmp_path/'other/configuration').write_text('name other\n')
    with pytest.raises(CheckpointNotFound, match=r"no run 'tinny' in .*; available runs: other, tiny"):
        load_model(tmp_path, 'tinny')
    with pytest.raises(CheckpointNotFound, match=r'no version_5; available versions: 0, 1'):
        load_model(tmp_path, 'tiny', version=5)
    with pytest.raises(CheckpointNotFound, match=r'no epoch=7.ckpt .*version_0: available epochs: 0, 1; version_1: available epochs: 2'):
        load_model(tmp_path, 'tiny', epoch=7)
    with pytest.raises(CheckpointNotFound, match=r'no checkpoint in .*other; no version_<V> folders'):
        load_model(tmp_path, 'other')
    with pytest.raises(CheckpointNotFound, match=r'no folder'): load_model(tmp_path/'nowhere', 'tiny')
    with pytest.raises(CheckpointNotFound, match=r'not a run folder .*available runs in it: other, tiny'): load_model(tmp_path)
    with pytest.raises(CheckpointNotFound, match='available epochs: 0, 1'):
        load_checkpoint(checkpoint_path(tmp_path, 'tiny', 0, 9))
    with pytest.raises(FileNotFoundError): load_config(tmp_path, 'nope')  # CheckpointNotFound is a FileNotFoundError
    shutil.rmtree(tmp_path/'tiny/version_1/checkpoints'); (tmp_path/'tiny/version_1/checkpoints').mkdir()
    assert load_model(tmp_path, 'tiny').origin['version'] == 0  # a version without checkpoints yet is passed over


def test_load_model_selection_and_origin(tmp_path):
    model = make_run(tmp_path)
    m = load_model(tmp_path, 'tiny')
    assert_same_weights(m.state_dict(), model.state_dict())
    o = m.origin
    assert (o['rootdir'], o['name'], o['version'], o['epoch'], o['global_step']) == (tmp_path, 'tiny', 1, 2, 20)
    assert o['path'] == checkpoint_path(tmp_path, 'tiny', 1, 2) and o['sha256'] == sha256_file(o['path'])
    assert not m.training
    assert load_model(tmp_path, 'tiny', version=0).origin['epoch'] == 1
    assert load_model(tmp_path, 'tiny', epoch=0).origin['version'] == 0
    assert load_model(None, str(tmp_path/'tiny')).origin['epoch'] == 2  # sample(model=path) calls it this way
    with pytest.raises(ValueError, match='cannot be combined'): load_model(checkpoint_path(tmp_path, 'tiny', 0, 0), epoch=0)
    # a lone checkpoint of ours rebuilds its model from the configuration stored in it
    shutil.copy(checkpoint_path(tmp_path, 'tiny', 0, 1), tmp_path/'lone.ckpt')
    lone = load_model(tmp_path/'lone.ckpt')
    assert_same_weights(lone.state_dict(), model.state_dict())
    assert (lone.origin['rootdir'], lone.origin['name'], lone.origin['epoch']) == (None, 'tiny', 1)


def test_shipped_default_model():
    "The model in the package loads with no arguments, is small, and is the one its model card describes."
    m = load_model()
    assert m.config.io.name == 'genie_default' and m.origin['ema'] and m.origin['path'] == mio.DEFAULT_MODEL
    assert mio.DEFAULT_MODEL.stat().st_size <= 25e6
    card = (mio.DEFAULT_MODEL.parent / 'MODEL_CARD.md').read_text()
    assert sha256_file(mio.DEFAULT_MODEL) in card and f"epoch {m.origin['epoch']}" in card


def test_no_model_named_and_default_hook(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, 'DEFAULT_MODEL', None)
    with pytest.raises(CheckpointNotFound, match='no default model is set'): load_model()
    monkeypatch.setattr(mio, 'DEFAULT_MODEL', tmp_path/'gone.safetensors')
    with pytest.raises(CheckpointNotFound, match='gone.safetensors is missing: reinstall'): load_model()
    make_run(tmp_path)
    monkeypatch.setattr(mio, 'DEFAULT_MODEL', tmp_path/'tiny')
    assert load_model().origin['name'] == 'tiny'


# ---------------------------------------------------------------- damaged and malicious files

@pytest.fixture
def saved(tmp_path):
    path = save_checkpoint(tmp_path/'ck/epoch=1.ckpt', tiny_model(), epoch=1)
    return path, path.read_bytes()


def test_altered_file_is_caught_by_its_sidecar(saved):
    path, data = saved
    i = len(data) // 2
    path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
    with pytest.raises(CheckpointCorrupt, match=r'epoch=1.ckpt is damaged: its SHA-256 is'): load_checkpoint(path)
    load_checkpoint(path, verify=False)  # the flip hit tensor data: only the fingerprint can tell


def test_truncated_empty_and_garbage_files(saved):
    path, data = saved
    path.write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointCorrupt, match='epoch=1.ckpt is damaged'): load_checkpoint(path)
    with pytest.raises(CheckpointCorrupt, match='epoch=1.ckpt cannot be read'): load_checkpoint(path, verify=False)
    path.write_bytes(b'')
    with pytest.raises(CheckpointCorrupt, match='epoch=1.ckpt is empty'): load_checkpoint(path)
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointCorrupt, match='epoch=1.ckpt cannot be read'): load_checkpoint(path, verify=False)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointCorrupt, match='not a Genie checkpoint'): load_checkpoint(path, verify=False)
    sidecar_path(path).write_text('not a hash\n')
    with pytest.raises(CheckpointCorrupt, match='is not a SHA-256 sidecar'): load_checkpoint(path)
    with pytest.raises(CheckpointNotFound, match='no checkpoint file'): load_checkpoint(path.with_name('epoch=2.ckpt'))


class Payload:
    "Unpickling this writes a file: what a malicious checkpoint would do."
    def __init__(self, target): self.target = str(target)
    def __reduce__(self): return (exec, (f"open({self.target!r}, 'w').write('code ran')",))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    make_run(tmp_path)
    marker = tmp_path/'marker'
    evil = checkpoint_path(tmp_path, 'tiny', 1, 5)
    torch.save({'state_dict': {}, 'epoch': 5, 'present': Payload(marker)}, evil)
    with pytest.raises(CheckpointUnsafe, match=r"refused to load .*epoch=5.ckpt: it holds a pickled 'exec'"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointUnsafe): load_model(tmp_path, 'tiny', epoch=5)
    with pytest.warns(UserWarning, match=r'skipping damaged checkpoint .*epoch=5.ckpt'):
        assert load_model(tmp_path, 'tiny').origin['epoch'] == 2  # the default falls back to the newest good one
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.read_text() == 'code ran'


def test_damaged_newest_falls_back_with_warning(tmp_path):
    model = make_run(tmp_path)
    newest = checkpoint_path(tmp_path, 'tiny', 1, 2)
    newest.write_bytes(newest.read_bytes()[:500])
    with pytest.warns(UserWarning, match=r'skipping damaged checkpoint .*version_1/checkpoints/epoch=2.ckpt'):
        m = load_model(tmp_path, 'tiny')
    assert (m.origin['version'], m.origin['epoch']) == (0, 1)
    assert_same_weights(m.state_dict(), model.state_dict())
    with pytest.raises(CheckpointCorrupt, match='epoch=2.ckpt is damaged'): load_model(tmp_path, 'tiny', epoch=2)
    for v, e in ((0, 0), (0, 1)): checkpoint_path(tmp_path, 'tiny', v, e).write_bytes(b'')
    with pytest.warns(UserWarning), pytest.raises(CheckpointCorrupt, match=r'every checkpoint .* is damaged: epoch=2.ckpt, epoch=1.ckpt, epoch=0.ckpt'):
        load_model(tmp_path, 'tiny')


# ---------------------------------------------------------------- crashes during a save

def test_full_disk_mid_save_keeps_the_old_file(tmp_path, monkeypatch):
    model = tiny_model()
    path = save_checkpoint(tmp_path/'epoch=0.ckpt', model, epoch=0)
    before, side_before = path.read_bytes(), sidecar_path(path).read_text()
    def disk_full(obj, f):
        f.write(b'PK\x03\x04 the first bytes of a zip')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(OSError, match='No space left'): save_checkpoint(tmp_path/'epoch=1.ckpt', model, epoch=1)
    with pytest.raises(OSError, match='No space left'): save_checkpoint(path, tiny_model(seed=1), epoch=0)
    monkeypatch.undo()
    assert path.read_bytes() == before                      # the old checkpoint is untouched,
    assert sorted(p.name for p in tmp_path.iterdir()) == ['epoch=0.ckpt']  # its sidecar was removed first (never stale),
    load_checkpoint(path)                                   # and it still loads; no temporary file is left behind
    assert side_before.split()[0] == sha256_file(path)


CHILD = r"""
import sys, torch
from genie_nb.config import GenieConfig
from genie_nb.model import Genie
from genie_nb.model_io import save_checkpoint
folder = sys.argv[1]
torch.manual_seed(7)
model, big = Genie(GenieConfig.tiny()), torch.ones(25_000_000)  # ~100 MB per checkpoint
while True:
    for epoch in (1, 2):  # overwrite the existing epoch=1.ckpt, and write a new epoch=2.ckpt, again and again
        print('saving', flush=True)
        save_checkpoint(f'{folder}/epoch={epoch}.ckpt', model, epoch=epoch, extra={'big': big})
        print('saved', flush=True)
"""


def _kill_mid_save(folder: Path, timeout=60.):
    "Run the child; SIGKILL it as soon as some file in `folder` grows past 10 MB. True if it died inside a save."
    proc = subprocess.Popen([sys.executable, '-c', CHILD, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        sizes, t0 = {}, time.time()
        while True:
            if proc.poll() is not None: raise RuntimeError(f"the child died: {proc.stderr.read().decode()[-2000:]}")
            if time.time() - t0 > timeout: raise RuntimeError('the child never wrote a large file')
            now = {}
            for p in folder.iterdir():
                try: now[p] = p.stat().st_size
                except FileNotFoundError: pass  # renamed or deleted meanwhile
            if any(10_000_000 < s and sizes.get(p, s) < s for p, s in now.items()): break  # a big file is being written
            sizes = now
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out = proc.communicate()[0].decode().split()
    return out[-1:] == ['saving']


def test_killed_mid_save_leaves_earlier_checkpoints_intact(tmp_path):
    folder = tmp_path/'checkpoints'
    model = tiny_model()
    for e in (0, 1): save_checkpoint(folder/f'epoch={e}.ckpt', model, epoch=e)
    first = sha256_file(folder/'epoch=0.ckpt')
    for _ in range(5):
        if _kill_mid_save(folder): break
    else: pytest.fail('could not kill the child in the middle of a save')
    assert any(folder.glob('.epoch=*.tmp'))  # the temporary file it was writing is left behind, and ignored:
    assert sha256_file(folder/'epoch=0.ckpt') == first
    assert_same_weights(load_checkpoint(folder/'epoch=0.ckpt')['state_dict'], model.state_dict())
    epochs = sorted(mio._epoch_files(folder))
    assert epochs in ([0, 1], [0, 1, 2])
    for e in epochs:  # and every epoch=*.ckpt is whole: it loads, verified against its sidecar when it has one
        ck = load_checkpoint(folder/f'epoch={e}.ckpt')
        assert ck['epoch'] == e
        assert 'big' not in ck['genie_nb']['extra'] or ck['genie_nb']['extra']['big'].numel() == 25_000_000


# ---------------------------------------------------------------- retention

def test_retention_policy():
    assert retained(range(10)) == set(range(10))                # default: keep everything
    assert retained(range(10), keep_every=3) == set(range(10))  # keep_every alone changes nothing
    assert retained(range(10), keep_last=3) == {7, 8, 9}
    assert retained(range(30), keep_last=2, keep_every=10) == {9, 19, 28, 29}
    assert retained([4, 9, 14, 19, 24], keep_last=1, keep_every=10) == {9, 19, 24}  # checkpoints every 5 epochs
    with pytest.raises(ValueError): retained(range(3), keep_last=-1)


def test_apply_retention_deletes_only_old_epoch_files(tmp_path):
    model = tiny_model()
    for e in range(6): save_checkpoint(tmp_path/f'epoch={e}.ckpt', model, epoch=e)
    for f in ('last.ckpt', 'epoch=3.ckpt~', '.epoch=9.ckpt.1.ab.tmp', 'notes.txt'): (tmp_path/f).write_text('x')
    assert apply_retention(tmp_path) == []  # default: keep all
    gone = apply_retention(tmp_path, keep_last=2, keep_every=3, protect=[tmp_path/'epoch=0.ckpt'])
    assert sorted(p.name for p in gone) == ['epoch=1.ckpt', 'epoch=3.ckpt']
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ['.epoch=9.ckpt.1.ab.tmp', 'epoch=0.ckpt', 'epoch=0.ckpt.sha256', 'epoch=2.ckpt', 'epoch=2.ckpt.sha256',
         'epoch=3.ckpt~', 'epoch=4.ckpt', 'epoch=4.ckpt.sha256', 'epoch=5.ckpt', 'epoch=5.ckpt.sha256', 'last.ckpt',
         'notes.txt'])


def test_save_applies_retention_after_writing(tmp_path):
    model = tiny_model()
    for e in range(7): save_checkpoint(tmp_path/f'epoch={e}.ckpt', model, epoch=e, keep_last=2, keep_every=4)
    assert sorted(mio._epoch_files(tmp_path)) == [3, 5, 6]
    # re-saving an old epoch keeps the file just written, even though it is not among the newest
    save_checkpoint(tmp_path/'epoch=1.ckpt', model, epoch=1, keep_last=2)
    assert sorted(mio._epoch_files(tmp_path)) == [1, 5, 6]
    for e in (1, 5, 6): load_checkpoint(tmp_path/f'epoch={e}.ckpt')


# ---------------------------------------------------------------- safetensors

def test_safetensors_round_trip(tmp_path):
    model = tiny_model(c_s=18, include_tri_att=False)
    path = export_safetensors(model, tmp_path/'model.safetensors')
    from safetensors import safe_open
    with safe_open(str(path), 'pt') as f: meta = f.metadata()
    assert meta['genie_nb_version'] == genie_nb.__version__ and 'singleFeatureDimension 18' in meta['configuration']
    m = import_safetensors(path)
    assert m.config == model.config and not m.training
    assert_same_weights(m.state_dict(), model.state_dict())
    assert m.origin['sha256'] == sha256_file(path)
    assert_same_weights(load_model(path).state_dict(), model.state_dict())
    (tmp_path/'bad.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": garbage}')
    with pytest.raises(CheckpointCorrupt, match='bad.safetensors is not a readable safetensors file'):
        import_safetensors(tmp_path/'bad.safetensors')
    from safetensors.torch import save_file
    save_file({'x': torch.ones(2)}, str(tmp_path/'bare.safetensors'))
    with pytest.raises(CheckpointCorrupt, match="no 'configuration' in its metadata"):
        import_safetensors(tmp_path/'bare.safetensors')
    with pytest.raises(CheckpointNotFound): import_safetensors(tmp_path/'missing.safetensors')
