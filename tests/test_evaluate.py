"Tests for genie_nb.evaluate on constructed geometry and on real MDAnalysisTests chains (no downloads, no skips)."
import gzip
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from Bio.PDB import PDBIO, StructureBuilder

from genie_nb.data import load_backbone, load_ca, mdanalysis_chain_files
from genie_nb.evaluate import (GEOM_BINS, ca_bond_angles, ca_bond_lengths, ca_dihedrals, count_clashes,
                               evaluate_chain, evaluate_folder, gaussian_cloud, geometry_divergence, helix_segments,
                               ideal_helix, ideal_strand, local_geometry, max_tm_to_reference, pairwise_tm,
                               plot_geometry, plot_rg, plot_tm_matrix, psea, radius_of_gyration, random_walk,
                               reference_stats, rg_ratio, rg_trend, secondary_structure, summary, tm_clusters,
                               tm_score)

REAL = mdanalysis_chain_files()


@pytest.fixture(scope='module')
def real_cas(): return [load_ca(f) for f in REAL]


def rotation(seed=0):
    "A random proper rotation matrix [3, 3]."
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    return q * np.sign(np.linalg.det(q))


def write_ca_pdb(ca, path):
    "Cα-only poly-alanine PDB written with Biopython's PDBIO."
    sb = StructureBuilder.StructureBuilder(); sb.init_structure('s'); sb.init_model(0); sb.init_chain('A')
    sb.init_seg('    ')
    for i, x in enumerate(ca):
        sb.init_residue('ALA', ' ', i + 1, ' ')
        sb.init_atom('CA', np.asarray(x, float), 0., 1., ' ', ' CA ', element='C')
    io = PDBIO(); io.set_structure(sb.get_structure()); io.save(str(path))


# --- constructed geometry -----------------------------------------------------------------------------------------

def test_ideal_helix_geometry_and_assignment():
    h = ideal_helix(30)                                   # rise 1.5 Å, 100°/residue, radius 2.3 Å
    d = ca_bond_lengths(h)
    assert np.allclose(d, 3.8, atol=0.05)
    assert local_geometry(h)['frac_ca_ca_ok'] == 1.0
    assert np.allclose(ca_bond_angles(h), 90.4, atol=0.5)
    assert np.allclose(ca_dihedrals(h), 50.0, atol=0.5)    # right-handed: positive virtual dihedral
    ss = psea(h)
    assert ss == 'C' + 'H' * 28 + 'C'
    segs = helix_segments(h)
    assert len(segs) == 1 and not segs[0]['left_handed']
    s = secondary_structure(h)
    assert s['helix'] == pytest.approx(28 / 30) and s['strand'] == 0 and s['left_handed_helix_frac'] == 0


def test_mirror_helix_is_left_handed():
    for mirror in (ideal_helix(30, right_handed=False), ideal_helix(30) * [-1, 1, 1], ideal_helix(30) * [1, 1, -1]):
        assert np.allclose(ca_dihedrals(mirror), -50.0, atol=0.5)
        assert psea(mirror).count('H') >= 25               # still found as a helix (distance criteria) ...
        assert secondary_structure(mirror)['left_handed_helix_frac'] == 1.0   # ... but left-handed


def test_extended_strand_is_strand():
    s = ideal_strand(14)
    assert np.allclose(ca_bond_lengths(s), 3.8)
    assert np.allclose(ca_bond_angles(s), 124.0)
    assert set(psea(s)[1:-2]) == {'E'}
    ss = secondary_structure(s)
    assert ss['strand'] > 0.7 and ss['helix'] == 0 and np.isnan(ss['left_handed_helix_frac'])


def test_planted_clash_is_counted():
    h = ideal_helix(30)
    assert count_clashes(h) == 0
    bad = h.copy(); bad[20] = bad[5] * 1.2                # 0.46 Å radially outside residue 5, far from 4 and 6
    assert count_clashes(bad) == 1
    bad[25] = bad[10] + [0., 0., 0.3]                     # a second one
    assert count_clashes(bad) == 2
    assert count_clashes(bad, cutoff=0.2) == 0
    assert evaluate_chain(bad)['clash_free'] is False
    # neighbours closer than 3 Å (|i-j| < 3) are bond geometry, not clashes
    assert count_clashes(np.array([[0, 0, 0], [1., 0, 0], [2., 0, 0]])) == 0
    assert count_clashes(np.array([[0, 0, 0], [3.8, 0, 0], [3.8, 3.8, 0], [0, 1., 0]])) == 1


