"Integration and fault tests for genie_nb.train: exact resume after SIGKILL, DDP equals one process, NaN guard."
import os, random, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

from genie_nb.config import GenieConfig, read_config, write_config
from genie_nb.data import load_ca, mdanalysis_chain_files, save_genie_coords
from genie_nb.model_io import checkpoint_path, get_epochs, load_checkpoint
from genie_nb.model import Genie
from genie_nb.train import DistInfo, GenieLoss, TrainingDiverged, read_metrics, train, train_step, training_chains

torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and the runs below must match thread for thread
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
LENGTHS = [11, 17, 14, 20, 12, 19, 15, 13, 18, 16]  # distinct lengths, so batches need padding


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    "Ten windows (11–20 residues) of a real chain, as Genie Cα coordinate files."
    d = tmp_path_factory.mktemp('chains')
    ca = load_ca(mdanalysis_chain_files()[0])
    for i, n in enumerate(LENGTHS): save_genie_coords(d/f'c{i}.npy', ca[5 * i:5 * i + n])
    return d


def tiny_cfg(**training) -> GenieConfig:
    cfg = GenieConfig.tiny()
    cfg.io.name, cfg.io.max_n_res = 'tiny', 24
    cfg.optimization.lr = 1e-3
    for k, v in {**dict(batch_size=3, checkpoint_every_n_epoch=1, log_every_n_step=2), **training}.items():
        setattr(cfg.training, k, v)
    return cfg


def cli(*args) -> list: return ['genie_train', *map(str, args)]  # the console script, as a user runs it


