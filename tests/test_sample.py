"Sampling end to end: the genie_sample command, resume, torchrun splitting, and the public API."
import csv, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio.PDB import PDBParser

from genie_nb.config import GenieConfig, write_config
from genie_nb.model import Genie
from genie_nb.model_io import save_checkpoint, checkpoint_path, new_version

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
CLI = ['genie_sample']  # the console script, as a user runs it


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A run folder holding a tiny (perturbed, untrained) model: runs/tiny/version_0/checkpoints/epoch=3.ckpt."
    root = tmp_path_factory.mktemp('runs')
    cfg = GenieConfig.tiny()
    torch.manual_seed(0)
    model = Genie(cfg)
    with torch.no_grad():
        for p in model.parameters(): p += 0.05 * torch.randn_like(p)
    write_config(cfg, root / 'tiny' / 'configuration')
    v = new_version(root, 'tiny')
    save_checkpoint(checkpoint_path(root, 'tiny', v, 3), model, epoch=3, global_step=12)
    return root


def cli(*args, cwd=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def read_csv(p):
    with open(p, newline='') as f: return list(csv.DictReader(f))


def test_genie_sample_writes_pdbs_and_resumes(run):
    r = cli('-n', 'tiny', '-r', str(run), '--min_length', '6', '--max_length', '9', '--length_step', '3',
            '--num_samples', '3', '--batch_size', '2', '--quiet')
    assert r.returncode == 0, r.stderr
    out = run / 'tiny/version_0/samples/epoch_3'        # the original's output layout
    pdbs = sorted(out.glob('*.pdb'))
    assert [p.name for p in pdbs] == ['6_0.pdb', '6_1.pdb', '6_2.pdb', '9_0.pdb', '9_1.pdb', '9_2.pdb']
    for p in pdbs:
        n = int(p.name.split('_')[0])
        s = PDBParser(QUIET=True).get_structure(p.stem, p)
        cas = [a for a in s.get_atoms() if a.get_id() == 'CA']
        assert len(cas) == n
        assert [r.id[1] for r in s[0]['A']] == list(range(1, n + 1))
        text = p.read_text()
        assert 'REMARK 250 MODEL: tiny' in text and 'REMARK 250 EPOCH: 3' in text and 'REMARK 250 CHECKPOINT_SHA256: ' in text
        ca = np.loadtxt(out / f'{p.stem}.npy', delimiter=',')   # the original's coordinate file
        np.testing.assert_allclose(ca, np.array([a.coord for a in cas]), atol=2e-3)
    rows = read_csv(out / 'samples.csv')
    assert [r['file'] for r in rows] == [p.name for p in pdbs]
    assert {r['seed'] for r in rows}.__len__() == 6
    # rerun: everything is kept and skipped
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    r = cli('-n', 'tiny', '-r', str(run), '--min_length', '6', '--max_length', '9', '--length_step', '3',
            '--num_samples', '3', '--batch_size', '2', '--quiet')
    assert r.returncode == 0 and '6 samples already there' in r.stderr, r.stderr
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k != 'samples.csv'} == {k: v for k, v in before.items() if k != 'samples.csv'}
    # an interrupted run (one file missing) gets exactly that sample back, bit for bit, with another batch size
    lost = (out / '9_1.pdb').read_bytes()
    (out / '9_1.pdb').unlink()
    r = cli('-n', 'tiny', '-r', str(run), '--min_length', '6', '--max_length', '9', '--length_step', '3',
            '--num_samples', '3', '--batch_size', '3', '--quiet')
    assert r.returncode == 0, r.stderr
    assert (out / '9_1.pdb').read_bytes() == lost
    assert len(read_csv(out / 'samples.csv')) == 6


def test_torchrun_splits_jobs_with_the_same_files(run, tmp_path):
    args = ['-n', 'tiny', '-r', str(run), '--min_length', '5', '--max_length', '8', '--num_samples', '3',
            '--batch_size', '2', '--quiet']
    single = tmp_path / 'single'
    assert cli(*args, '--outdir', str(single)).returncode == 0
    multi = tmp_path / 'multi'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '--no-python', 'genie_sample', *args, '--outdir', str(multi)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(p.name for p in single.iterdir())
    assert names == sorted(p.name for p in multi.iterdir()) and len(names) == 4 * 3 * 2 + 1
    for n in names:
        if n == 'samples.csv': continue
        assert (single / n).read_bytes() == (multi / n).read_bytes(), n
    drop = lambda rows: [{k: v for k, v in r.items() if k != 'seconds'} for r in rows]
    assert drop(read_csv(single / 'samples.csv')) == drop(read_csv(multi / 'samples.csv'))


def test_clear_errors_before_any_work(run, tmp_path):
    r = cli('-n', 'tiny', '-r', str(run), '--min_length', '20', '--max_length', '30', '--outdir', str(tmp_path / 'a'))
    assert r.returncode != 0 and "exceed this model's maximumNumResidues 24" in r.stderr
    assert not (tmp_path / 'a').exists()
    r = cli('-n', 'tiny', '-r', str(run), '--noise_scale', '-0.5', '--max_length', '10', '--outdir', str(tmp_path / 'b'))
    assert r.returncode != 0 and 'noise_scale' in r.stderr
    r = cli('-n', 'nope', '-r', str(run))
    assert r.returncode != 0 and 'tiny' in r.stderr  # the error lists the runs that exist
    r = cli('-n', 'tiny', '-r', str(run), '-e', '7')
    assert r.returncode != 0 and 'epoch=7' in r.stderr and '3' in r.stderr


def test_star_import_is_the_documented_api():
    ns = {}
    exec('from genie_nb.sample import *', ns)
    public = sorted(k for k in ns if not k.startswith('__'))
    assert public == sorted(['load_model', 'sample', 'Sample', 'sample_seed', 'write_pdb', 'write_samples',
                             'done_samples', 'plot_trace', 'plot_distance_map', 'trajectory_gif', 'genie_sample'])


def test_sample_independent_of_batch_size_and_loaded_in_eval_mode(run):
    from genie_nb.sample import sample, load_model
    model = load_model(run, 'tiny')
    assert not model.training and model.origin['epoch'] == 3
    a = sample(model, lengths=[10], num_samples=4, batch_size=4, seed=5, progress=False)
    b = sample(model, lengths=[10, 11], num_samples=4, batch_size=1, seed=5, progress=False)
    for x, y in zip(a, b[:4]): np.testing.assert_allclose(x.ca, y.ca, atol=1e-5)
    assert all(np.isfinite(s.ca).all() for s in b)


def test_default_model_without_a_name(tmp_path):
    "No -n: genie_sample samples the model shipped in the package, and its backbones have a protein's Cα spacing."
    from genie_nb.model_io import DEFAULT_MODEL, sha256_file
    from genie_nb.evaluate import local_geometry
    r = cli('--min_length', '48', '--max_length', '48', '--num_samples', '2', '--batch_size', '2', '--quiet', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'genie_samples' / 'genie_default'
    assert sorted(p.name for p in out.glob('*.pdb')) == ['48_0.pdb', '48_1.pdb']
    text = (out / '48_0.pdb').read_text()
    assert 'REMARK 250 MODEL: genie_default' in text and f'REMARK 250 CHECKPOINT_SHA256: {sha256_file(DEFAULT_MODEL)}' in text
    for p in out.glob('*.npy'):   # an untrained model scores about 0.02 here
        assert local_geometry(np.loadtxt(p, delimiter=','))['frac_ca_ca_ok'] >= 0.9, p.name