def test_rg_and_trend():
    assert radius_of_gyration([[0, 0, 0], [0, 0, 4.]]) == pytest.approx(2.0)
    assert rg_trend(100) == pytest.approx(2.2 * 100 ** 0.38)
    assert rg_ratio(gaussian_cloud(150, scale=3)) < 0.5
    assert np.median([rg_ratio(random_walk(200, seed=s)) for s in range(10)]) > 1.25


def test_bad_input_errors_name_the_sample():
    with pytest.raises(ValueError, match='s7: expected Cα coordinates of shape'): evaluate_chain(np.zeros((10, 4)), 's7')
    with pytest.raises(ValueError, match='s8: coordinates contain NaN'):
        evaluate_chain(np.full((10, 3), np.nan), 's8')
    with pytest.raises(ValueError, match='needs at least 5'): evaluate_chain(np.zeros((3, 3)), 'x')


# --- TM-score ------------------------------------------------------------------------------------------------------

def test_tm_score_self_and_rigid_copy(real_cas):
    a = real_cas[0]
    assert tm_score(a, a) == pytest.approx((1., 1.))
    moved = a @ rotation(3).T + np.array([25., -10., 4.])
    assert tm_score(a, moved) == pytest.approx((1., 1.), abs=1e-4)
    assert tm_score(moved, a) == pytest.approx((1., 1.), abs=1e-4)
    # normalisation: a sub-chain aligned onto its parent scores ~1 by its own length, less by the parent's
    sub = a[:60]
    by_sub, by_parent = tm_score(sub, a)
    assert by_sub > 0.95 and by_parent < 0.7


def test_clusters_and_novelty(real_cas):
    cas = real_cas[:3] + [real_cas[0] @ rotation(1).T, real_cas[1] + 3.]
    tm = pairwise_tm(cas)
    assert tm.shape == (5, 5) and np.allclose(np.diag(tm), 1.)
    labels = tm_clusters(tm)
    assert labels[0] == labels[3] and labels[1] == labels[4] and len(set(labels)) == 3
    assert len(set(tm_clusters(tm, threshold=1.01))) == 5
    nov = max_tm_to_reference(cas, real_cas[:2])
    assert nov[0] == pytest.approx(1., abs=1e-4) and nov[2] < 0.5


# --- evaluate_folder on files ------------------------------------------------------------------------------------------

def test_evaluate_folder_pdb_and_genie_text(tmp_path, real_cas):
    picks = [0, 1, 2]
    for i in picks:
        write_ca_pdb(real_cas[i], tmp_path / REAL[i].name.replace('.pdb.gz', '.pdb'))
        # the original Genie sample layout (sample.py): one Cα per row, '%.3f', comma-separated, named *.npy
        np.savetxt(tmp_path / f'sample_{i}.npy', real_cas[i], fmt='%.3f', delimiter=',')
    # the original training layout (N, Cα, C rows per residue), gzipped, from the real file's backbone
    (_, bb), = load_backbone(REAL[3])
    with gzip.open(tmp_path / 'train_3.npy.gz', 'wt') as f: np.savetxt(f, bb.reshape(-1, 3), delimiter=',')
    (tmp_path / 'notes.txt').write_text('not a structure')   # ignored: unknown suffix
    df = evaluate_folder(tmp_path, reference=REAL[:2])
    assert sorted(df.file) == sorted([REAL[i].name.replace('.pdb.gz', '.pdb') for i in picks]
                                     + [f'sample_{i}.npy' for i in picks] + ['train_3.npy.gz'])
    by = df.set_index('file')
    for i in picks:
        a, b = by.loc[REAL[i].name.replace('.pdb.gz', '.pdb')], by.loc[f'sample_{i}.npy']
        assert a.length == b.length == len(real_cas[i])
        for col in ['ca_ca_mean', 'rg', 'helix', 'strand', 'n_clashes']:
            assert a[col] == pytest.approx(b[col], abs=2e-3)
    assert by.loc['train_3.npy.gz'].length == len(real_cas[3])
    # novelty: the first two are in the reference set, the third is not
    assert by.loc['sample_0.npy'].max_tm_to_reference == pytest.approx(1., abs=1e-3)
    assert by.loc['sample_2.npy'].max_tm_to_reference < 0.5
    # the PDB and the text copy of each chain are one cluster: 4 folds in 7 files
    assert df.cluster.nunique() == 4
    s = summary(df).value
    assert s['n_samples'] == 7 and s['n_clusters'] == 4 and s['pct_clash_free'] == 100.
    assert s['pct_ca_ca_within_0.2A'] > 97 and s['left_handed_share'] == 0.
    for k in GEOM_BINS: assert 0 <= s[f'js_{k}'] < 0.15
    # a subset is summarised from its own rows
    sub = summary(df[df.file.str.endswith('.pdb')]).value
    assert sub['n_samples'] == 3 and sub['n_clusters'] == 3
    with pytest.raises(ValueError, match='do not match'): summary(df.iloc[[1, 2]].reset_index(drop=True))