def assert_same_tensors(a, b, where=''):
    "Recursively compare checkpoint contents with torch.equal (exact, bit for bit)."
    if isinstance(a, torch.Tensor): assert torch.equal(a, b), f'{where} differs'
    elif isinstance(a, dict):
        assert set(a) == set(b), f'{where} keys differ'
        for k in a: assert_same_tensors(a[k], b[k], f'{where}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f'{where} lengths differ'
        for i, (x, y) in enumerate(zip(a, b)): assert_same_tensors(x, y, f'{where}[{i}]')
    else: assert a == b, f'{where}: {a!r} != {b!r}'


# ------------------------------------------------------------ SIGKILL at a random moment, then --resume

def test_killed_and_resumed_run_is_bit_identical(data, tmp_path):
    # every option that carries state across steps is on: EMA, clipping, validation, length bucketing
    cfg = tiny_cfg(n_epoch=8, val_fraction=0.2, ema_decay=0.9, grad_clip=1.0, length_bucketing=True)
    write_config(cfg, tmp_path/'cfg')
    run = lambda root, *extra: subprocess.Popen(cli('-c', tmp_path/'cfg', '--data', data, '-r', root, '--quiet', *extra),
                                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    straight, killed = run(tmp_path/'straight'), run(tmp_path/'killed')  # two processes, one thread each
    try: _kill_resume_compare(straight, killed, data, tmp_path)
    finally:
        for p in (straight, killed):
            if p.poll() is None: p.kill(); p.wait()


def _kill_resume_compare(straight, killed, data, tmp_path):
    # a random moment: a random delay (0-50 ms) after the checkpoint of a random epoch k in 0..4 of 0..7
    k, delay = random.randint(0, 4), random.uniform(0, 0.05)
    ck = checkpoint_path(tmp_path/'killed', 'tiny', 0, k)
    t0 = time.time()
    while not Path(f'{ck}.sha256').exists():  # the sidecar comes last: checkpoint k is complete
        assert killed.poll() is None, killed.communicate()[1]
        assert time.time() - t0 < 60, f'no checkpoint {k} within 60 s'
        time.sleep(0.002)
    time.sleep(delay)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, f'the run ended before the kill ({delay:.3f} s after epoch {k})'
    done = get_epochs(tmp_path/'killed', 'tiny', 0)
    assert 7 not in done, 'the killed run finished anyway'

    resumed = subprocess.run(cli('-c', tmp_path/'killed'/'tiny'/'configuration', '--data', data, '-r', tmp_path/'killed',
                                 '--resume'), env=ENV, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming' in resumed.stdout and 'version_0' in resumed.stdout, resumed.stdout
    _, err = straight.communicate(timeout=120)
    assert straight.returncode == 0, err

    a = load_checkpoint(checkpoint_path(tmp_path/'straight', 'tiny', 0, 7))
    b = load_checkpoint(checkpoint_path(tmp_path/'killed', 'tiny', 0, 7))
    for key in ('state_dict', 'optimizer_states', 'epoch', 'global_step'): assert_same_tensors(a[key], b[key], key)
    assert_same_tensors(a['genie_nb']['ema'], b['genie_nb']['ema'], 'ema')
    assert a['global_step'] == 8 * 3
    # the log is the same too (after the resumed run dropped the rows written past its checkpoint)
    cols = ['step', 'epoch', 'train_loss', 'val_loss', 'grad_norm']
    ma = read_metrics(tmp_path/'straight'/'tiny'/'version_0'/'metrics.csv')[cols]
    mb = read_metrics(tmp_path/'killed'/'tiny'/'version_0'/'metrics.csv')[cols]
    assert ma.equals(mb), (ma, mb)
    assert (tmp_path/'killed'/'tiny'/'version_0'/'loss.png').stat().st_size > 0
    assert not (tmp_path/'killed'/'tiny'/'version_1').exists(), '--resume must not start a new version'


# ------------------------------------------------------------ torchrun: 2 processes = 1 process

DDP_SCRIPT = '''
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from genie_nb.config import read_config
from genie_nb.model import Genie
from genie_nb.train import GenieLoss, setup_distributed, train, train_step, training_chains
cfg, data, root = read_config(sys.argv[1]), sys.argv[2], sys.argv[3]
d = setup_distributed('cpu')                    # train() below joins this group and leaves it open
# 1. the gradient of one global batch of all 10 chains, 5 on each process
chains = training_chains(cfg, data)
torch.manual_seed(0); genie = Genie(cfg)
opt = torch.optim.SGD(genie.parameters(), lr=0.)
loss, _, n_res = train_step(DistributedDataParallel(GenieLoss(genie)), opt, list(range(10)), chains, cfg, 0, d)
grads = {k: p.grad for k, p in genie.named_parameters()}
torch.save(dict(loss=loss, n_res=n_res, grads=grads), os.path.join(root, f'grad{d.rank}.pt'))
# 2. a whole run
res = train(cfg, data=data, rootdir=root, device='cpu', quiet=True)
torch.save(res.model.state_dict(), os.path.join(root, f'rank{d.rank}.pt'))
dist.destroy_process_group()
'''


def test_ddp_two_processes_match_one(data, tmp_path):
    # Dropout is set to 0: each process draws its own dropout masks (seeded per step and rank), so with dropout
    # on, K processes are a valid run but not the same run as one process.
    cfg = tiny_cfg(n_epoch=2, batch_size=4)
    cfg.model.tri_dropout = cfg.model.ipa_dropout = cfg.model.structure_transition_dropout = 0.
    write_config(cfg, tmp_path/'cfg')
    (tmp_path/'ddp.py').write_text(DDP_SCRIPT)
    root = tmp_path/'ddp'; root.mkdir()
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        tmp_path/'ddp.py', tmp_path/'cfg', data, root], env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]

    # the gradient: 2 processes (each its share of the residues, normalised by the global count) = 1 process
    g0, g1 = (torch.load(root/f'grad{k}.pt', weights_only=True) for k in (0, 1))
    assert_same_tensors(g0, g1, 'rank 0 vs rank 1 gradient')  # all_reduce leaves one gradient on both
    chains = training_chains(cfg, data)
    torch.manual_seed(0); genie = Genie(cfg)
    loss, _, n_res = train_step(GenieLoss(genie), torch.optim.SGD(genie.parameters(), lr=0.), list(range(10)), chains,
                                cfg, 0, DistInfo())
    assert n_res == g0['n_res'] == sum(LENGTHS)
    assert loss == pytest.approx(g0['loss'], rel=1e-6)
    for k, p in genie.named_parameters():
        torch.testing.assert_close(g0['grads'][k], p.grad, rtol=1e-4, atol=1e-7, msg=lambda m: f'gradient of {k}: {m}')

    # a whole run: identical replicas, the single-process loss curve, and weights within float tolerance
    w0, w1 = (torch.load(root/f'rank{k}.pt', weights_only=True) for k in (0, 1))
    assert_same_tensors(w0, w1, 'rank 0 vs rank 1 weights')
    single = train(cfg, data=data, rootdir=tmp_path/'single', device='cpu', quiet=True)
    assert single.global_step == 2 * 3                        # 10 chains, batches of 4: 4, 4, 2
    la = read_metrics(root/'tiny'/'version_0'/'metrics.csv').train_loss.dropna().to_numpy()
    lb = read_metrics(tmp_path/'single'/'tiny'/'version_0'/'metrics.csv').train_loss.dropna().to_numpy()
    np.testing.assert_allclose(la, lb, rtol=1e-5)             # the logged loss is the global batch's loss
    # Adam divides by sqrt(v): where the exact gradient is 0 (e.g. IPA's pair-bias bias, to which softmax is blind)
    # it turns rounding noise into steps of size lr, so weights are compared to lr x steps
    lr, steps = cfg.optimization.lr, single.global_step
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=0, atol=lr * steps, msg=lambda m: f'{k}: {m}')
    assert sorted(p.name for p in (root/'tiny').iterdir()) == ['configuration', 'version_0'], 'only rank 0 writes'


# ------------------------------------------------------------ NaN guard, damaged checkpoint, changed settings

def test_nan_stops_without_checkpoint_and_resume_recovers(data, tmp_path, monkeypatch):
    cfg = tiny_cfg(n_epoch=4, batch_size=4)                   # 3 steps per epoch (4, 4, 2 chains)
    forward, calls = GenieLoss.forward, []
    def poisoned(self, *a):
        calls.append(1)
        loss = forward(self, *a)
        return loss * float('nan') if len(calls) == 7 else loss  # step 6: the first step of epoch 2
    monkeypatch.setattr(GenieLoss, 'forward', poisoned)
    with pytest.raises(TrainingDiverged, match=r'non-finite loss .* at step 6 .*epoch=1\.ckpt'):
        train(cfg, data=data, rootdir=tmp_path, device='cpu', quiet=True)
    assert get_epochs(tmp_path, 'tiny', 0) == [0, 1], 'no checkpoint after the NaN'
    monkeypatch.setattr(GenieLoss, 'forward', forward)
    res = train(cfg, data=data, rootdir=tmp_path, resume=True, device='cpu', quiet=True)
    assert (res.global_step, res.epoch, get_epochs(tmp_path, 'tiny', 0)) == (12, 4, [0, 1, 2, 3])

    # a damaged newest checkpoint is skipped, with a warning, in favour of the one before it
    p = checkpoint_path(tmp_path, 'tiny', 0, 3)
    p.write_bytes(p.read_bytes()[:-10])
    cfg.training.n_epoch = 5
    with pytest.warns(UserWarning, match=r'skipping checkpoint .*epoch=3\.ckpt'):
        res = train(cfg, data=data, rootdir=tmp_path, resume=True, device='cpu', quiet=True)
    assert res.global_step == 15 and get_epochs(tmp_path, 'tiny', 0) == [0, 1, 2, 3, 4]

    # a resume that cannot be exact says why
    cfg.training.batch_size, cfg.training.n_epoch = 2, 6
    with pytest.raises(ValueError, match='cannot resume exactly .*steps_per_epoch was 3, now 5'):
        train(cfg, data=data, rootdir=tmp_path, resume=True, device='cpu', quiet=True)


def test_new_runs_take_new_versions_and_cli_errors(data, tmp_path):
    cfg = tiny_cfg(n_epoch=1)
    for v in (0, 1): assert train(cfg, data=data, rootdir=tmp_path, device='cpu', quiet=True).version_dir.name == f'version_{v}'
    assert read_config(tmp_path/'tiny'/'configuration') == cfg
    r = subprocess.run(cli('-c', tmp_path/'missing'), env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'no configuration file at' in r.stderr and 'missing' in r.stderr
    r = subprocess.run(cli('-c', tmp_path/'tiny'/'configuration', '--bogus'), env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'unrecognized arguments: --bogus' in r.stderr