def test_evaluate_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no such file or folder'): evaluate_folder(tmp_path / 'missing')
    with pytest.raises(ValueError, match='no structure files'): evaluate_folder(tmp_path)
    bad = tmp_path / 'broken.npy'; bad.write_text('1,2\n3,4\n')
    with pytest.raises(ValueError, match='broken.npy'): evaluate_folder(tmp_path)
    with pytest.raises(ValueError, match='nan_sample: coordinates contain NaN'):
        evaluate_folder({'nan_sample': np.full((10, 3), np.nan)})


def test_plots_headless(tmp_path, real_cas):
    df = evaluate_folder({'a': real_cas[0], 'b': real_cas[1], 'walk': random_walk(100)})
    ref = reference_stats(real_cas[:10])
    for fig in (plot_geometry(real_cas[:2], ref), plot_rg(df, ref), plot_tm_matrix(df), plot_tm_matrix(np.eye(3))):
        out = tmp_path / 'f.png'; fig.savefig(out); assert out.stat().st_size > 1000
        plt.close(fig)


# --- the 50 real chains --------------------------------------------------------------------------------------------------

def test_real_chains_summary_is_sane(real_cas):
    assert len(real_cas) == 50
    df = evaluate_folder(REAL, tm=False)                   # no TM-align: 1225 pairs would be slow
    s = summary(df).value
    print('\n' + summary(df).round(3).to_string())
    assert s['pct_ca_ca_within_0.2A'] > 99
    assert s['pct_clash_free'] == 100
    assert s['pct_rg_within_25pct'] >= 90
    assert 0.4 < s['helix_plus_strand'] < 0.75 and 0.15 < s['helix'] < 0.5 and 0.1 < s['strand'] < 0.4
    assert s['left_handed_share'] < 0.02
    assert np.isnan(s['median_pairwise_tm']) and np.isnan(s['median_max_tm_to_reference'])
    # a mirror image of every chain: same bonds, clashes and Rg, but left-handed helices
    mirrored = evaluate_folder({f'm{i}': c * [-1, 1, 1] for i, c in enumerate(real_cas)}, tm=False)
    sm = summary(mirrored).value
    assert sm['left_handed_share'] > 0.98
    for k in ['pct_ca_ca_within_0.2A', 'pct_clash_free', 'pct_rg_within_25pct']: assert sm[k] == pytest.approx(s[k])


def test_real_vs_bad_geometry_divergence(real_cas):
    ref = reference_stats(real_cas[::2])
    real = geometry_divergence(real_cas[1::2], ref)
    cloud = geometry_divergence([gaussian_cloud(120, seed=s) for s in range(10)], ref)
    walk = geometry_divergence([random_walk(120, seed=s) for s in range(10)], ref)
    assert all(v < 0.05 for v in real.values())
    assert all(cloud[k] > real[k] + 0.1 for k in real)
    assert walk['js_angle'] > 0.2 and walk['js_dihedral'] > 0.1
